"""Identification without anchors: knockout interventions and hidden intervention values (``collapsed``).

A cell is one dataset and one fit: generator x values x design x targets x d x seed.

* generator ``package``: :func:`latentscm.data.simulate` (``SimulationConfig`` defaults otherwise:
  ER-1, weights +-U(0.5, 2), noise exp(U(0, log 2)), linear projection, D = 100); ``independent``:
  ``benchmarks/independent_generator.py`` (numpy only; weights +-U(0.4, 1.5), noise U(0.5, 1.5),
  Gaussian projection 2 N(0, 1), D = 60), written and read back through the external ``.npz`` format.
  Its weight law puts about 4% of true edges at |w| <= 0.3, below the metrics' edge threshold: such an
  edge counts as missed even when recovered exactly; the ``weak_edges`` column counts them per dataset.
* values ``zero`` (knockouts: value 0, known), ``hidden`` (Gaussian values 2 N(0, 1), written as NaN:
  unknown; the package's data are simulated with Gaussian values and the targeted values then removed),
  ``gaussian`` (known Gaussian values: the control).
* design ``iid`` or ``paired`` (twins sharing exogenous noise); targets ``multi`` (1..d-1 nodes per
  regime) or ``single`` (one node per regime, cycling).
* sizes: d <= 10: N = 4000 rows (iid: 4000 rows over 1 + n_regimes regimes; paired: 2000 pairs), 20
  regimes at d = 5, 40 at d = 10; d = 20: 100 regimes x 100 rows (iid: 10 000 rows; paired: 10 000 pairs).
* method ``collapsed``, order learned, its defaults with ``scaled_settings(d)`` merged in, plus
  ``unknown_values = "latent"`` for hidden values and ``use_pairs = true`` for the paired design. The
  fit's seed is the data seed.

Each fit is its own child process (:func:`latentscm.compare.run_fit_process`), so ``wall_s``
includes start-up and compilation, ``seconds`` is the fit itself and ``peak_rss_mb`` is that process's peak
resident memory. Metrics: E-SHD, AUROC, AUPRC, MCC, edge RMSE (:func:`latentscm.metrics.structure_metrics`).

Plans (``--cases``)
-------------------
``acceptance``  seeds 0-2, both generators, both designs:
                knockouts, multi-target, d = 5, 10, 20 (target mean E-SHD <= 0.5 / 1 / 2);
                hidden values, multi-target, d = 5, 10 (same targets);
                knockouts, single-target, d = 5 (and <= 30 s per fit);
                control: known Gaussian values, multi-target, d = 5, 10.
                Every row also needs mean AUROC >= 0.97 and MCC >= 0.95.
``quick``       one fit: independent generator, knockouts, iid, multi-target, d = 5, seed 0 (about a minute).

Resumable: the results CSV is the record. Cells already in it without an error are skipped (``--fresh``
refits them); the CSV and the Markdown table are rewritten atomically after every fit. Rows of other
plans already in the CSV are kept, so several plans accumulate in one file.

Usage::

    python benchmarks/identification.py --cases quick
    taskset -c 1 python benchmarks/identification.py --cases acceptance          # hours; resumable
    python benchmarks/identification.py --cases acceptance --generators independent --d 5 --seeds 0
    python benchmarks/identification.py --tables-only                            # rewrite the .md
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
import traceback
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "benchmarks"))  # independent_generator, when run as a script

from latentscm._io import atomic_write  # noqa: E402
from latentscm.compare import run_fit_process  # noqa: E402

WORK = ROOT / "benchmarks" / "_work" / "identification"
RESULTS = ROOT / "benchmarks" / "results"
GENERATORS = ("package", "independent")
VALUES = ("zero", "hidden", "gaussian")
DESIGNS = ("iid", "paired")
TARGETS = ("multi", "single")
GIVEN = ("known", "unknown", "unlabelled")
KEYS = ["generator", "values", "design", "targets", "given", "d", "rows_factor"]
METRICS = ["e_shd", "e_shd_double", "auroc", "auprc", "mcc", "edge_rmse", "target_auroc", "target_auprc"]
TARGET_AUROC_BOUND = 0.95
UNKNOWN_E_SHD_BOUND = {5: 1.0, 10: 2.0}
COLUMNS = KEYS + ["seed", "n", "D", "n_regimes", "rows_per_regime", "weak_edges"] + METRICS + [
    "refits", "seconds", "wall_s", "peak_rss_mb", "cpus", "config", "error"]
E_SHD_BOUND = {5: 0.5, 10: 1.0, 20: 2.0}
AUROC_BOUND, MCC_BOUND, SINGLE_SECONDS = 0.97, 0.95, 30.0
METHOD = "collapsed"


@dataclass(frozen=True)
class Cell:
    generator: str
    values: str
    design: str
    targets: str
    d: int
    seed: int
    given: str = "known"  # unknown: interventional regimes' targets hidden; unlabelled: the observational one's too
    rows_factor: int = 1  # every size's rows (iid) or pairs (paired) times this (``--rows-factor``)

    @property
    def key(self):
        return (self.generator, self.values, self.design, self.targets, int(self.d), int(self.seed), self.given,
                int(self.rows_factor))

    @property
    def name(self):
        hidden = "" if self.given == "known" else f"-targets_{self.given}"
        rows = "" if self.rows_factor == 1 else f"-rows{self.rows_factor}x"
        return f"{self.generator}-{self.values}-{self.design}-{self.targets}{hidden}-d{self.d}{rows}-seed{self.seed}"

    # ------------------------------------------------------------------ sizes and settings
    @property
    def n_regimes(self):
        return 20 if self.d <= 5 else 40 if self.d <= 10 else 100

    @property
    def rows_per_regime(self):
        """Rows per interventional regime: pairs per regime (paired), the nominal share (iid)."""
        return self.rows_factor * (2000 // self.n_regimes if self.d <= 10 else 100)

    @property
    def n_rows_iid(self):
        return self.rows_factor * 4000 if self.d <= 10 else self.n_regimes * self.rows_per_regime

    def config(self):
        from latentscm.inference.collapsed import scaled_settings

        out = dict(scaled_settings(self.d, use_pairs=self.design == "paired"))
        if self.values == "hidden":
            out["unknown_values"] = "latent"
        if self.given != "known":
            out["unknown_targets"] = "latent"
        return out

    def dataset(self):
        """The cell's training data as a validated ``Dataset`` (targets hidden as ``given`` says)."""
        data = self._generated()
        if self.given == "known":
            return data
        ids = np.unique(data.regime)
        labelled = self.given == "unknown"  # the observational regime keeps its all-zero targets
        return data.hide_targets([r for r in ids if not labelled or data.targets[data.regime == r].any()])

    # ------------------------------------------------------------------ data
    def _generated(self):
        if self.generator == "independent":
            from independent_generator import generate

            return generate(self.d, 60, self.design, self.targets, self.values, self.n_regimes,
                            self.rows_per_regime, self.seed,
                            n_rows=self.n_rows_iid if self.design == "iid" else None)
        from latentscm.data import Dataset, SimulationConfig, simulate

        cfg = SimulationConfig(d=self.d, design=self.design, targets=self.targets,
                               values="gaussian" if self.values == "hidden" else self.values,
                               n_regimes=self.n_regimes, rows_per_regime=self.rows_per_regime,
                               n_pairs=self.n_regimes * self.rows_per_regime, n_rows=self.n_rows_iid)
        train, _ = simulate(cfg, self.seed)
        if self.values != "hidden":
            return train
        hidden = np.where(train.targets == 1, np.nan, 0.0)
        return Dataset.from_arrays(train.x, train.targets, hidden, regime=train.regime, pair=train.pair, z=train.z,
                                   weights=train.weights, noise_scales=train.noise_scales,
                                   projection=train.projection, meta=train.meta | {"values": "hidden"})


