"""Exactness benchmark: every method's order posterior against exact enumeration at d = 3, 4, 5.

Problems (observed variables, ``decoder = "identity"``: x is z; :func:`latentscm.data.simulate.observed_chain`:
the chain 0 -> 1 -> ... with weights 0.5, unit noise, every third row intervening on one random node), three
per d, chosen by a fixed rule over seeds 0-99 so that they differ in ambiguity:

* ``sharp``: n = 60 rows, the first seed whose exact top order has probability >= 0.5;
* ``flat``: n = 24 rows, the first seed whose exact top order has probability <= 0.3 (d = 3: <= 0.45);
* ``mode-not-truth``: n = 30 rows, the first seed whose exact mode is not the generating order.

Model: Normal(0, 1) edge weights given the order, uniform orders. The exact posterior
(:func:`~latentscm.inference.mcmc_exact.exact_order_posterior`) fixes the noise scales at 1; the methods pin
them with a LogNormal(0, 0.01) prior (``collapsed`` has no fixed-noise option) or fix them (``mcmc``).

Methods, 4000 draws each: ``collapsed`` (default: order mixture), ``collapsed`` with
``order_posterior = "guide"`` (the guide's own order draws, the behaviour before the mixture), ``mcmc``
(4 chains x 1000 after 300 warm-up). ``amortized`` and ``biols`` have no identity decoder (their models
always carry a decoder with observation noise), so their posterior is not the enumerated one.

Reported: ``tv`` (total variation of the draws' order frequencies from the exact posterior), ``tv_floor``
(the Monte Carlo error: mean TV of 4000 exact i.i.d. draws over 200 replications, and its 95th percentile
``tv_floor_95``: a method at the floor is exact up to sampling), ``tv_weights`` (``collapsed``'s mixture
probabilities themselves, before resampling), the order mixture's largest PSIS k, and seconds (each fit in
this process, compilation included). Usage: ``python benchmarks/exactness.py [--d 3 4 5]`` writes
``benchmarks/results/exactness.{csv,md}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
DRAWS = 4000
PRIORS = {"edge_weight": {"dist": "normal", "scale": 1.0},
          "noise_scale": {"dist": "lognormal", "loc": 0.0, "scale": 0.01}}
RULES = {"sharp": (60, lambda top, mode_is_truth, d: top >= 0.5),
         "flat": (24, lambda top, mode_is_truth, d: top <= (0.45 if d == 3 else 0.3)),
         "mode-not-truth": (30, lambda top, mode_is_truth, d: not mode_is_truth)}


def pick_problem(d, kind):
    """(seed, dataset, orders, probs) of the first seed in 0-99 meeting ``kind``'s rule."""
    from latentscm.data.simulate import observed_chain
    from latentscm.inference.mcmc_exact import exact_order_posterior

    n, rule = RULES[kind]
    for seed in range(100):
        data = observed_chain(d, n, seed)
        orders, probs = exact_order_posterior(data.x, data.targets, data.values, 1.0, np.ones(d), 0.1)
        if rule(probs.max(), tuple(orders[np.argmax(probs)]) == tuple(range(d)), d):
            return seed, data, orders, probs
    raise RuntimeError(f"no seed in 0-99 makes a {kind!r} problem at d = {d}")


def tv_floor(probs, rng, reps=200):
    """Mean and 95th percentile of the TV of ``DRAWS`` i.i.d. draws from ``probs``."""
    tvs = [0.5 * np.abs(rng.multinomial(DRAWS, probs) / DRAWS - probs).sum() for _ in range(reps)]
    return float(np.mean(tvs)), float(np.percentile(tvs, 95))


def _fit(data, method, d, order_posterior=None):
    from latentscm.inference import fit

    if method == "mcmc":
        config = {"decoder": "identity", "fixed_noise_scales": (1.0,) * d, "num_warmup": 300,
                  "num_samples": DRAWS // 4, "num_chains": 4, "order_init": "random"}
        return fit(data, "mcmc", priors={"edge_weight": PRIORS["edge_weight"]}, seed=0, progress=False,
                   config=config)
    return fit(data, "collapsed", priors=PRIORS, seed=0, progress=False,
               config={"decoder": "identity", "num_draws": DRAWS, "order_posterior": order_posterior})


def one(d, kind, rng):
    from latentscm.inference.mcmc_exact import order_total_variation

    seed, data, orders, probs = pick_problem(d, kind)
    floor, floor95 = tv_floor(probs, rng)
    base = {"d": d, "problem": kind, "seed": seed, "rows": data.N, "exact_top": float(probs.max()),
            "exact_mode": str(orders[np.argmax(probs)].tolist()), "tv_floor": floor, "tv_floor_95": floor95}
    rows = []
    for label, method, op in (("collapsed", "collapsed", "auto"), ("collapsed (guide orders)", "collapsed", "guide"),
                              ("mcmc", "mcmc", None)):
        start = time.perf_counter()
        post = _fit(data, method, d, op)
        row = {**base, "method": label, "tv": order_total_variation(post.orders, orders, probs),
               "seconds": time.perf_counter() - start}
        mix = post.info.get("order_mixture")
        if mix:
            weights = dict.fromkeys(map(tuple, orders.tolist()), 0.0)
            for order, prob in mix["weights"]:
                weights[tuple(order)] = prob
            row |= {"tv_weights": 0.5 * float(np.abs(np.array(list(weights.values())) - probs).sum()),
                    "max_khat": mix["max_khat"], "orders_weighed": mix["orders_weighed"]}
        rows.append(row)
        print({k: (round(v, 4) if isinstance(v, float) else v) for k, v in row.items()}, flush=True)
    return rows


def _markdown(df):
    cols = ["d", "problem", "seed", "exact_top", "exact_mode", "method", "tv", "tv_floor", "tv_floor_95",
            "tv_weights", "max_khat", "orders_weighed", "seconds"]
    text = (f"# Exactness: order posteriors against enumeration\n\nMachine: {os.cpu_count()}-core CPU "
            f"({platform.machine()}), shared with other jobs (seconds overstate quiet-machine times; ratios "
            f"within one row group are fair). {DRAWS} draws per method; see `benchmarks/exactness.py` for the "
            "problems and the columns.\n\n")
    text += df[[c for c in cols if c in df]].round(4).to_markdown(index=False) + "\n\n"
    summary = df.groupby("method", sort=False).agg(mean_tv=("tv", "mean"), max_tv=("tv", "max"),
                                                   mean_floor=("tv_floor", "mean"), seconds=("seconds", "mean"))
    return text + "## By method\n\n" + summary.round(4).to_markdown() + "\n"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, nargs="*", default=[3, 4, 5])
    parser.add_argument("--problems", nargs="*", default=list(RULES), choices=list(RULES))
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore")
    rng = np.random.default_rng(0)
    records = [row for d in args.d for kind in args.problems for row in one(d, kind, rng)]
    df = pd.DataFrame(records)
    from latentscm._io import atomic_write

    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / "exactness.csv", lambda tmp: df.to_csv(tmp, index=False))
    atomic_write(RESULTS / "exactness.md", lambda tmp: Path(tmp).write_text(_markdown(df)))
    print(_markdown(df))


if __name__ == "__main__":
    main()
