"""Grid benchmark: simulated problems x methods x seeds, one process per fit, resumable.

One command runs a grid of cells. A cell is one simulated problem (``d``, graph ER-k, linear or MLP
projection, single- or multi-target interventions, Gaussian, zero (knockouts) or hidden values (Gaussian
values written as NaN, fitted with ``unknown_values = "latent"``), targets given or not (``--given
unknown``: every interventional regime's targets hidden, the observational one labelled, fitted with
``unknown_targets = "latent"``; target AUROC / AUPRC join the metrics), ``n_regimes`` regimes of
``rows_per_regime`` paired rows, ``D``), one method with its settings and one seed. Each fit is a fresh
child process (:func:`latentscm.compare.run_fit_process`), so ``wall_s`` includes start-up
and compilation and ``peak_rss_mb`` is that fit's own peak memory.

Resumable: every finished cell leaves ``<work>/<cell>.json`` (its metrics); a second run skips those
cells and only fits the missing ones (``--fresh`` clears them). A cell's run folder is cleared before
its fit (an old checkpoint would be resumed or refused). After every cell the table is rewritten, so an
interrupted grid still has its results: ``<out>.csv`` (one row per fit), ``<out>.md`` (means over seeds
per configuration and the per-fit table) and ``<out>.png`` (metrics against d; seconds and peak memory
against d on log-log axes, via :func:`latentscm.plots.plot_scaling`). A failed fit is recorded with
its error and the grid goes on.

Usage::

    python benchmarks/grid.py                        # the full grid (hours)
    python benchmarks/grid.py --quick                # a tiny slice (seconds), as in the tests
    python benchmarks/grid.py --plan slices --seeds 0   # the base problem at every d, one change at a time
    python benchmarks/grid.py --d 5,10,20 --graphs 1 --projections linear --targets multi \\
        --values gaussian --seeds 0,1 --methods collapsed --name grid-linear

``collapsed`` settings follow its size rule (:func:`latentscm.inference.collapsed.scaled_settings`)
unless ``--config`` overrides them.
"""

from __future__ import annotations

import argparse
import dataclasses
import itertools
import json
import shutil
import sys
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd

from latentscm._io import atomic_write
from latentscm.compare import run_fit_process

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "grid"
RESULTS = ROOT / "benchmarks" / "results"

KEYS = ["d", "graph", "projection", "targets", "values", "given", "method"]
GROUP = KEYS + ["D", "n"]  # one configuration of the tables (n: rows)
COLUMNS = KEYS + ["seed", "n", "D", "n_regimes", "e_shd", "e_shd_double", "auroc", "auprc", "mcc", "edge_rmse",
                  "target_auroc", "target_auprc", "heldout_nll", "seconds", "wall_s", "peak_rss_mb", "error"]


@dataclass(frozen=True)
class Cell:
    """One fit of the grid: a simulated problem, a method and its settings, a seed."""

    d: int
    graph: str = "ER-1"  # "ER-k": Erdos-Renyi with k expected edges per node
    projection: str = "linear"
    targets: str = "multi"
    values: str = "gaussian"
    given: str = "known"  # "unknown": the targets of every interventional regime hidden from the fit
    method: str = "collapsed"
    seed: int = 0
    D: int = 100
    n_regimes: int = 100
    rows_per_regime: int = 100
    config: dict = field(default_factory=dict, compare=False, hash=False)

    @property
    def name(self):
        hidden = "-targets_unknown" if self.given == "unknown" else ""
        return (f"d{self.d}-{self.graph.lower()}-{self.projection}-{self.targets}-{self.values}{hidden}-D{self.D}"
                f"-r{self.n_regimes}x{self.rows_per_regime}-{self.method}-seed{self.seed}")

    @property
    def data_name(self):
        """The simulated problem's name: every key but the method (the seed included: each seed is new data)."""
        problem, _ = self.name.rsplit(f"-{self.method}-", 1)
        return f"{problem}-seed{self.seed}"

    def simulation(self):
        from latentscm.data import SimulationConfig

        return SimulationConfig(
            d=self.d, D=self.D, graph="er", edges_per_node=float(self.graph.split("-")[1]),
            projection=self.projection, targets=self.targets,
            values="gaussian" if self.values == "hidden" else self.values,
            n_regimes=self.n_regimes, rows_per_regime=self.rows_per_regime,
            n_pairs=self.n_regimes * self.rows_per_regime)


