"""Benchmark on observed causal variables (decoder = identity, x = z): exactness and DiBS.

Parts
-----
exact     The d = 3 and d = 4 chains of ``benchmarks/mcmc_exact.py`` (24 rows, Normal(0, 1) edge prior,
          noise scales 1, tau = 0.1), whose posterior over orders is enumerated exactly by
          :func:`latentscm.inference.mcmc_exact.exact_order_posterior`. ``collapsed`` (SVI, identity decoder)
          runs with a LogNormal(0, 0.01) noise prior (noise scales pinned near the enumeration's known 1;
          SVI has no fixed-noise option), 4000 draws; the table gives the total variation (TV) between
          its order frequencies and the exact posterior, next to ``mcmc``'s (which conditions on the
          noise scales exactly). ``biols`` is not in this table: its model has a decoder with noise
          (no identity decoder), so its posterior is not the enumerated one.
dibs      Observed-variable SCMs (ER-1, d = 5 by default, weights and noise scales from the default
          generator, iid design, 500 rows over 20 multi-target regimes with Gaussian values), seeds
          0-2: ``collapsed`` and ``mcmc`` with the identity decoder against DiBS (``dibs-lib``,
          ``JointDiBS`` with its linear Gaussian model, ER prior with 1 edge per node, intervened nodes
          masked out of the likelihood through ``interv_mask`` -- the same perfect-intervention model).
          DiBS has one shared noise variance; it gets the true mean noise variance (favourable to it).
          Same data, same metrics (E-SHD, AUROC, AUPRC, edge RMSE from the posterior draws / DiBS's
          particles taken as equally weighted draws), same machine, one fit after another in this
          process (``seconds`` includes compilation).

Usage: ``python benchmarks/observed.py [--parts exact dibs] [--seeds 0 1 2] [--dims 5 10]``; needs
``pip install dibs-lib igraph scikit-learn imageio`` for the DiBS part (not a dependency of the package).
Writes ``benchmarks/results/observed.{csv,md}``.
"""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import time
import warnings
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def exact_rows():
    from latentscm.data.simulate import observed_chain as chain_data
    from latentscm.inference import fit
    from latentscm.inference.mcmc_exact import exact_order_posterior, order_total_variation

    rows = []
    for d, seed in ((3, 1), (4, 0)):
        data = chain_data(d, 24, seed)
        orders, probs = exact_order_posterior(data.x, data.targets, data.values, 1.0, np.ones(d), 0.1)
        top = np.argsort(probs)[::-1][:3]
        priors = {"edge_weight": {"dist": "normal", "scale": 1.0}}
        fits = {
            "mcmc": fit(data, "mcmc", priors=priors, seed=0, progress=False,
                        config={"decoder": "identity", "fixed_noise_scales": (1.0,) * d, "num_warmup": 300,
                                "num_samples": 1000 * (d - 2), "order_init": "random"}),
            "collapsed": fit(data, "collapsed", seed=0, progress=False,
                             priors={**priors, "noise_scale": {"dist": "lognormal", "loc": 0.0, "scale": 0.01}},
                             config={"decoder": "identity", "num_draws": 4000}),
        }
        for method, post in fits.items():
            freq = [float(np.mean(np.all(post.orders == orders[i], axis=1))) for i in top]
            rows.append({"part": "exact", "case": f"exact-d{d}", "method": method, "seed": seed, "d": d,
                         "tv": order_total_variation(post.orders, orders, probs),
                         "top_orders": "; ".join(f"{orders[i].tolist()}: exact {probs[i]:.3f} / {method} {f:.3f}"
                                                 for i, f in zip(top, freq)),
                         "seconds": post.seconds})
            print(rows[-1], flush=True)
    return rows


