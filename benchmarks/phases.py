"""Time and memory of each phase of one scaling fit, in one process, as ``latentscm fit`` runs it.

Fits the scaling cell of the given d (``benchmarks/scaling.py``: linear projection, ER-1, 100 multi-target
regimes x 100 paired rows, ``scaled_settings(d)``, seed 0) with ``fit``, then ``run_metrics``, the model
criticism and ``write_run``, and logs after every phase (start, SVI steps, draws, latent summaries, moment
check, metrics, log-likelihood tree and LOO, regime check, writing) the elapsed seconds, the process's
resident memory and its peak so far (``VmRSS``, ``ru_maxrss``). The persistent compilation cache is off.

Usage: ``taskset -c 0 python benchmarks/phases.py --d 200`` writes ``benchmarks/results/phases-d200.md``.
"""

from __future__ import annotations

import argparse
import functools
import os
import resource
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(Path(__file__).resolve().parent))  # the sibling scaling plan


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--d", type=int, default=200, help="a d of benchmarks/scaling.py's cells")
    args = parser.parse_args(argv)
    os.environ["LATENTSCM_JAX_CACHE"] = "off"
    from latentscm.cli import enable_compilation_cache

    enable_compilation_cache()  # the command line's XLA settings
    from scaling import cells

    import latentscm.criticism as crit
    import latentscm.inference.api as api
    import latentscm.inference.collapsed as collapsed
    import latentscm.runs as runs
    from latentscm.data import simulate

    start, lines = time.perf_counter(), []

    def log(what):
        rss = int([x for x in open("/proc/self/status") if x.startswith("VmRSS")][0].split()[1]) / 1024
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        lines.append(f"| {time.perf_counter() - start:.1f} | {what} | {rss:.0f} | {peak:.0f} |")
        print(lines[-1], flush=True)

    def wrap(module, name):
        f = getattr(module, name)

        @functools.wraps(f)
        def logged(*a, **k):
            log(f"start {name}")
            out = f(*a, **k)
            log(f"end {name}")
            return out

        setattr(module, name, logged)

    for name in ("build_collapsed", "solve", "draw", "latent_summaries"):
        wrap(collapsed, name)
    wrap(api, "moment_problems")
    wrap(crit, "loo_metrics")
    wrap(crit, "regime_check")
    cell = next(c for c in cells() if c.d == args.d)
    train, test = simulate(cell.simulation(), 0)
    log("simulated")
    post = api.fit(train, "collapsed", config=cell.config, seed=0, progress=False)
    log("fit returned")
    metrics = runs.run_metrics(post, train, test, seed=0)
    log("run_metrics")
    criticism = crit.criticise(post, train)
    log("criticise (log-likelihood tree, LOO, regime check)")
    runs.write_run(ROOT / "benchmarks" / "_work" / f"phases-d{args.d}", post, metrics, train, criticism=criticism)
    log("write_run")
    text = (f"# Phases of the d = {args.d} scaling fit (seed 0)\n\n"
            f"Written by `benchmarks/phases.py --d {args.d}` on {time.strftime('%Y-%m-%d %H:%M')} UTC; settings "
            f"{cell.config}; E-SHD {metrics['e_shd']:.3g}, AUROC {metrics['auroc']:.3f}, MCC {metrics['mcc']:.4f}.\n\n"
            "| seconds | phase | RSS MB | peak RSS MB |\n|---:|---|---:|---:|\n" + "\n".join(lines) + "\n")
    out = ROOT / "benchmarks" / "results" / f"phases-d{args.d}.md"
    out.write_text(text)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
