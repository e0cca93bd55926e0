"""Compare inference methods on the same data: one table, one plot.

Each (method, seed) fit runs in its own child Python process (``python -m latentscm.compare``, the
settings sent as JSON on its standard input), which calls the library's :func:`~latentscm.inference.fit`
and writes the fit's run folder (:func:`latentscm.runs.write_run`, model criticism included) and its
metrics. So the fit's wall time (``wall_s``) includes start-up and compilation, its peak memory
(``peak_rss_mb``, measured in the child right after the fit) is its own, and an error in the child
(a bad setting, bad data) comes back as an exception with the child's message. Like ``latentscm fit``,
the child turns on the persistent compilation cache (:func:`latentscm.cli.enable_compilation_cache`);
unlike it, it writes no checkpoints.

The table (one row per fit) is written as CSV and Markdown with a per-method summary (means over
seeds), plus ``comparison.png``. Beside the held-out NLL it has ``loo`` (``elpd_loo`` of PSIS-LOO on the
training data, a sum over the units of the fit's ``log_likelihood`` group), ``loo_se`` and
``loo_k_max`` (see :mod:`latentscm.criticism`); fits whose largest Pareto k exceeds 0.7 are named in a
warning. With two or more fits that have a log-likelihood, ``comparison.md`` adds ``az.compare`` of
their run folders' ``posterior.nc``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
import traceback
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

from ._io import atomic_write

COLUMNS = ["method", "seed", "e_shd", "e_shd_double", "auroc", "auprc", "mcc", "edge_rmse", "heldout_nll", "loo",
           "loo_se", "loo_k_max", "seconds", "wall_s", "peak_rss_mb"]
_PLOTTED = ("e_shd", "auroc", "mcc", "heldout_nll", "loo", "wall_s", "peak_rss_mb")


def run_fit_process(data, out_dir, *, method="collapsed", seed=0, test=None, config=None, priors=None, name=None):
    """Fit ``data`` (a .npz path) in a fresh child process; returns its metrics dict plus ``wall_s``.

    config / priors: dicts of the method's settings and of priors (JSON-serialisable), as ``fit`` takes
    them. The child writes the run folder ``out_dir/run-<name>`` and the metrics ``out_dir/<name>.json``
    (``name`` defaults to ``<method>-seed<seed>``). Raises ValueError with the child's message for a user
    error (bad settings, priors or data: every ``ValueError`` in the child), RuntimeError otherwise.
    """
    out_dir = Path(out_dir).resolve()
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or f"{method}-seed{seed}"
    result, error = out_dir / f"{name}.json", out_dir / f"{name}.error.json"
    for stale in (result, error):
        stale.unlink(missing_ok=True)
    settings = {"data": str(Path(data).resolve()), "test": None if test is None else str(Path(test).resolve()),
                "method": method, "seed": seed, "config": dict(config or {}), "priors": dict(priors or {}),
                "out": str(out_dir / f"run-{name}"), "result": str(result), "error": str(error)}
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "latentscm.compare"], input=json.dumps(settings),
                          stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "MPLBACKEND": "Agg"})
    wall = time.perf_counter() - start
    if error.is_file():
        failure = json.loads(error.read_text())
        kind = ValueError if failure["user_error"] else RuntimeError
        raise kind(f"{name}: {failure['message']}" + ("" if failure["user_error"] else f"\n{failure['traceback']}"))
    if done.returncode != 0 or not result.is_file():
        raise RuntimeError(f"the fit process for {name} failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return {**json.loads(result.read_text()), "wall_s": wall}


def _child(settings: dict) -> dict:
    """The child's work: fit, metrics, model criticism, run folder; returns the metrics."""
    from .cli import enable_compilation_cache

    enable_compilation_cache()
    from .criticism import criticise
    from .data import Dataset
    from .inference import fit
    from .inference.diagnostics import FitDiagnosticWarning
    from .runs import run_metrics, write_run

    train = Dataset.load(settings["data"])
    test = None if settings["test"] is None else Dataset.load(settings["test"])
    with warnings.catch_warnings():  # the fit's problems go to the run folder's metrics.json
        warnings.simplefilter("ignore", FitDiagnosticWarning)
        posterior = fit(train, settings["method"], config=settings["config"], priors=settings["priors"] or None,
                        seed=settings["seed"], progress=False)
    metrics = run_metrics(posterior, train, test, seed=settings["seed"])
    criticism = criticise(posterior, train)
    metrics |= criticism.metrics
    info = {"command": "compare", **{k: settings[k] for k in ("data", "test", "method", "seed", "config", "priors")}}
    write_run(settings["out"], posterior, metrics, train, save_dataset=False, info=info, criticism=criticism)
    return metrics


