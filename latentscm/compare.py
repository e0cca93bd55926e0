"""Compare inference methods on the same data: one table, one plot.

Each (method, seed) fit runs in its own ``latentscm fit`` process, so its wall time includes start-up
and compilation and its peak memory (``peak_rss_mb``) is its own. The table (one row per fit) is
written as CSV and Markdown with a per-method summary (means over seeds), plus ``comparison.png``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

from ._io import atomic_write

COLUMNS = ["method", "seed", "e_shd", "e_shd_double", "auroc", "auprc", "mcc", "edge_rmse", "heldout_nll",
           "seconds", "wall_s", "peak_rss_mb"]


def run_fit_process(data, out_dir, *, method="collapsed", seed=0, test=None, config=None, priors=None, name=None):
    """Run ``latentscm fit`` on ``data`` in a fresh process; returns its metrics dict plus ``wall_s``.

    config / priors: dicts written to a settings file ([fit] / [priors] tables).
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    name = name or f"{method}-seed{seed}"
    cmd = [sys.executable, "-m", "latentscm", "fit", "--data", str(data), "--method", method, "--seed", str(seed),
           "--json", str(out_dir / f"{name}.json"), "--out", str(out_dir / f"run-{name}")]
    if test is not None:
        cmd += ["--test", str(test)]
    if config or priors:
        toml = out_dir / f"{name}.toml"
        toml.write_text("".join(f"[{table}]\n" + "".join(f"{k} = {_toml(v)}\n" for k, v in values.items())
                                for table, values in (("fit", config or {}), ("priors", priors or {})) if values))
        cmd += ["--config", str(toml)]
    start = time.perf_counter()
    done = subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"latentscm fit failed for {name} (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    metrics = json.loads((out_dir / f"{name}.json").read_text())
    return {**metrics, "wall_s": time.perf_counter() - start}


def _toml(value):
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k} = {_toml(v)}" for k, v in value.items()) + "}"
    return json.dumps(value)  # numbers, booleans, strings and lists read the same in TOML


def compare(data, methods, *, seeds=(0,), test=None, configs=None, out_dir="compare", progress=True):
    """Fit every method with every seed on ``data`` (a .npz path); write and return the table.

    configs: optional {method: settings dict}. Writes ``comparison.csv``, ``comparison.md`` and
    ``comparison.png`` to ``out_dir``; returns the per-fit DataFrame.
    """
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
    atomic_write(out_dir / "comparison.csv", lambda tmp: table.to_csv(tmp, index=False))
    text = (f"# Comparison on {Path(data).name}\n\nMeans over seeds {list(seeds)}; one process per fit.\n\n"
            f"{summary.round(4).to_markdown()}\n\n## Per fit\n\n{table.round(4).to_markdown(index=False)}\n")
    atomic_write(out_dir / "comparison.md", lambda tmp: Path(tmp).write_text(text))
    from .plots import plot_comparison, save_figure

    save_figure(plot_comparison(table), out_dir / "comparison.png")
    return table