def default_config(cell):
    """Method settings of a cell: ``collapsed`` by its size rule, other methods their defaults."""
    from latentscm.inference.collapsed import scaled_settings

    hidden = {"unknown_values": "latent"} if cell.values == "hidden" and cell.method in ("collapsed", "amortized") else {}
    unknown = {"unknown_targets": "latent"} if cell.given == "unknown" and cell.method == "collapsed" else {}
    return (scaled_settings(cell.d) if cell.method == "collapsed" else {}) | hidden | unknown


def _read_records(work):
    records = []
    for path in sorted(work.glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except json.JSONDecodeError:  # a half-written file cannot happen (atomic), but be safe
            continue
    return records


def run_cell(cell, work, *, progress=True):
    """Fit one cell (simulating its data once per problem); returns its record (metrics + cell keys)."""
    from latentscm.data import simulate

    data, test = work / "data" / f"{cell.data_name}.npz", work / "data" / f"{cell.data_name}-test.npz"
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        train, held_out = simulate(cell.simulation(), cell.seed)
        if cell.values == "hidden":  # the values were drawn, then lost: NaN where targeted
            train = dataclasses.replace(train, values=np.where(train.targets > 0, np.nan, 0.0))
        if cell.given == "unknown":  # the observational regime stays labelled (all-zero targets)
            ids = np.unique(train.regime)
            train = train.hide_targets([r for r in ids if train.targets[train.regime == r].any()])
        held_out.save(test)
        train.save(data)
    fits = work / "fits"
    shutil.rmtree(fits / f"run-{cell.name}", ignore_errors=True)  # fresh run folder: no old checkpoint
    record = {k: getattr(cell, k) for k in KEYS + ["seed", "n_regimes", "rows_per_regime"]}
    record["config"] = json.dumps(cell.config, sort_keys=True)
    start = time.perf_counter()
    try:
        metrics = run_fit_process(data, fits, method=cell.method, seed=cell.seed, test=test, config=cell.config,
                                  name=cell.name)
        record |= {k: v for k, v in metrics.items() if k not in record or k in ("D",)}
        record["error"] = ""
    except Exception as e:  # noqa: BLE001 - recorded, the grid goes on
        record |= {"D": cell.D, "wall_s": time.perf_counter() - start, "error": str(e).splitlines()[-1][:300]}
        if progress:
            traceback.print_exc()
    return record


def write_tables(records, out, *, title, note=""):
    """``out``.csv, .md, .png from the per-fit records (atomic writes)."""
    from latentscm.plots import plot_scaling, save_figure

    table = pd.DataFrame(records)
    cols = [c for c in COLUMNS if c in table] + [c for c in ("config",) if c in table]
    if "given" in table:  # records written before the axis existed: targets known
        table["given"] = table["given"].fillna("known")
    table = table[cols].sort_values(["method", "graph", "projection", "targets", "values", "given", "d", "seed"])
    atomic_write(out.with_suffix(".csv"), lambda tmp: table.to_csv(tmp, index=False))
    ok = table[table["error"].fillna("") == ""] if "error" in table else table
    metric_cols = [c for c in ("e_shd", "e_shd_double", "auroc", "auprc", "mcc", "edge_rmse", "target_auroc",
                               "target_auprc", "heldout_nll", "seconds",
                               "wall_s", "peak_rss_mb") if c in ok]
    group = [k for k in GROUP if k in ok]
    summary = ok.groupby(group, sort=False)[metric_cols].mean() if len(ok) else pd.DataFrame()
    if len(ok):
        summary.insert(0, "fits", ok.groupby(group, sort=False).size())
        summary["max_wall_s"] = ok.groupby(group, sort=False)["wall_s"].max()
    failed = table[table["error"].fillna("") != ""] if "error" in table else table.iloc[:0]
    text = (f"# {title}\n\n{note}Means over seeds per configuration; one process per fit "
            "(`wall_s` includes start-up and compilation, `seconds` is the fit itself, `peak_rss_mb` the "
            "process's peak resident memory).\n\n"
            + (summary.round(3).reset_index().to_markdown(index=False) if len(summary) else "(no finished fits)") + "\n\n"
            + (f"## Failed fits\n\n{failed[KEYS + ['seed', 'error']].to_markdown(index=False)}\n\n" if len(failed) else "")
            + "## Per fit\n\n" + table.drop(columns=["config"], errors="ignore").round(3).to_markdown(index=False)
            + "\n")
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))
    # metrics and costs against d (out.png), N (out-n.png) and D (out-D.png): one line per configuration
    # of the other keys, drawn only where that configuration has several values of the axis
    for x, path in (("d", out), ("n", out.with_name(out.name + "-n")), ("D", out.with_name(out.name + "-D"))):
        others = [k for k in ("method", "graph", "projection", "targets", "values", "given", "d", "D", "n")
                  if k != x and k in ok]
        varying = ok.groupby(others, sort=False).filter(lambda g: g[x].nunique() > 1) if x in ok and len(ok) else ok[:0]
        if len(varying):
            save_figure(plot_scaling(varying, x=x, group=tuple(others)), path.with_suffix(".png"), dpi=110)
    return table


