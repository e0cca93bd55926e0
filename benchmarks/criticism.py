"""Model criticism (issue 12, item 3): what LOO and the regime check say, and what they cost.

Parts (``--parts``, default all):

``calibration``
    The regime check of posteriors built at the simulator's truth (no fitting: every draw is the true
    SCM and decoder) on 12 simulated data sets (d = 3, D = 10, 9 regimes each): under a correct model the
    p-values should be uniform; reported: quantiles, a Kolmogorov-Smirnov test, regimes that fail.
``default``
    ``collapsed`` with its defaults on the default problem (``SimulationConfig()``, seeds ``--seeds``),
    in this process: the time of :func:`latentscm.criticism.criticise` (log-likelihood, LOO, regime check)
    beside the fit's, the LOO numbers (per pair), the regime check.
``misspecified``
    The same for the MLP projection (``SimulationConfig(projection="mlp")``) fitted with ``collapsed``'s
    linear decoder: the check should fail.
``image-cost``
    The seconds of the log-likelihood and of the regime check at the image demo's shapes (4000 rows,
    D = 2500, 200 draws), with a hand-built posterior.

Writes ``benchmarks/results/criticism.{json,md}``. Run pinned: ``taskset -c 1 python benchmarks/criticism.py``.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
import warnings
from pathlib import Path

import numpy as np

RESULTS = Path(__file__).resolve().parent / "results"


def calibration():
    from scipy.stats import kstest

    from latentscm.criticism import regime_check
    from latentscm.data import SimulationConfig, simulate
    from latentscm.inference import Posterior
    from latentscm.inference.decoders import LinearDecoder

    cfg = SimulationConfig(d=3, D=10, n_pairs=400, n_regimes=8, rows_per_regime=50, n_test_regimes=3)
    p_mean, p_cov, failed = [], [], 0
    for seed in range(12):
        data, _ = simulate(cfg, seed)
        S = 40
        post = Posterior(method="truth", W=np.repeat(data.weights[None], S, 0),
                         noise_scales=np.repeat(data.noise_scales[None], S, 0), orders=np.tile(np.arange(3), (S, 1)),
                         decoder=LinearDecoder(np.repeat(data.projection[None], S, 0), np.zeros((S, 10)),
                                               np.full(S, cfg.obs_noise), value_scale=cfg.value_scale),
                         latent_mean=data.z, latent_scale=np.zeros_like(data.z), elbo=np.zeros(0), seconds=0.0,
                         tau=cfg.tau, info={"config": {"value_scale": cfg.value_scale}})
        check = regime_check(post, data, seed=seed)
        p_mean += list(check.p_mean)
        p_cov += list(check.p_cov)
        failed += int(check.failed.sum())
    q = [0.01, 0.05, 0.25, 0.5]
    return {"part": "calibration", "regimes": len(p_mean), "failed": failed,
            "p_mean_quantiles": dict(zip(map(str, q), np.quantile(p_mean, q).round(4).tolist())),
            "p_cov_quantiles": dict(zip(map(str, q), np.quantile(p_cov, q).round(4).tolist())),
            "ks_p_mean": float(kstest(p_mean, "uniform").pvalue), "ks_p_cov": float(kstest(p_cov, "uniform").pvalue)}


def image_cost():
    """Seconds of the log-likelihood (200 draws, per pair) and of the regime check at the image demo's shapes
    (``image_config("chemistry", d=5)``: 4000 rows, D = 2500), with a hand-built posterior (no fit)."""
    from latentscm.criticism import regime_check
    from latentscm.data import image_config, simulate
    from latentscm.inference import Posterior
    from latentscm.inference.decoders import LinearDecoder

    data, _ = simulate(image_config("chemistry", d=5), 0)
    S, rng = 200, np.random.default_rng(0)
    post = Posterior(method="hand-built", W=np.repeat(data.weights[None], S, 0),
                     noise_scales=np.repeat(data.noise_scales[None], S, 0), orders=np.tile(np.arange(5), (S, 1)),
                     decoder=LinearDecoder(0.01 * rng.normal(size=(S, 5, data.D)), np.full((S, data.D), 0.5), np.full(S, 0.05)),
                     latent_mean=data.z, latent_scale=data.z, elbo=np.zeros(0), seconds=0.0, tau=0.1)
    start = time.perf_counter()
    post.log_likelihood(data, by="pair")
    ll_s = time.perf_counter() - start
    start = time.perf_counter()
    regime_check(post, data)
    return {"part": "image-cost", "rows": data.N, "D": data.D, "draws": S, "log_likelihood_s": round(ll_s, 1),
            "regime_check_s": round(time.perf_counter() - start, 1)}


def fitted(part, seed, **sim):
    from latentscm.criticism import criticise
    from latentscm.data import SimulationConfig, simulate
    from latentscm.inference import fit
    from latentscm.inference.diagnostics import FitDiagnosticWarning

    train, test = simulate(SimulationConfig(**sim), seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FitDiagnosticWarning)
        post = fit(train, "collapsed", seed=seed, progress=False)
    fit_s = time.perf_counter() - start
    start = time.perf_counter()
    result = criticise(post, train)
    crit_s = time.perf_counter() - start
    return {"part": part, "seed": seed, "fit_s": round(fit_s, 1), "criticise_s": round(crit_s, 2),
            "heldout_nll": round(post.heldout_nll(test), 3), **result.metrics,
            "fit_diagnostics": len(post.diagnostics), "problems": result.problems}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--parts", default="calibration,default,misspecified,image-cost")
    parser.add_argument("--seeds", default="0,1")
    parser.add_argument("--report", action="store_true", help="only rewrite criticism.md from criticism.json")
    args = parser.parse_args(argv)
    if args.report:
        write_report(json.loads((RESULTS / "criticism.json").read_text()), args)
        return 0
    from latentscm.cli import enable_compilation_cache

    enable_compilation_cache()  # as `latentscm run` does
    seeds = [int(s) for s in args.seeds.split(",")]
    rows = []
    for part in args.parts.split(","):
        if part == "calibration":
            rows.append(calibration())
        elif part == "image-cost":
            rows.append(image_cost())
        else:
            sim = {"projection": "mlp"} if part == "misspecified" else {}
            rows += [fitted(part, seed, **sim) for seed in seeds]
        print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / "criticism.json"
    parts = {r["part"] for r in rows}
    old = [r for r in json.loads(path.read_text()) if r["part"] not in parts] if path.is_file() else []
    rows = old + rows  # parts not run this time are kept
    path.write_text(json.dumps(rows, indent=2) + "\n")
    write_report(rows, args)
    return 0


def write_report(rows, args):
    """``criticism.md``: one line per result, numbers to 4 significant digits."""
    def fmt(v):
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["# Model criticism (`benchmarks/criticism.py`)", "",
             f"`taskset -c 1 python benchmarks/criticism.py --seeds {args.seeds}` (2-core machine, one pinned core "
             "shared with other work, the persistent compilation cache warm; `fit_s`, `criticise_s` and the "
             "image part's times are seconds in one process)", ""]
    for row in rows:
        lines.append("- " + ", ".join(f"{k}: {fmt(v)}" for k, v in row.items()))
    (RESULTS / "criticism.md").write_text("\n".join(lines) + "\n")


if __name__ == "__main__":
    sys.exit(main())