def write_warning_table(table, out, title, rule):
    """A warning diagnostic's per-fit table (columns ``warns``, ``e_shd``, ...) as ``out.csv`` and ``out.md``: the
    title, the ``rule`` that warns, and how often it warned on fits with E-SHD above and at most 1."""
    atomic_write(out.with_suffix(".csv"), lambda tmp: table.to_csv(tmp, index=False))
    bad = table.e_shd > 1
    text = (f"# {title}\n\n{rule} Fits with E-SHD > 1: {int(bad.sum())}, warned {int(table.warns[bad].sum())}; fits "
            f"with E-SHD <= 1: {int((~bad).sum())}, warned {int(table.warns[~bad].sum())} (of which with E-SHD 0: "
            f"{int(table.warns[table.e_shd == 0].sum())}).\n\n" + table.to_markdown(index=False, floatfmt=".3g") + "\n")
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))


def plan(name, seeds=None):
    """The cells of a named plan (``acceptance`` or ``quick``)."""
    if name == "quick":
        return [Cell("independent", "zero", "iid", "multi", 5, s) for s in (seeds if seeds is not None else [0])]
    if name != "acceptance":
        raise ValueError(f"unknown plan {name!r}; choose acceptance or quick")
    seeds = seeds if seeds is not None else [0, 1, 2]
    groups = [("zero", "multi", (5, 10, 20)), ("hidden", "multi", (5, 10)), ("zero", "single", (5,)),
              ("gaussian", "multi", (5, 10))]
    cells = [Cell(g, v, des, t, d, s) for v, t, ds in groups for d in ds for g in GENERATORS for des in DESIGNS
             for s in seeds]
    # unknown targets (their values unknown too): knockouts and Gaussian values, single and multi target,
    # iid (pairs cannot be combined with unknown targets), the observational regime labelled
    cells += [Cell(g, v, "iid", t, d, s, "unknown") for d in (5, 10) for v in ("zero", "gaussian")
              for t in ("single", "multi") for g in GENERATORS for s in seeds]
    # and unlabelled (d = 5): the complement ambiguity of parentless nodes (docs/identification.md)
    cells += [Cell(g, v, "iid", "multi", 5, s, "unlabelled") for v in ("zero", "gaussian") for g in GENERATORS
              for s in seeds]
    return cells