def run_grid(cells, *, work=WORK, out=RESULTS / "grid", title="Grid benchmark", note="", fresh=False,
             progress=True, fit=True):
    """Run every cell not finished yet (``<work>/<cell>.json``), then write the tables; returns the table.

    Cells finished by an earlier run are read back, not refitted, unless ``fresh`` (which forgets the records of
    ``cells`` only, not of other cells in ``work``). ``fit=False`` only
    rewrites the tables from the finished cells.
    """
    work, out = Path(work), Path(out)
    if fresh:  # these cells only: a filtered run keeps the other cells' records
        for cell in cells:
            for folder in ("done", "failed"):
                (work / folder / f"{cell.name}.json").unlink(missing_ok=True)
    (work / "done").mkdir(parents=True, exist_ok=True)
    out.parent.mkdir(parents=True, exist_ok=True)
    wanted = {c.name for c in cells}
    for i, cell in enumerate(cells if fit else []):
        done = work / "done" / f"{cell.name}.json"
        if done.exists():
            if progress:
                print(f"[{i + 1}/{len(cells)}] {cell.name}: done earlier, skipped", file=sys.stderr, flush=True)
            continue
        if progress:
            print(f"[{i + 1}/{len(cells)}] {cell.name}: fitting", file=sys.stderr, flush=True)
        record = run_cell(cell, work, progress=progress)
        if not record.get("error"):
            atomic_write(done, lambda tmp, r=record: Path(tmp).write_text(json.dumps(r, default=float)))
        else:
            failed = work / "failed"
            failed.mkdir(exist_ok=True)
            atomic_write(failed / f"{cell.name}.json", lambda tmp, r=record: Path(tmp).write_text(json.dumps(r, default=float)))
        if progress:
            shown = {k: record.get(k) for k in ("e_shd", "auroc", "seconds", "wall_s", "peak_rss_mb", "error")}
            print(f"    {shown}", file=sys.stderr, flush=True)
        records = [r for r in _read_records(work / "done") if _name(r) in wanted]
        records += [r for r in _read_records(work / "failed") if _name(r) in wanted
                    and not (work / "done" / f"{_name(r)}.json").exists()]
        write_tables(records, out, title=title, note=note)
    records = [r for r in _read_records(work / "done") if _name(r) in wanted]
    records += [r for r in _read_records(work / "failed") if _name(r) in wanted
                and not (work / "done" / f"{_name(r)}.json").exists()]
    return write_tables(records, out, title=title, note=note) if records else pd.DataFrame()


def _name(record):
    return Cell(given=record.get("given", "known"),
                **{k: record[k] for k in ("d", "graph", "projection", "targets", "values", "method", "seed", "D",
                                          "n_regimes", "rows_per_regime")}).name


def grid_cells(ds, graphs, projections, targets, values, methods, seeds, *, D=100, n_regimes=100,
               rows_per_regime=100, config=None, given=("known",)):
    """The cells of a full factorial grid (single-target cells get at least d regimes).

    ``D`` and ``rows_per_regime`` may be lists too (sweeps over the observation dimension and N); ``given``:
    "known" and / or "unknown" targets."""
    cells = []
    for d, g, p, t, v, k, m, s, dim, rows in itertools.product(ds, graphs, projections, targets, values, given,
                                                              methods, seeds, np.atleast_1d(D).tolist(),
                                                              np.atleast_1d(rows_per_regime).tolist()):
        if k == "unknown" and m != "collapsed":  # the one method that infers targets
            continue
        cell = Cell(d=d, graph=f"ER-{g}", projection=p, targets=t, values=v, given=k, method=m, seed=s, D=dim,
                    n_regimes=max(n_regimes, d) if t == "single" else n_regimes, rows_per_regime=rows)
        cells.append(dataclasses.replace(cell, config=default_config(cell) | (config or {})))
    return cells