def observed_data(d, seed, n_rows=500, n_regimes=20):
    """(train, test) Datasets whose x are the latents of the default generator (D = d)."""
    from latentscm.data import Dataset, SimulationConfig, simulate

    cfg = SimulationConfig(d=d, D=d, design="iid", n_rows=n_rows, n_regimes=n_regimes,
                           rows_per_regime=n_rows // n_regimes, n_test_regimes=5)
    out = []
    for part in simulate(cfg, seed):
        out.append(Dataset.from_arrays(part.z, part.targets, part.values, z=part.z, weights=part.weights,
                                       noise_scales=part.noise_scales, meta={"observed": True, "d": d, "seed": seed}))
    return out


def _metrics(W_draws, W_true):
    from latentscm.metrics import edge_auprc, edge_auroc, edge_probabilities, edge_rmse, expected_shd

    probs = edge_probabilities(W_draws)
    adj = (np.asarray(W_true) != 0).astype(int)
    return {"e_shd": expected_shd(W_draws, W_true), "auroc": edge_auroc(probs, adj),
            "auprc": edge_auprc(probs, adj), "edge_rmse": edge_rmse(W_draws, W_true)}


def fit_dibs(train, seed, n_particles, steps):
    import jax
    from dibs.inference import JointDiBS
    from dibs.models import ErdosReniDAGDistribution, LinearGaussian

    d = train.d
    noise_var = float(np.mean(np.asarray(train.noise_scales) ** 2))
    model = JointDiBS(x=np.asarray(train.x, np.float32), interv_mask=np.asarray(train.targets > 0),
                      graph_model=ErdosReniDAGDistribution(d, n_edges_per_node=1),
                      likelihood_model=LinearGaussian(n_vars=d, obs_noise=noise_var))
    gs, thetas = model.sample(key=jax.random.PRNGKey(seed), n_particles=n_particles, steps=steps)
    return np.asarray(gs) * np.asarray(thetas)


def dibs_rows(dims, seeds, dibs_particles, dibs_steps):
    from latentscm.inference import fit

    rows = []
    for d in dims:
        for seed in seeds:
            train, test = observed_data(d, seed)
            for method in ("collapsed", "mcmc", "dibs"):
                start = time.perf_counter()
                if method == "dibs":
                    W = fit_dibs(train, seed, dibs_particles, dibs_steps)
                    extra = {}
                else:
                    post = fit(train, method, config={"decoder": "identity"}, seed=seed, progress=False)
                    W = post.W
                    extra = {"heldout_nll": post.heldout_nll(test)}
                    if method == "mcmc":
                        extra["max_rhat_W"] = post.info["max_rhat_W"]
                rows.append({"part": "dibs", "case": f"observed-d{d}", "method": method, "seed": seed, "d": d,
                             **_metrics(W, train.weights), **extra, "seconds": time.perf_counter() - start})
                print(rows[-1], flush=True)
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--parts", nargs="*", default=["exact", "dibs"], choices=["exact", "dibs"])
    parser.add_argument("--seeds", type=int, nargs="*", default=[0, 1, 2])
    parser.add_argument("--dims", type=int, nargs="*", default=[5])
    parser.add_argument("--dibs-particles", type=int, default=20)
    parser.add_argument("--dibs-steps", type=int, default=1000)
    args = parser.parse_args(argv)
    warnings.simplefilter("ignore", RuntimeWarning)
    if "dibs" in args.parts:
        try:
            import importlib
            importlib.import_module("dibs")
        except ImportError:
            parser.error("the dibs part needs dibs-lib: pip install dibs-lib igraph scikit-learn imageio")
    RESULTS.mkdir(parents=True, exist_ok=True)
    rows = []
    if "exact" in args.parts:
        rows += exact_rows()
    if "dibs" in args.parts:
        rows += dibs_rows(args.dims, args.seeds, args.dibs_particles, args.dibs_steps)
    df = pd.DataFrame(rows)
    if (RESULTS / "observed.csv").exists():  # keep the parts not rerun now
        old = pd.read_csv(RESULTS / "observed.csv")
        df = pd.concat([old[~old["part"].isin(args.parts)], df], ignore_index=True)
    from latentscm._io import atomic_write

    atomic_write(RESULTS / "observed.csv", lambda tmp: df.to_csv(tmp, index=False))
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    text = (f"# Observed causal variables (identity decoder): results\n\nMachine: {os.cpu_count()}-core CPU "
            f"({platform.machine()}), no GPU, shared with other jobs (`uptime` at the end: {load}). "
            f"DiBS: {args.dibs_particles} particles, {args.dibs_steps} steps. See the script's docstring for "
            "the set-up.\n\n")
    for part, group in df.groupby("part", sort=False):
        text += f"## {part}\n\n" + group.dropna(axis=1, how="all").round(4).to_markdown(index=False) + "\n\n"
        if part == "dibs":
            summary = group.groupby(["case", "method"], sort=False)[
                [c for c in ("e_shd", "auroc", "auprc", "edge_rmse", "seconds") if c in group]].mean()
            text += "### Means over seeds\n\n" + summary.round(4).to_markdown() + "\n\n"
    atomic_write(RESULTS / "observed.md", lambda tmp: Path(tmp).write_text(text))
    print(df.round(4).to_string())


if __name__ == "__main__":
    main()