# ---------------------------------------------------------------------- fitting
def data_path(cell, work):
    return Path(work) / "data" / f"{cell.name}.npz"


def weak_edges(path):
    """True edges with ``|w| <= 0.3``, the metrics' edge threshold: no fit can count them as found
    (the independent generator's ``|w| ~ U(0.4, 1.5)`` puts none there by default)."""
    from latentscm.data import Dataset
    from latentscm.metrics import DEFAULT_THRESHOLD

    w = Dataset.load(path).weights
    return int(((w != 0) & (np.abs(w) <= DEFAULT_THRESHOLD)).sum())


def ensure_data(cell, work):
    """The cell's data file, generated on first use."""
    data = data_path(cell, work)
    if not data.exists():
        data.parent.mkdir(parents=True, exist_ok=True)
        cell.dataset().save(data)
    return data


def run_cell(cell, work, *, progress=True):
    """Generate (once) and fit one cell in its own process; returns its record."""
    data = ensure_data(cell, work)
    fits = work / "fits"
    shutil.rmtree(fits / f"run-{cell.name}", ignore_errors=True)  # a fresh run folder: no checkpoint to resume
    config = cell.config()
    record = asdict(cell) | {"n_regimes": cell.n_regimes, "rows_per_regime": cell.rows_per_regime,
                             "cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count(),
                             "weak_edges": weak_edges(data), "config": json.dumps(config, sort_keys=True)}
    start = time.perf_counter()
    try:
        metrics = run_fit_process(data, fits, method=METHOD, seed=cell.seed, config=config, name=cell.name)
        record |= {k: metrics.get(k) for k in ["n", "D"] + METRICS + ["refits", "seconds", "wall_s", "peak_rss_mb"]}
        record["error"] = ""
    except Exception as e:  # noqa: BLE001 - recorded; the plan goes on
        record |= {"wall_s": time.perf_counter() - start, "error": str(e).strip().splitlines()[-1][:300]}
        if progress:
            traceback.print_exc()
    return record


def read_records(csv):
    if not Path(csv).exists():
        return []
    table = pd.read_csv(csv, dtype={"error": str, "config": str})
    if "error" in table:
        table["error"] = table["error"].fillna("").astype(str)
    return table.to_dict("records")


def _key(record):
    given, factor = record.get("given", "known"), record.get("rows_factor", 1)
    return (str(record["generator"]), str(record["values"]), str(record["design"]), str(record["targets"]),
            int(record["d"]), int(record["seed"]), "known" if pd.isna(given) else str(given),
            1 if pd.isna(factor) else int(factor))


# ---------------------------------------------------------------------- tables
def _fmt(x, nd=2):
    return "-" if x is None or (isinstance(x, float) and np.isnan(x)) else f"{x:.{nd}f}"


def _per_seed(g, column):
    """``a / b / c``: an integer column per seed ("-" where a record lacks it)."""
    return " / ".join("-" if pd.isna(v) else str(int(v)) for v in g[column]) if column in g else "-"


