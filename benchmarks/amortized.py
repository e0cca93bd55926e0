"""Benchmark of the ``amortized`` method.

Case set ``mlp`` (issue acceptance: MLP projection): ``simulate(SimulationConfig(projection="mlp"), seed)``
(paired design, d=5, D=100, ER-1, 2000 pairs in 20 multi-target regimes, Gaussian values of scale 2;
4000 training rows, 500 held-out rows in 5 unseen regimes), default ``AmortizedConfig`` (MLP decoder,
order learned). Acceptance: mean E-SHD <= 1, AUROC >= 0.95, MCC >= 0.9.

Case set ``pairs`` (issue 3: what the data can tell): the same paired problem with the linear projection
(``decoder = "linear"``) and the MLP projection (``decoder = "mlp"``), each fitted three ways: rows
independent (``-nopairs``), ``use_pairs = true`` (``-pairs``), and every intervention value hidden (NaN
where targeted) with ``unknown_values = "latent"`` (``-hidden``). ``mcc_b`` is the MCC over the
intervened twins (rows b of the pairs) only.

Fits run in this process, one after the other (``seconds`` is the fit, compilation included;
``wall_s`` adds the metrics and the held-out NLL). Rows of a case set replace that set's earlier rows
in ``benchmarks/results/amortized.csv``; other rows are kept. Each fit is written as it finishes.

Usage: ``python benchmarks/amortized.py [--set mlp|pairs] [--seeds 0 1 2] [--steps N] [--cases ...]``
writes ``benchmarks/results/amortized.{csv,md}``.
"""

from __future__ import annotations

import argparse
import os
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
COLS = ["set", "case", "seed", "d", "D", "n", "e_shd", "e_shd_double", "auroc", "auprc", "mcc", "mcc_b", "edge_rmse",
        "heldout_nll", "order_proposal_ok", "seconds", "wall_s", "load"]
NOTES = {
    "mlp": "Acceptance (mean E-SHD <= 1, AUROC >= 0.95, MCC >= 0.9): met on all five seeds. The only non-zero "
           "E-SHD (seed 2, 0.025) is 5 of 200 draws with one extra/missing edge. For comparison, the linear "
           "latent estimate of `initialise.py` on the same data has MCC 0.89-0.95 and its order proposal E-SHD "
           "1-8; the intervention-supervised encoder pretraining alone gives MCC 0.999 and a correct order on "
           "all seeds (see docs/amortized.md). Fit times are inflated: the machine's load average was 5-8 "
           "during the runs.",
    "pairs": "Pairs do not help (structure already at the ceiling; held-out NLL worse: the paired fit settles "
             "with an inflated observation noise), and hiding every intervention value loses the latents' "
             "labels (empty graph). The reading of these numbers and the diagnosis: docs/amortized.md "
             "(Pairs and unknown values). `mlp-nopairs` is the `mlp` set's configuration rerun under the "
             "same load.",
}
PAIR_CASES = [f"{p}-{v}" for p in ("linear", "mlp") for v in ("nopairs", "pairs", "hidden")]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--set", choices=("mlp", "pairs"), default="mlp")
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: 0-4 (mlp), 0-2 (pairs)")
    parser.add_argument("--cases", nargs="+", default=None, choices=PAIR_CASES, help="pairs set: a subset")
    parser.add_argument("--steps", type=int, default=None, help="override AmortizedConfig.steps")
    args = parser.parse_args(argv)
    seeds = args.seeds or ([0, 1, 2, 3, 4] if args.set == "mlp" else [0, 1, 2])
    cases = ["mlp"] if args.set == "mlp" else (args.cases or PAIR_CASES)
    from latentscm.data import Dataset, SimulationConfig, simulate
    from latentscm.inference import fit
    from latentscm.metrics import mcc
    from latentscm.runs import run_metrics

    extra = {} if args.steps is None else {"steps": args.steps}
    old = pd.read_csv(RESULTS / "amortized.csv") if (RESULTS / "amortized.csv").exists() else pd.DataFrame()
    if len(old) and "set" not in old:
        old.insert(0, "set", "mlp")
    keep = old[(old["set"] != args.set) | (~old["case"].isin(cases))] if len(old) else old
    records = []
    for case in cases:
        projection = "mlp" if case.startswith("mlp") else "linear"
        config = dict(extra)
        if args.set == "pairs":
            config |= {"decoder": projection, "use_pairs": case.endswith("-pairs"),
                       "unknown_values": "latent" if case.endswith("-hidden") else "error"}
        for seed in seeds:
            train, test = simulate(SimulationConfig(projection=projection), seed)
            data = train
            if case.endswith("-hidden"):
                values = np.where(train.targets > 0, np.nan, train.values)
                data = Dataset.from_arrays(train.x, train.targets, values, regime=train.regime, pair=train.pair,
                                           z=train.z, weights=train.weights)
            load = os.getloadavg()[0]
            start = time.perf_counter()
            posterior = fit(data, "amortized", config=config, seed=seed, progress=False)
            row = run_metrics(posterior, train, test, seed=seed)
            b = np.flatnonzero(train.targets.sum(1) > 0)  # the intervened twins (rows b of the pairs)
            row["mcc_b"] = float(mcc(posterior.latent_mean[b], train.z[b]))
            row["wall_s"] = round(time.perf_counter() - start, 1)
            row["load"] = round((load + os.getloadavg()[0]) / 2, 1)
            row["order_proposal_ok"] = _order_consistent(posterior.info["proposal_order"], train.weights)
            records.append({"set": args.set, "case": case, **row})
            print(records[-1], flush=True)
            _write(pd.concat([keep, pd.DataFrame(records)], ignore_index=True))


def _write(df):
    df = df[[c for c in COLS if c in df]]
    RESULTS.mkdir(parents=True, exist_ok=True)
    df.to_csv(RESULTS / "amortized.csv", index=False)
    with open(RESULTS / "amortized.md", "w") as fh:
        fh.write("# amortized: results\n\nMachine: 2-core CPU shared with other jobs, no GPU; `load` is the "
                 "1-minute load average around each fit (timings are noisy). Means over seeds; `heldout_nll` "
                 "is exact for the linear decoder and the importance-sampled estimate (encoder proposal) for "
                 "the MLP one; `order_proposal_ok` says whether the data-driven order proposal was consistent "
                 "with the true DAG. Written by `python benchmarks/amortized.py --set mlp|pairs`.\n")
        for name, part in df.groupby("set", sort=False):
            summary = part.drop(columns=["set", "seed"]).groupby("case", sort=False).mean(numeric_only=True)
            summary.insert(0, "fits", part.groupby("case", sort=False).size())
            fh.write(f"\n## Set `{name}`: seeds {sorted(set(part['seed']))}\n\n"
                     + summary.dropna(axis=1, how="all").round(3).to_markdown() + "\n\n" + NOTES.get(name, "")
                     + "\n")
        fh.write("\n## Per fit\n\n" + df.round(3).to_markdown(index=False) + "\n")


def _order_consistent(order, weights):
    """True when every true edge i -> j has i before j in ``order``."""
    pos = {int(node): p for p, node in enumerate(order)}
    d = len(order)
    return bool(all(pos[i] < pos[j] for i in range(d) for j in range(d) if weights[i, j] != 0))


if __name__ == "__main__":
    main()