def _child_main() -> int:
    """Entry point of ``python -m latentscm.compare``: settings JSON on stdin (see :func:`run_fit_process`)."""
    from .runs import write_json

    settings = json.loads(sys.stdin.read())
    try:
        metrics = _child(settings)
    except Exception as e:  # noqa: BLE001 - reported to the parent, which raises it
        write_json(settings["error"], {"type": type(e).__name__, "message": str(e),
                                       "user_error": isinstance(e, ValueError), "traceback": traceback.format_exc()})
        return 1
    write_json(settings["result"], metrics)
    return 0


def compare(data, methods, *, seeds=(0,), test=None, configs=None, out_dir="compare", progress=True):
    """Fit every method with every seed on ``data`` (a .npz path); write and return the table.

    configs: optional {method: settings dict}. Writes ``comparison.csv``, ``comparison.md`` and
    ``comparison.png`` to ``out_dir`` (the fits' run folders and metrics under ``out_dir/fits``);
    returns the per-fit DataFrame. Warns (``UserWarning``) when a fit's LOO is unreliable (Pareto k > 0.7).
    """
    from .criticism import LOO_K_MAX
    from .inference import METHODS

    unknown = sorted(set(methods) - set(METHODS))
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; available methods: {sorted(METHODS)}")
    if not Path(data).is_file():
        raise ValueError(f"--data {data}: no such file")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    rows = []
    for method in methods:
        for seed in seeds:
            if progress:
                print(f"compare: fitting {method} (seed {seed})", file=sys.stderr, flush=True)
            rows.append(run_fit_process(data, out_dir / "fits", method=method, seed=seed, test=test,
                                        config=(configs or {}).get(method)))
    table = pd.DataFrame(rows)
    table = table[[c for c in COLUMNS if c in table]]
    summary = table.drop(columns="seed").groupby("method", sort=False).mean(numeric_only=True)
    k = table["loo_k_max"].to_numpy(float) if "loo_k_max" in table else np.full(len(table), np.nan)
    unreliable = [f"{m}-seed{s}" for m, s, kk in zip(table["method"], table["seed"], k) if kk > LOO_K_MAX]
    note = ""
    if unreliable:
        message = (f"LOO is unreliable (largest Pareto k > {LOO_K_MAX}) for {', '.join(unreliable)}: its `loo` "
                   "may be far off")
        note = f"**Warning:** {message}.\n\n"
        warnings.warn(f"compare: {message}", UserWarning, stacklevel=2)
    text = (f"# Comparison on {Path(data).name}\n\nMeans over seeds {list(seeds)}; one process per fit. `loo`: "
            "elpd of PSIS-LOO on the training data (higher is better), `heldout_nll`: per row on the test data "
            f"(lower is better).\n\n{note}{summary.round(4).to_markdown()}\n\n## Per fit\n\n"
            f"{table.round(4).to_markdown(index=False)}\n{_arviz_compare(out_dir / 'fits', table)}")
    atomic_write(out_dir / "comparison.csv", lambda tmp: table.to_csv(tmp, index=False))
    atomic_write(out_dir / "comparison.md", lambda tmp: Path(tmp).write_text(text))
    from .plots import plot_comparison, save_figure

    save_figure(plot_comparison(table, metrics=_PLOTTED), out_dir / "comparison.png")
    return table


def _arviz_compare(fits: Path, table) -> str:
    """Markdown section with ``az.compare`` of the fits' ``posterior.nc`` (those with a log-likelihood)."""
    import arviz as az
    import xarray as xr

    trees = {}
    for method, seed in zip(table["method"], table["seed"]):
        path = fits / f"run-{method}-seed{seed}" / "posterior.nc"
        if path.is_file():
            with xr.open_datatree(path, engine="h5netcdf") as tree:
                if "log_likelihood" in tree.children:
                    trees[f"{method}-seed{seed}"] = tree.load().copy()
    if len(trees) < 2:
        return ""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)
            ranked = az.compare(trees)
    except (ValueError, TypeError) as e:  # e.g. too few draws for PSIS
        return f"\n## az.compare\n\nnot available: {e}\n"
    columns = [c for c in ("rank", "elpd", "p", "elpd_diff", "dse", "weight", "se", "warning") if c in ranked]
    return ("\n## az.compare (PSIS-LOO on the training data, stacking weights)\n\n"
            f"{ranked[columns].round(3).to_markdown()}\n")


if __name__ == "__main__":
    sys.exit(_child_main())
