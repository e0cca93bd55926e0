"""How often the unknown-target start's rival warning fires, against the fits' measured E-SHD.

For each unknown-target cell of the identification benchmark (targets hidden, observational regime
labelled; ``benchmarks/identification.py``), rerun only the start's EM search
(:func:`latentscm.inference.targets.search_targets`, the same data and seed as the fit) and record its
``rival``: an EM end within ``RIVAL_NATS`` of the best bound whose latents match the best's below
``RIVAL_MCC``, which ``collapsed`` reports as a diagnostic. Beside it, the cell's fit metrics from
``benchmarks/results/identification-targets-{generator}.csv`` (the warning does not change the fit).

Usage::

    python benchmarks/target_rivals.py                  # both generators, a few minutes (one core each: taskset)
    python benchmarks/target_rivals.py --generators package
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from identification import GENERATORS, RESULTS, WORK, Cell, ensure_data, plan, write_warning_table  # noqa: E402

from latentscm.data import Dataset  # noqa: E402
from latentscm.inference.collapsed import CollapsedConfig  # noqa: E402
from latentscm.inference.identify import project  # noqa: E402
from latentscm.inference.targets import RIVAL_MCC, RIVAL_NATS, search_targets  # noqa: E402


def rival(cell: Cell, work: Path):
    ds = Dataset.load(ensure_data(cell, work))
    cfg = CollapsedConfig()  # the fit's defaults; the arguments as latentscm.inference.initialise passes them
    v = np.where(ds.targets > 0, ds.values, 0.0)
    y, _, _, s2 = project(ds.x, ds.d)
    y1 = np.c_[y, np.ones(len(y))]
    start = time.perf_counter()
    found = search_targets(y1, ds.targets, v, ds.target_unknown, ds.regime, rate=cfg.target_rate, tau=cfg.tau,
                           value_scale=cfg.value_scale, s2=s2, seed=cell.seed)
    gap, mcc, ends = found.rival if found.rival is not None else (np.nan, np.nan, np.nan)
    return {"warns": found.rival is not None, "rival_gap": gap, "rival_mcc": mcc, "em_ends": ends,
            "search_s": time.perf_counter() - start}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--generators", default=",".join(GENERATORS))
    p.add_argument("--out", default=str(RESULTS / "target-rivals"), help="stem: OUT-{generator}.csv / .md")
    args = p.parse_args(argv)
    for gen in args.generators.split(","):
        fits = pd.read_csv(RESULTS / f"identification-targets-{gen}.csv")
        rows = []
        for cell in plan("acceptance"):
            if cell.generator != gen or cell.given != "unknown":
                continue
            fit = fits[(fits["values"] == cell.values) & (fits["targets"] == cell.targets) & (fits.d == cell.d)
                       & (fits.seed == cell.seed) & (fits.given == "unknown")]
            row = {"generator": gen, "values": cell.values, "targets": cell.targets, "d": cell.d, "seed": cell.seed,
                   **rival(cell, WORK)}
            row |= {k: float(fit[k].iloc[0]) if len(fit) else np.nan for k in ("e_shd", "mcc", "target_auroc")}
            print(row, flush=True)
            rows.append(row)
        write_warning_table(pd.DataFrame(rows), Path(f"{args.out}-{gen}"), "The unknown-target start's rival warning",
                            f"Written by `benchmarks/target_rivals.py`: an EM end within {RIVAL_NATS:g} nats of the "
                            f"best with latents matching below MCC {RIVAL_MCC:g} warns.")


if __name__ == "__main__":
    main()