def summary(table):
    """One row per (generator, values, design, targets, d): means over seeds, per-seed E-SHD, the check."""
    ok = table[table["error"].fillna("") == ""]
    rows = []
    for keys, g in ok.groupby(KEYS, sort=False):
        g = g.sort_values("seed")
        gen, values, design, targets, given, d, _ = keys
        mean = g[[c for c in METRICS if c in g] + ["seconds", "wall_s"]].mean()
        bound = E_SHD_BOUND.get(int(d)) if given == "known" else UNKNOWN_E_SHD_BOUND.get(int(d))
        checks = []
        if bound is not None and given != "unlabelled":
            checks += [mean["e_shd"] <= bound, mean["auroc"] >= AUROC_BOUND, mean["mcc"] >= MCC_BOUND]
        if given == "unknown":
            checks.append(mean.get("target_auroc", np.nan) >= TARGET_AUROC_BOUND)
        if values == "zero" and targets == "single" and int(d) == 5 and given == "known":
            checks.append(g["seconds"].max() <= SINGLE_SECONDS)
        rows.append({
            "generator": gen, "values": values, "design": design, "targets": targets, "targets given": given,
            "d": int(d),
            "N": int(g["n"].iloc[0]), "D": int(g["D"].iloc[0]), "seeds": ",".join(str(int(s)) for s in g["seed"]),
            "E-SHD": _fmt(mean["e_shd"], 3),
            "E-SHD per seed": " / ".join(_fmt(v) for v in g["e_shd"]),
            "weak edges per seed": _per_seed(g, "weak_edges"),
            "refits per seed": _per_seed(g, "refits"),
            "AUROC": _fmt(mean["auroc"], 3), "AUPRC": _fmt(mean["auprc"], 3), "MCC": _fmt(mean["mcc"], 3),
            "edge RMSE": _fmt(mean["edge_rmse"], 3),
            "target AUROC": _fmt(mean.get("target_auroc", np.nan), 3),
            "fit s (mean / max)": f"{mean['seconds']:.0f} / {g['seconds'].max():.0f}",
            "wall s (mean / max)": f"{mean['wall_s']:.0f} / {g['wall_s'].max():.0f}",
            "peak RSS MB": f"{g['peak_rss_mb'].max():.0f}",
            "E-SHD bound": "-" if bound is None else f"<= {bound:g}",
            "pass": "-" if not checks else ("yes" if all(bool(c) for c in checks) else "NO"),
        })
    return pd.DataFrame(rows)


def write_tables(records, out):
    table = pd.DataFrame(records)
    table["given"] = table["given"].fillna("known") if "given" in table else "known"
    table["rows_factor"] = table["rows_factor"].fillna(1).astype(int) if "rows_factor" in table else 1
    table = table[[c for c in COLUMNS if c in table]]
    order = {k: {v: i for i, v in enumerate(vals)} for k, vals in
             (("values", VALUES), ("targets", TARGETS), ("generator", GENERATORS), ("design", DESIGNS),
              ("given", GIVEN))}
    table = table.sort_values(["given", "values", "targets", "d", "generator", "design", "seed"],
                              key=lambda s: s.map(order[s.name]) if s.name in order else s).reset_index(drop=True)
    atomic_write(out.with_suffix(".csv"), lambda tmp: table.to_csv(tmp, index=False))
    summ = summary(table)
    failed = table[table["error"].fillna("") != ""]
    text = (
        "# Identification without anchors (`collapsed`, order learned)\n\n"
        "Written by `benchmarks/identification.py` (see its docstring for the cases). One `latentscm fit` "
        "process per fit: `wall s` includes start-up and compilation, `fit s` is the fit itself, `peak RSS` "
        "the fit process's peak resident memory. Generators: `package` = `latentscm.data.simulate` "
        "(D = 100), `independent` = `benchmarks/independent_generator.py` (other weight and noise laws, "
        "Gaussian projection, D = 60). Values: `zero` = knockouts (known value 0), `hidden` = unknown "
        "values (`unknown_values = \"latent\"`), `gaussian` = known values (control). N counts rows "
        "(paired: twice the pairs). The `cpus` column of the CSV is the process's CPU affinity size. "
        "`weak edges`: true edges with |w| <= 0.3, the metrics' edge threshold, which no fit can count as "
        "found (each adds up to 1 to that seed's E-SHD; the independent generator draws |w| ~ U(0.4, 1.5)). "
        "`refits`: the fit failed its moment check and was redone with twice the steps, the better of the two "
        "kept (`refit_on_misfit`, docs/collapsed.md; blank: a record from before refits).\n\n"
        f"Acceptance per row: mean E-SHD within the bound for its d, mean AUROC >= {AUROC_BOUND}, mean MCC >= "
        f"{MCC_BOUND}; single-target knockouts at d = 5 also every fit <= {SINGLE_SECONDS:g} s (`fit s`).\n\n"
        + (summ.to_markdown(index=False) if len(summ) else "(no finished fits)") + "\n\n"
        + (f"## Failed fits\n\n{failed[KEYS + ['seed', 'error']].to_markdown(index=False)}\n\n" if len(failed) else "")
        + "## Per fit\n\n" + table.drop(columns=["config"]).round(3).to_markdown(index=False) + "\n")
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text))
    return table, summ