def slice_cells(seeds, config=None):
    """The one-factor-at-a-time plan (``--plan slices``): the base problem (ER-1, linear projection,
    multi-target, Gaussian values, ``collapsed``, D = 100, 100 regimes x 100 rows) at every d, and one
    change at a time around it: ER-2, single-target and zero values at d <= 20; hidden values and the MLP
    projection with ``amortized`` at d <= 10; N (25 to 400 rows per regime) and D (25 to 800) at d = 5."""
    def g(ds, **kw):
        args = {"graphs": [1], "projections": ["linear"], "targets": ["multi"], "values": ["gaussian"],
                "methods": ["collapsed"]} | kw
        return grid_cells(ds, args.pop("graphs"), args.pop("projections"), args.pop("targets"), args.pop("values"),
                          args.pop("methods"), seeds, config=config, **args)

    cells = (g([5, 10, 20, 30, 50]) + g([5, 10, 20], graphs=[2]) + g([5, 10, 20], targets=["single"])
             + g([5, 10, 20], values=["zero"]) + g([5, 10], values=["hidden"])
             + g([5, 10], projections=["mlp"], methods=["amortized"])
             + g([5], rows_per_regime=[25, 50, 200, 400]) + g([5], D=[25, 50, 200, 400, 800]))
    return list(dict.fromkeys(cells))


def _ints(text):
    return [int(t) for t in text.split(",") if t]


def _words(text):
    return [t for t in text.split(",") if t]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="a tiny slice (d = 3, 4; ER-1; linear; multi-target; Gaussian values; collapsed, "
                             "30 steps) for CI; writes <name>-quick.*")
    parser.add_argument("--d", default="5,10,20,30,50")
    parser.add_argument("--graphs", default="1,2", help="expected edges per node of the ER graphs")
    parser.add_argument("--projections", default="linear,mlp")
    parser.add_argument("--targets", default="multi,single")
    parser.add_argument("--values", default="gaussian,zero,hidden",
                        help="comma list of gaussian, zero (knockouts), hidden (values unknown to the fit)")
    parser.add_argument("--given", default="known",
                        help="comma list of known, unknown (the targets of the interventional regimes hidden from "
                             "the fit, which infers them with unknown_targets = \"latent\"; collapsed only)")
    parser.add_argument("--methods", default="collapsed,amortized")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--D", default="100", help="observation dimensions (a comma list sweeps D)")
    parser.add_argument("--n-regimes", type=int, default=100)
    parser.add_argument("--rows-per-regime", default="100", help="rows per regime (a comma list sweeps N)")
    parser.add_argument("--plan", choices=("full", "slices"), default="full",
                        help="full: the factorial grid of the options above; slices: the base problem at every d "
                             "and one change at a time around it (see slice_cells; uses --seeds and --config only)")
    parser.add_argument("--config", default="{}", help="JSON object of method settings overriding the size rule")
    parser.add_argument("--name", default="grid", help="results stem: benchmarks/results/NAME.{csv,md,png}")
    parser.add_argument("--work", default=None, help="scratch folder (default benchmarks/_work/NAME)")
    parser.add_argument("--out", default=None, help="results stem path (default benchmarks/results/NAME)")
    parser.add_argument("--fresh", action="store_true", help="refit the selected cells (other cells' records in the work folder are kept)")
    parser.add_argument("--tables-only", action="store_true", help="rewrite the tables from finished cells, fit nothing")
    args = parser.parse_args(argv)
    config = json.loads(args.config)
    if args.quick:
        name = f"{args.name}-quick"
        cells = grid_cells([3, 4], [1], ["linear"], ["multi"], ["gaussian"], ["collapsed"], [0], D=10, n_regimes=6,
                           rows_per_regime=30, config={"steps": 30, "num_draws": 10, "num_restarts": 1} | config)
    elif args.plan == "slices":
        name = args.name if args.name != "grid" else "grid-slices"
        cells = slice_cells(_ints(args.seeds), config)
    else:
        name = args.name
        cells = grid_cells(_ints(args.d), _ints(args.graphs), _words(args.projections), _words(args.targets),
                           _words(args.values), _words(args.methods), _ints(args.seeds), D=_ints(args.D),
                           n_regimes=args.n_regimes, rows_per_regime=_ints(args.rows_per_regime), config=config,
                           given=_words(args.given))
    work = Path(args.work) if args.work else ROOT / "benchmarks" / "_work" / name
    out = Path(args.out) if args.out else RESULTS / name
    note = ("Timings: one pinned CPU core of a shared 2-core machine when run with `taskset -c 1` (conservative for "
            "the 2-core targets).\n\n")
    table = run_grid(cells, work=work, out=out, title=f"Grid benchmark ({name})", note=note, fresh=args.fresh,
                     fit=not args.tables_only)
    print(table.drop(columns=["config"], errors="ignore").to_string(index=False))
    return table


if __name__ == "__main__":
    main()
