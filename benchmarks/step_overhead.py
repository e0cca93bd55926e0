"""Compile time and step time of the SVI step of ``latentscm run`` (the default problem, ``collapsed``).

Builds the step exactly as ``fit_collapsed`` does (``build_collapsed`` under x64, ``svi.make_step``, chunks
of 100 steps), with the command line's XLA setting (``enable_compilation_cache``: backend optimisation level 1)
and no persistent cache, then reports as JSON

* ``trace_lower_s`` and ``compile_s`` of the 100-step program, its HLO size and while loops;
* ``step_ms``: per-step time of ``--repeats`` chunks after the first (medians in ``step_ms_median``);
* ``fit_ms_per_step``: the mean over a whole 1000-step run from the start (the Bethe permanent's loop runs
  longer early in a fit, so this is what a fit pays);
* the loss trace and final parameters of that run in ``OUT.npz``, to compare two versions' numbers.

``--ablate hungarian,bethe,sinkhorn`` swaps those parts for stand-ins of negligible cost (wrong numbers;
for attributing time only). A/B against another version: put its ``latentscm`` first on ``PYTHONPATH``,
e.g. ``git archive main latentscm | tar -x -C /tmp/base`` then
``PYTHONPATH=/tmp/base taskset -c 1 .venv/bin/python benchmarks/step_overhead.py /tmp/base-1``
(results: ``benchmarks/results/step-overhead.md``).
"""

from __future__ import annotations

import argparse
import json
import os
import time

os.environ["LATENTSCM_JAX_CACHE"] = "off"
from latentscm.cli import enable_compilation_cache  # noqa: E402

enable_compilation_cache()  # before JAX starts: XLA's optimisation level as the command line sets it

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

import latentscm.models.permutation as permutation  # noqa: E402
from latentscm.data import SimulationConfig, simulate  # noqa: E402
from latentscm.inference.collapsed import CollapsedConfig, build_collapsed  # noqa: E402
from latentscm.inference.svi import init, make_step, seed_keys  # noqa: E402
from latentscm.models.priors import parse_priors  # noqa: E402

STANDINS = {
    "hungarian": lambda s: jax.nn.one_hot(jnp.argmax(jax.lax.stop_gradient(s), -1), s.shape[-1], dtype=s.dtype),
    "bethe": lambda log_m, **_: jnp.sum(log_m * jnp.eye(log_m.shape[-1]), (-2, -1)),
    "sinkhorn": lambda log_alpha, n_iters=20: jax.nn.softmax(log_alpha, -1),
}
NAMES = {"hungarian": "hungarian", "bethe": "log_bethe_permanent", "sinkhorn": "sinkhorn"}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("out", help="stem of the output files OUT.json and OUT.npz")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--ablate", default="", help="comma-separated: hungarian, bethe, sinkhorn")
    parser.add_argument("--d", type=int, default=None,
                        help="instead of the default job, the scaling problem with d latents (benchmarks/scaling.py: "
                             "D = 100, paired, 100 multi-target regimes x 100 rows) under scaled_settings(d)")
    parser.add_argument("--chunks", type=int, default=None, help="chunks of 100 steps run from the start (default: "
                                                                 "the whole fit)")
    args = parser.parse_args()
    for part in filter(None, args.ablate.split(",")):
        setattr(permutation, NAMES[part], STANDINS[part])
    chunk = 100
    if args.d is None:
        train, _ = simulate(SimulationConfig(), 0)
        config = CollapsedConfig()
    else:
        from latentscm.inference.collapsed import scaled_settings

        train, _ = simulate(SimulationConfig(d=args.d, D=100, graph="er", edges_per_node=1.0, targets="multi",
                                             n_regimes=100, rows_per_regime=100, n_pairs=10000), 0)
        config = CollapsedConfig(**scaled_settings(args.d))
    with jax.enable_x64(True):
        problem = build_collapsed(train, config, parse_priors(None), 0).problem
        state = init(seed_keys(0, 3 + config.num_restarts)[0], problem.params, problem.optimizer)
        step = make_step(problem.loss_fn(), problem.optimizer, problem.schedule)
        t0 = time.perf_counter()
        lowered = step.lower(state, problem.data, chunk)
        t1 = time.perf_counter()
        compiled = lowered.compile()
        t2 = time.perf_counter()
        hlo = compiled.as_text()
        s, losses, chunk_ms = state, [], []
        for _ in range(args.chunks or config.steps // chunk):  # the whole run from the start: numbers and fit-average time
            a = time.perf_counter()
            s, info = compiled(s, problem.data)
            losses.append(np.asarray(info.loss))
            chunk_ms.append((time.perf_counter() - a) / chunk * 1e3)
        final = {jax.tree_util.keystr(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(s.params)}
        step_ms = []
        for _ in range(args.repeats):  # further chunks from the end state
            a = time.perf_counter()
            s, _ = compiled(s, problem.data)
            jax.block_until_ready(s)
            step_ms.append((time.perf_counter() - a) / chunk * 1e3)
    losses = np.concatenate(losses)
    np.savez(args.out + ".npz", losses=losses, **final)
    result = {"trace_lower_s": t1 - t0, "compile_s": t2 - t1, "hlo_lines": hlo.count("\n"),
              "while_loops": hlo.count(" while("), "step_ms_median": float(np.median(step_ms)), "step_ms": step_ms,
              "fit_ms_per_step": float(np.mean(chunk_ms)), "chunk_ms": chunk_ms, "final_loss": losses[-1].tolist(),
              "ablate": args.ablate, "d": args.d}
    with open(args.out + ".json", "w") as fh:
        json.dump(result, fh)
    print(json.dumps({k: v for k, v in result.items() if k not in ("step_ms", "chunk_ms")}))


if __name__ == "__main__":
    main()
