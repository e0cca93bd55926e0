"""Benchmark of the ``biols`` method (the seed paper's method, reproducible baseline).

Cases (the default setting: ``latentscm.data.simulate(SimulationConfig(), seed)``: paired design,
d=5, D=100, ER-1, linear projection, 2000 pairs in 20 multi-target regimes):

known-order    the true topological order given (what every run of the reference code did), seeds 0-4.
               Acceptance (issue): mean E-SHD <= 1 and mean AUROC >= 0.97.
learned-order  the order learned by q(P | L, sigma), seeds 0-2 (0-4 with --all-seeds).

Every fit uses ``BiolsConfig()`` defaults apart from ``known_order``; it runs in this process, so
``wall_s`` includes JIT compilation, and ``seconds`` is the fit as the Posterior records it.

Usage: ``python benchmarks/biols.py [--quick] [--all-seeds]`` writes ``benchmarks/results/biols.{csv,md}``.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import networkx as nx
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def run(case, seed, known):
    from latentscm.data import SimulationConfig, simulate
    from latentscm.inference import fit
    from latentscm.runs import run_metrics

    train, test = simulate(SimulationConfig(), seed)
    config = {"known_order": tuple(int(i) for i in nx.topological_sort(train.true_graph()))} if known else {}
    start = time.perf_counter()
    post = fit(train, method="biols", config=config, seed=seed, progress=False)
    wall = time.perf_counter() - start
    out = {"case": case, **run_metrics(post, train, test, seed=seed), "wall_s": round(wall, 1)}
    out["mean_noise_scale"] = float(post.noise_scales.mean())
    out["true_mean_noise_scale"] = float(train.noise_scales.mean())
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="seed 0 only")
    parser.add_argument("--all-seeds", action="store_true", help="learned order on seeds 0-4 as well")
    args = parser.parse_args(argv)
    known_seeds = [0] if args.quick else [0, 1, 2, 3, 4]
    learned_seeds = [0] if args.quick else ([0, 1, 2, 3, 4] if args.all_seeds else [0, 1, 2])
    RESULTS.mkdir(parents=True, exist_ok=True)
    records = []
    for case, seeds, known in (("known-order", known_seeds, True), ("learned-order", learned_seeds, False)):
        for seed in seeds:
            records.append(run(case, seed, known))
            print(records[-1], flush=True)
    df = pd.DataFrame(records)
    cols = ["case", "seed", "d", "D", "n", "e_shd", "e_shd_double", "auroc", "auprc", "mcc", "edge_rmse",
            "heldout_nll", "mean_noise_scale", "true_mean_noise_scale", "seconds", "wall_s"]
    df = df[[c for c in cols if c in df]]
    df.to_csv(RESULTS / "biols.csv", index=False)
    summary = df.drop(columns=["seed"]).groupby("case", sort=False).mean(numeric_only=True)
    summary.insert(0, "fits", df.groupby("case", sort=False).size())
    with open(RESULTS / "biols.md", "w") as fh:
        fh.write("# biols: results\n\nDefault setting (d=5, D=100, ER-1, linear projection, paired design), "
                 "`BiolsConfig()` defaults, linear decoder. Machine: shared 2-core CPU, no GPU (other jobs "
                 "running, so times are upper bounds). Means over seeds.\n\n")
        fh.write(summary.round(3).to_markdown() + "\n\n## Per fit\n\n" + df.round(3).to_markdown(index=False) + "\n")
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
