"""Accuracy and time of ``collapsed`` with ``precision = "float32"`` against ``"float64"`` (issue 5).

Problems: the default problem (``simulate(SimulationConfig(), seed)``, the ``latentscm run`` problem),
seeds 0-4, default settings; and the d = 20, 50 (seeds 0-2) and 100 (seed 0) scaling cells
(``benchmarks/scaling.py``: linear projection, D = 100, ER-1, multi-target, 100 regimes x 100 paired rows,
order learned, ``scaled_settings(d)``). Each fit is its own child process (``latentscm.compare.run_fit_process``), the two
precisions interleaved seed by seed. Resumable: a finished fit leaves its JSON in
``benchmarks/_work/precision/`` and is not refitted (``--fresh`` refits).

Usage: ``taskset -c 0 python benchmarks/precision.py [--only default,d20,d50,d100] [--fresh] [--name NAME]``
writes ``benchmarks/results/NAME.{csv,md}`` (default ``precision``).
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling grid harness (a script folder)

from grid import Cell  # noqa: E402

from latentscm._io import atomic_write  # noqa: E402
from latentscm.compare import run_fit_process  # noqa: E402
from latentscm.inference.collapsed import scaled_settings  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work" / "precision"
RESULTS = ROOT / "benchmarks" / "results"
PROBLEMS = {"default": (0, 1, 2, 3, 4), "d20": (0, 1, 2), "d50": (0, 1, 2), "d100": (0,)}
METRICS = ["e_shd", "auroc", "mcc", "edge_rmse", "heldout_nll", "seconds", "wall_s"]


def data_files(problem, seed):
    """(train, test) .npz paths of a problem and seed, simulated once."""
    from latentscm.data import SimulationConfig, simulate

    train, test = WORK / "data" / f"{problem}-{seed}.npz", WORK / "data" / f"{problem}-{seed}-test.npz"
    if not train.exists():
        train.parent.mkdir(parents=True, exist_ok=True)
        sim = SimulationConfig() if problem == "default" else Cell(d=int(problem[1:])).simulation()
        tr, te = simulate(sim, seed)
        te.save(test)
        tr.save(train)
    return train, test


def uptime():
    return subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()


def run(problem, seed, precision):
    name = f"{problem}-{precision}-seed{seed}"
    done = WORK / "done" / f"{name}.json"
    if done.exists():
        return json.loads(done.read_text())
    train, test = data_files(problem, seed)
    config = ({} if problem == "default" else scaled_settings(int(problem[1:]))) | {"precision": precision}
    shutil.rmtree(WORK / "fits" / f"run-{name}", ignore_errors=True)
    load = uptime()
    metrics = run_fit_process(train, WORK / "fits", seed=seed, test=test, config=config, name=name)
    record = {"problem": problem, "precision": precision, "seed": seed, **{k: metrics.get(k) for k in METRICS},
              "uptime_before": load, "uptime_after": uptime()}
    done.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(done, lambda tmp: Path(tmp).write_text(json.dumps(record, default=float)))
    return record


def write_tables(records, note="", name="precision"):
    df = pd.DataFrame(records).sort_values(["problem", "precision", "seed"])
    atomic_write(RESULTS / f"{name}.csv", lambda tmp: df.to_csv(tmp, index=False))
    g = df.groupby(["problem", "precision"])[METRICS]
    summary = g.mean().round(4)
    summary.insert(0, "fits", g.size())
    sd = g.std().round(4)[["e_shd", "auroc", "mcc", "edge_rmse", "heldout_nll", "seconds"]]
    loads = df[["problem", "precision", "seed", "uptime_before"]].copy()
    loads["uptime_before"] = loads["uptime_before"].str.extract(r"(load average: .*)")[0]
    text = ("# `collapsed`: float32 against float64\n\n"
            "Written by `benchmarks/precision.py`. One process per fit, pinned to one core "
            "(`taskset -c 0`) of a 2-core machine shared with another engineer's jobs: `seconds` (the fit) and "
            "`wall_s` (start-up and compilation included) are noisy; the load average before each fit is listed "
            "below.\n\n" + note +
            "Problems: `default` = `simulate(SimulationConfig(), seed)` (d = 5, D = 100, 4000 rows, 20 multi-target "
            "regimes), default settings, seeds 0-4; `d20`, `d50`, `d100` = the scaling cells (D = 100, ER-1, 100 "
            "multi-target regimes x 100 paired rows = 20000 rows, order learned, `scaled_settings(d)`), seeds 0-2 "
            "(d100: seed 0). "
            "`heldout_nll`: mean negative log-likelihood per held-out row (test regimes unseen in training).\n\n"
            "## Means over seeds\n\n" + summary.to_markdown() + "\n\n## Standard deviation over seeds\n\n"
            + sd.to_markdown() + "\n\n## Per fit\n\n"
            + df.drop(columns=["uptime_before", "uptime_after"]).round(4).to_markdown(index=False)
            + "\n\n## Load before each fit\n\n" + loads.to_markdown(index=False) + "\n")
    atomic_write(RESULTS / f"{name}.md", lambda tmp: Path(tmp).write_text(text))
    return summary


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--only", default="default,d20")
    p.add_argument("--fresh", action="store_true")
    p.add_argument("--note", default="", help="a paragraph added under the header")
    p.add_argument("--tables-only", action="store_true")
    p.add_argument("--name", default="precision", help="results stem: benchmarks/results/NAME.{csv,md}")
    a = p.parse_args(argv)
    if a.fresh:
        shutil.rmtree(WORK / "done", ignore_errors=True)
    records = []
    for problem in a.only.split(","):
        for seed in PROBLEMS[problem]:
            for precision in ("float32", "float64"):
                if a.tables_only and not (WORK / "done" / f"{problem}-{precision}-seed{seed}.json").exists():
                    continue
                t0 = time.perf_counter()
                records.append(run(problem, seed, precision))
                print(f"{problem} seed {seed} {precision}: " + ", ".join(
                    f"{k} {records[-1][k]:.4g}" for k in METRICS if records[-1].get(k) is not None)
                      + f" ({time.perf_counter() - t0:.0f} s)", flush=True)
                write_tables(records, a.note + ("\n\n" if a.note else ""), a.name)
    print(write_tables(records, a.note + ("\n\n" if a.note else ""), a.name).to_string())


if __name__ == "__main__":
    main()