# ---------------------------------------------------------------------- CLI
def _words(text, allowed):
    words = [w for w in text.split(",") if w]
    bad = set(words) - set(allowed)
    if bad:
        raise SystemExit(f"unknown choice(s) {sorted(bad)}; allowed {allowed}")
    return words


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--cases", default="acceptance", choices=("acceptance", "quick"), help="named plan")
    p.add_argument("--seeds", default=None, help="comma list overriding the plan's seeds")
    p.add_argument("--generators", default=",".join(GENERATORS), help="filter the plan (comma list)")
    p.add_argument("--values", default=",".join(VALUES), help="filter the plan (comma list)")
    p.add_argument("--designs", default=",".join(DESIGNS), help="filter the plan (comma list)")
    p.add_argument("--targets", default=",".join(TARGETS), help="filter the plan (comma list)")
    p.add_argument("--given", default=",".join(GIVEN), help="filter the plan (comma list): targets known, unknown "
                   "(observational regime labelled) or unlabelled")
    p.add_argument("--d", default=None, help="filter the plan: comma list of d")
    p.add_argument("--rows-factor", type=int, default=1, help="every cell's rows (iid) or pairs (paired) times "
                   "this integer (a sample-size check; its data files and records are its own)")
    p.add_argument("--out", default=None, help="results stem: OUT.csv, OUT.md (default results/identification, "
                   "with --rows-factor K > 1 results/identification-rowsKx)")
    p.add_argument("--work", default=str(WORK), help="scratch folder (data files and run folders)")
    p.add_argument("--fresh", action="store_true", help="refit cells already in the CSV")
    p.add_argument("--list", action="store_true", help="print the plan's cells and exit")
    p.add_argument("--tables-only", action="store_true", help="rewrite the tables from the CSV, fit nothing")
    args = p.parse_args(argv)

    seeds = [int(s) for s in args.seeds.split(",") if s] if args.seeds else None
    keep = {"generator": _words(args.generators, GENERATORS), "values": _words(args.values, VALUES),
            "design": _words(args.designs, DESIGNS), "targets": _words(args.targets, TARGETS),
            "given": _words(args.given, GIVEN)}
    ds = [int(d) for d in args.d.split(",") if d] if args.d else None
    if args.rows_factor < 1:
        p.error(f"--rows-factor must be a positive integer, got {args.rows_factor}")
    cells = [replace(c, rows_factor=args.rows_factor) for c in plan(args.cases, seeds)
             if all(getattr(c, k) in v for k, v in keep.items()) and (ds is None or c.d in ds)]
    out = Path(args.out) if args.out else RESULTS / ("identification" + (
        f"-rows{args.rows_factor}x" if args.rows_factor > 1 else ""))
    out = out.with_suffix("") if out.suffix in (".csv", ".md") else out
    work = Path(args.work)
    if args.list:
        for c in cells:
            print(c.name, json.dumps(c.config(), sort_keys=True))
        return 0
    out.parent.mkdir(parents=True, exist_ok=True)
    work.mkdir(parents=True, exist_ok=True)

    records = read_records(out.with_suffix(".csv"))
    for r in records:  # rows written before the weak_edges column existed
        path = data_path(Cell(*_key(r)), work)
        if pd.isna(r.get("weak_edges", np.nan)) and path.exists():
            r["weak_edges"] = weak_edges(path)
    if not args.tables_only:
        done = {_key(r) for r in records if not r.get("error")}
        for i, cell in enumerate(cells):
            tag = f"[{i + 1}/{len(cells)}] {cell.name}"
            if cell.key in done and not args.fresh:
                print(f"{tag}: in {out.with_suffix('.csv').name}, skipped", file=sys.stderr, flush=True)
                continue
            print(f"{tag}: fitting", file=sys.stderr, flush=True)
            record = run_cell(cell, work)
            shown = {k: (round(record[k], 3) if isinstance(record.get(k), float) else record.get(k))
                     for k in ("e_shd", "auroc", "mcc", "edge_rmse", "seconds", "wall_s", "peak_rss_mb", "error")}
            print(f"    {shown}", file=sys.stderr, flush=True)
            records = [r for r in records if _key(r) != cell.key] + [record]
            write_tables(records, out)
    if not records:
        print("no finished fits")
        return 0
    _, summ = write_tables(records, out)
    print(summ.to_string(index=False))
    print(f"\nwrote {out.with_suffix('.csv')} and {out.with_suffix('.md')}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
