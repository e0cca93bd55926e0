"""How often the moment search's rival-order diagnostic fires, against the fits' measured E-SHD.

For each known-target cell of the identification benchmark where the moment search runs (knockouts and
hidden values; ``benchmarks/identification.py``), rerun only the start's search
(:func:`latentscm.inference.identify.search`, the same data and seed as the fit) and
:func:`latentscm.inference.identify.rival_orders`: orders one move from the best within
``RIVAL_ORDER_NATS`` of it with another graph, which ``collapsed`` reports as a diagnostic. Beside it, the
cell's fit metrics from ``benchmarks/results/identification.csv`` (package simulator) and
``identification-independent.csv`` (the diagnostic does not change the fit). Paired cells: the start sees
the rows as iid (as the fit's start does), so its evidence is weaker than the paired likelihood's.

Usage::

    python benchmarks/order_rivals.py                      # every such cell, about 10 minutes on one core
    python benchmarks/order_rivals.py --d 10 --values hidden
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).parent))
from identification import RESULTS, WORK, ensure_data, plan, write_warning_table  # noqa: E402

from latentscm.data import Dataset  # noqa: E402
from latentscm.inference.collapsed import CollapsedConfig  # noqa: E402
from latentscm.inference.identify import RIVAL_ORDER_NATS, project, rival_orders, search  # noqa: E402

FITS = {"package": "identification.csv", "independent": "identification-independent.csv"}


def rival(cell, work):
    ds = Dataset.load(ensure_data(cell, work))
    cfg = CollapsedConfig()  # the fit's defaults, as latentscm.inference.initialise passes them
    v = np.where(ds.targets > 0, ds.values, 0.0)
    y, _, _, s2 = project(ds.x, ds.d)
    y1 = np.c_[y, np.ones(len(y))]
    start = time.perf_counter()
    _, H, order = search(y1, ds.targets, v, tau=cfg.tau, value_scale=cfg.value_scale, s2=s2, seed=cell.seed)
    search_s = time.perf_counter() - start
    found = rival_orders(y1, ds.targets, v, H, order, tau=cfg.tau, value_scale=cfg.value_scale, s2=s2)
    gap, edges, count = found if found is not None else (np.nan, [], 0)
    return {"warns": found is not None, "rival_gap": gap, "rivals": count, "contested_edges": len(edges),
            "search_s": search_s, "rival_s": time.perf_counter() - start - search_s}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--d", default=None, help="comma list of d")
    p.add_argument("--values", default="zero,hidden")
    p.add_argument("--out", default=str(RESULTS / "order-rivals"), help="stem: OUT.csv / OUT.md")
    args = p.parse_args(argv)
    ds = [int(d) for d in args.d.split(",")] if args.d else None
    fits = pd.concat([pd.read_csv(RESULTS / f) for f in FITS.values()])
    rows = []
    for cell in plan("acceptance"):
        if cell.given != "known" or cell.values not in args.values.split(",") or (ds and cell.d not in ds):
            continue
        fit = fits[(fits.generator == cell.generator) & (fits["values"] == cell.values) & (fits.design == cell.design)
                   & (fits.targets == cell.targets) & (fits.d == cell.d) & (fits.seed == cell.seed)]
        fit = fit[fit.get("given", pd.Series("known", index=fit.index)).fillna("known") == "known"]
        row = {"generator": cell.generator, "values": cell.values, "design": cell.design, "targets": cell.targets,
               "d": cell.d, "seed": cell.seed, **rival(cell, WORK)}
        row |= {k: float(fit[k].iloc[0]) if len(fit) else np.nan for k in ("e_shd", "mcc")}
        print(row, flush=True)
        rows.append(row)
        write_warning_table(pd.DataFrame(rows), Path(args.out), "The moment search's rival-order diagnostic",
                            f"Written by `benchmarks/order_rivals.py`: an order one move from the start's best, "
                            f"within {RIVAL_ORDER_NATS:g} nats of it, with another graph warns.")


if __name__ == "__main__":
    main()
