"""Benchmark of the ``mcmc`` method: exactness of the order sampler, and the default latent problem.

Cases
-----
exact-d4, exact-d5  decoder = identity (z observed), Normal(0, 1) edge prior, noise scales fixed at 1,
                    tau = 0.1; a chain 0 -> 1 -> ... with weights 0.5, 24 rows, a third of them intervening
                    on one random node (``latentscm.data.simulate.observed_chain``, as in the tests). The exact posterior
                    over all d! orders comes from :func:`latentscm.inference.mcmc_exact.exact_order_posterior`;
                    reported: total variation (TV) between it and the mcmc order frequencies (random start
                    orders, 4 chains).
default             the problem ``latentscm run`` simulates (paired, d=5, D=100, ER-1, linear projection, 2000
                    pairs, 20 regimes; rows taken as independent by mcmc), the method's default settings (4
                    vectorised chains, 500 warm-up + 1000 kept iterations, Laplace mass matrix): E-SHD, AUROC,
                    MCC, max R-hat and min bulk ESS of W, divergences, order acceptance, seconds.

Fits run in this process (``seconds`` is the whole fit: starts, compilation, the Laplace step, sampling, the
latent summaries and diagnostics). Usage: ``python benchmarks/mcmc_exact.py [--seeds 0 1 2] [--warmup 500
--samples 1000] [--skip-exact] [--name mcmc]`` writes ``benchmarks/results/<name>.{csv,md}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def _diag(post):
    keys = ("divergences", "max_rhat_W", "min_ess_W", "order_acceptance", "swap_acceptance",
            "relocation_acceptance", "mean_leapfrog_steps")
    return {k: post.info[k] for k in keys}


def exact_case(d, seed, num_samples, num_chains=4):
    from latentscm.data.simulate import observed_chain
    from latentscm.inference import fit
    from latentscm.inference.mcmc_exact import exact_order_posterior, order_total_variation

    data = observed_chain(d, 24, seed)
    orders, probs = exact_order_posterior(data.x, data.targets, data.values, 1.0, np.ones(d), 0.1)
    post = fit(data, "mcmc", priors={"edge_weight": {"dist": "normal", "scale": 1.0}}, seed=0, progress=False,
               config={"decoder": "identity", "fixed_noise_scales": (1.0,) * d, "num_warmup": 300,
                       "num_samples": num_samples, "num_chains": num_chains, "order_init": "random"})
    top = np.argsort(probs)[::-1][:3]
    freq = {tuple(o): 0 for o in orders[top]}
    for o in map(tuple, post.orders):
        if o in freq:
            freq[o] += 1
    return {"case": f"exact-d{d}", "seed": seed, "d": d, "draws": post.num_draws,
            "tv": order_total_variation(post.orders, orders, probs),
            "top_orders": "; ".join(f"{o.tolist()}: exact {probs[i]:.3f} / mcmc {freq[tuple(o)] / post.num_draws:.3f}"
                                    for i, o in zip(top, orders[top])),
            **_diag(post), "seconds": post.seconds}


def default_case(seed, warmup, samples):
    from latentscm.data import SimulationConfig, simulate
    from latentscm.inference import fit
    from latentscm.metrics import structure_metrics

    train, test = simulate(SimulationConfig(), seed)
    post = fit(train, "mcmc", seed=seed, progress=False,
               config={"num_warmup": warmup, "num_samples": samples})
    m = structure_metrics(post.W, train.weights, z_pred=post.latent_mean, z_true=train.z)
    return {"case": "default", "seed": seed, "d": train.d, "draws": post.num_draws,
            **{k: m[k] for k in ("e_shd", "e_shd_double", "auroc", "auprc", "mcc", "edge_rmse")},
            "heldout_nll": post.heldout_nll(test), **_diag(post), "max_rhat_noise_scale": post.info["max_rhat_noise_scale"],
            "seconds": post.seconds}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0], help="seeds of the default-setting runs")
    parser.add_argument("--warmup", type=int, default=500)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--skip-exact", action="store_true")
    parser.add_argument("--name", default="mcmc", help="results file stem under benchmarks/results")
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    RESULTS.mkdir(parents=True, exist_ok=True)
    records = []
    if not args.skip_exact:
        for d, seed, n in ((4, 0, 2000), (5, 0, 3000)):
            records.append(exact_case(d, seed, n))
            print(records[-1], flush=True)
    for seed in args.seeds:
        records.append(default_case(seed, args.warmup, args.samples))
        print(records[-1], flush=True)
    df = pd.DataFrame(records)
    from latentscm._io import atomic_write

    atomic_write(RESULTS / f"{args.name}.csv", lambda tmp: df.to_csv(tmp, index=False))
    text = (f"# mcmc: results\n\nMachine: {os.cpu_count()}-core CPU shared with two other engineers' jobs "
            f"(the run pinned to one core with `taskset -c 1`, load average 1-6 on the 2 cores), no GPU "
            f"({platform.machine()}): the seconds overstate a quiet machine's. 4 vectorised chains everywhere; "
            f"`seconds` is the whole fit including compilation. Default setting: {args.warmup} warm-up + "
            f"{args.samples} kept iterations per chain, Laplace mass matrix.\n\n")
    for case, part in df.groupby("case", sort=False):
        text += f"## {case}\n\n" + part.dropna(axis=1, how="all").round(4).to_markdown(index=False) + "\n\n"
    atomic_write(RESULTS / f"{args.name}.md", lambda tmp: Path(tmp).write_text(text))
    print(df.round(4).to_string())


if __name__ == "__main__":
    main()
