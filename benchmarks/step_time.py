"""Cost of one SVI step of ``collapsed`` against the reference design, and memory against N.

The reference design (the seed paper's code, the ``biols`` family) never integrates the latents out:
every step draws ``z`` from the SCM for each of 64 posterior draws and every row, by a Python loop
over the nodes in topological order, decodes every draw and scores ``x`` under a Gaussian. Our
``collapsed`` step scores the data through per-pattern sufficient statistics instead, so its cost does
not depend on N.

Both steps here are built from the same pieces, so that the *likelihood* is the only difference:

* the same NumPyro sites and priors (``sample_graph``: ``edge_weight``, ``noise_scale``, ``P``;
  ``decoder_weight``, ``decoder_bias``, ``obs_scale``), the same guide
  (``inference.guide.mean_field_guide``: mean-field Gaussians plus ``q(P | L, sigma)`` with Hungarian
  samples (the assignment inside the compiled step) and straight-through Gumbel-Sinkhorn gradients), the same
  ELBO estimator (``inference.svi.elbo_loss``: ``Trace_ELBO``'s, vectorised particles), the same Adam optimiser and the same engine
  (``inference.svi.make_step``: steps in a jitted ``lax.scan``), the same data-driven start;
* ``ours``: the model is ``models.collapsed.collapsed_model`` on the sufficient statistics, with the
  shipped settings (4 particles x 2 restarts) in float32 (``precision = "float32"``: centred
  statistics, ``models.collapsed.centered_log_likelihood``) and in float64 (``precision = "float64"``:
  the raw-moment statistics under x64), and also with 64 particles x 1 restart in float64 (draws
  matched to the reference);
* ``reference``: the model draws standard-normal noise (N, d) from the model's PRNG key (the
  ``z`` site of model and guide coincide in this design, so their log-densities cancel and only this
  reparameterised draw remains), builds ``z`` column by column in a Python loop over the d positions
  of the sampled order (``z[:, j] = v_j + tau eta_j`` where node j is intervened, else
  ``z @ W[:, j] + sigma_j eps_j``; the loop is unrolled inside ``jit``), decodes ``x_hat = z A + b``
  for all rows and scores ``Normal(x_hat, s).log_prob(x)``; 64 particles (draws), 1 restart, float32
  (the reference code's precision, faster than float64 here).

Every step time is the median over ``--repeats`` timings of a jitted chunk of several steps
(divided by its length), the two implementations interleaved in the same process after compilation.
Memory: XLA's compiled memory analysis of one step (temporary buffers plus arguments) for N in
``--memory-n``, and the peak resident memory (``VmHWM``) of a whole ``collapsed`` fit, one fresh
process per N.

Usage: ``taskset -c 0 python benchmarks/step_time.py [--quick]`` writes
``benchmarks/results/step_time.{md,csv}`` and ``step_time.png``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax

from latentscm._io import atomic_write
from latentscm.data import SimulationConfig, simulate
from latentscm.inference.collapsed import CollapsedConfig, build_collapsed
from latentscm.inference.guide import initial_params, mean_field_guide, site_specs
from latentscm.inference.initialise import initialise
from latentscm.inference.svi import SVIProblem, geometric_schedule, make_step
from latentscm.inference.svi import init as svi_init
from latentscm.models.collapsed import centered_stats, make_units, unit_stats
from latentscm.models.priors import parse_priors
from latentscm.models.scm import sample_graph

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"


def problem(n_rows, d=5, D=100, seed=0):
    """The default problem (paired, 20 multi-target regimes) with ``n_rows`` rows (n_rows / 2 pairs)."""
    pairs = n_rows // 2
    cfg = SimulationConfig(d=d, D=D, n_pairs=pairs, n_regimes=20, rows_per_regime=pairs // 20)
    return simulate(cfg, seed=seed)[0]


def _compiled(problem):
    """(step_fn, state) of an SVI problem, as :func:`latentscm.inference.svi.solve` builds them."""
    return (make_step(problem.loss_fn(), problem.optimizer, problem.schedule),
            svi_init(jax.random.PRNGKey(0), problem.params, problem.optimizer))


def build_ours(dataset, particles=4, restarts=2, precision="float64"):
    """(step_fn, state, data) of the shipped collapsed step (``build_collapsed``; call under
    ``jax.enable_x64(precision == "float64")``)."""
    config = CollapsedConfig(num_particles=particles, num_restarts=restarts, precision=precision, value_scale=2.0)
    problem = build_collapsed(dataset, config, parse_priors(None), 0).problem
    return (*_compiled(problem), problem.data)


def reference_model(temperature, data, *, priors, tau=0.1):
    """The reference design's model: z drawn from the SCM by a per-node loop, every draw decoded."""
    x, targets, values = data
    N, d = targets.shape
    D = x.shape[1]
    W, sigma, P = sample_graph(d, priors["edge_weight"], priors["noise_scale"])
    A = priors["decoder_weight"].sample("decoder_weight", (d, D))
    b = priors["decoder_bias"].sample("decoder_bias", (D,))
    s = priors["obs_scale"].sample("obs_scale", ())
    k_eps, k_eta = jax.random.split(numpyro.prng_key())
    eps = jax.random.normal(k_eps, (N, d), x.dtype)
    eta = jax.random.normal(k_eta, (N, d), x.dtype)
    order = jnp.argmax(P, axis=-1)  # order[p]: the node at position p
    z = jnp.zeros((N, d), x.dtype)
    for p in range(d):  # ancestral sampling, one node at a time (the seed paper's loop)
        j = order[p]
        observational = z @ W[:, j] + sigma[j] * eps[:, j]
        z = z.at[:, j].set(jnp.where(targets[:, j] > 0, values[:, j] + tau * eta[:, j], observational))
    x_hat = z @ A + b
    numpyro.factor("x", jnp.sum(dist.Normal(x_hat, s).log_prob(x)))


def build_reference(dataset, particles=64, restarts=1):
    """(step_fn, state, data) of the reference design's step, float32: its model with the shipped guide,
    start, optimiser and ELBO estimator."""
    priors = parse_priors(None)
    data = (jnp.asarray(dataset.x, jnp.float32), jnp.asarray(dataset.targets, jnp.float32),
            jnp.asarray(np.nan_to_num(dataset.values), jnp.float32))

    def model(temperature, data):
        reference_model(temperature, data, priors=priors)

    config = CollapsedConfig(num_particles=particles, num_restarts=restarts)
    with jax.enable_x64(True):  # as fit: the data-driven start in float64 whatever the step's precision
        ini = initialise(dataset.x, dataset.targets, dataset.values)
    specs = site_specs(model, 1.0, data)
    guide = mean_field_guide(specs, dataset.d, learn_order=True, gumbel_scale=config.gumbel_scale)
    params = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32),
                          initial_params(specs, ini, dataset.d, config, np.random.default_rng(0)))
    problem = SVIProblem(model, guide, params, optax.adam(config.learning_rate),
                         geometric_schedule(*config.temperature, config.steps), data, particles)
    return (*_compiled(problem), data)


class Timed:
    """A compiled step and the chunk length it is timed with; ``x64`` says which precision it runs in."""

    def __init__(self, name, build, dataset, chunk, x64, **kw):
        self.name, self.chunk, self.x64 = name, chunk, x64
        with jax.enable_x64(x64):
            step, self.state, self.data = build(dataset, **kw)
            t0 = time.perf_counter()
            self.compiled = step.lower(self.state, self.data, chunk).compile()
            self.compile_s = time.perf_counter() - t0
        mem = self.compiled.memory_analysis()
        self.temp_bytes = getattr(mem, "temp_size_in_bytes", float("nan"))
        self.arg_bytes = getattr(mem, "argument_size_in_bytes", float("nan"))
        self.times = []
        self.time_once()  # warm-up, not recorded
        self.times = []

    def time_once(self):
        with jax.enable_x64(self.x64):
            t0 = time.perf_counter()
            self.state, info = self.compiled(self.state, self.data)
            jax.block_until_ready(info.loss)
            self.times.append((time.perf_counter() - t0) / self.chunk)
        if not np.all(np.isfinite(np.asarray(info.loss))):
            raise FloatingPointError(f"{self.name}: non-finite loss while timing")


def step_ratio(n_rows, repeats, log=print, matched=True):
    """Median seconds per step of each variant at ``n_rows`` rows; rows of the results table.

    matched: also time ``collapsed`` with the reference's 64 particles (one more compilation)."""
    dataset = problem(n_rows)
    variants = [Timed("collapsed (shipped: 4 particles x 2 restarts, float32)", build_ours, dataset, 50, False,
                      precision="float32"),
                Timed("collapsed (shipped: 4 particles x 2 restarts, float64)", build_ours, dataset, 50, True)]
    if matched:
        variants.append(Timed("collapsed (64 particles x 1 restart, float64)", build_ours, dataset, 20, True,
                              particles=64, restarts=1))
    variants.append(Timed("reference design (64 draws x 1 restart, float32)", build_reference, dataset, 3, False))
    for v in variants:
        log(f"  compiled {v.name}: {v.compile_s:.1f} s")
    for r in range(repeats):  # interleaved
        for v in variants:
            v.time_once()
        log(f"  repeat {r + 1}/{repeats}: " + ", ".join(f"{v.times[-1] * 1e3:.2f} ms" for v in variants))
    ref = np.median(variants[-1].times)
    return [{"variant": v.name, "N": n_rows, "median_ms": 1e3 * np.median(v.times),
             "min_ms": 1e3 * np.min(v.times), "max_ms": 1e3 * np.max(v.times), "repeats": len(v.times),
             "steps_per_timing": v.chunk, "ratio_vs_reference": ref / np.median(v.times),
             "xla_temp_mb": v.temp_bytes / 2**20, "xla_args_mb": v.arg_bytes / 2**20} for v in variants]


def profile_step(n_rows, repeats, log=print):
    """What one shipped step costs, by part, in float32 and float64: the whole step and, timed alone on
    the same batch (2 restarts x 4 particles = 8 parameter sets, each part run 50 times in one jitted
    scan), the likelihood with its gradient, and the guide's order parts: the Hungarian assignment
    (in the compiled program since issue 13; a ``jax.pure_callback`` to scipy before), 20 Sinkhorn iterations
    with their gradient, the Bethe permanent (``log q(P)``: 10 + up to 30 x 10 Sinkhorn iterations), and the
    whole order sample + ``log q`` with gradient."""
    from latentscm.models.collapsed import centered_log_likelihood, collapsed_log_likelihood
    from latentscm.models.permutation import GumbelSinkhornPermutation, hungarian, log_bethe_permanent, sinkhorn

    dataset = problem(n_rows)
    d, D, batch, inner = dataset.d, dataset.D, 8, 50
    compiled = {}
    for precision, x64 in (("float32", False), ("float64", True)):
        with jax.enable_x64(x64):
            dt = jnp.float64 if x64 else jnp.float32
            units = make_units(dataset.x, dataset.targets, dataset.values)[0]
            stats = jax.tree.map(jnp.asarray, centered_stats(units, np.float32) if not x64 else unit_stats(units))
            ll = centered_log_likelihood if not x64 else collapsed_log_likelihood
            ini_rng = np.random.default_rng(0)
            with jax.enable_x64(True):
                ini = initialise(dataset.x, dataset.targets, dataset.values)
            params = {"W": np.broadcast_to(ini.W, (batch, d, d)), "sigma": np.broadcast_to(ini.sigma, (batch, d)),
                      "A": ini.A + 0.01 * ini_rng.normal(size=(batch, d, D)), "b": np.broadcast_to(ini.b, (batch, D)),
                      "s": np.full(batch, ini.obs_scale)}
            params = {k: jnp.asarray(v, dt) for k, v in params.items()}
            logits = jnp.asarray(4 * np.eye(d)[ini.order] + ini_rng.normal(size=(batch, d, d)), dt)
            keys = jax.random.split(jax.random.PRNGKey(0), batch)

            def lik(p):
                f = jax.value_and_grad(lambda q: ll(stats, q["W"], q["sigma"], q["A"], q["b"], q["s"], 0.1, 2.0))
                return jax.vmap(f)(p)

            def order(lg):
                def one(lg, k):
                    dist_ = GumbelSinkhornPermutation(lg, 0.5)
                    P = dist_.rsample(k)
                    return jnp.sum(P * jnp.arange(d * d, dtype=dt).reshape(d, d)) + dist_.log_prob(P)
                return jax.vmap(jax.value_and_grad(one))(lg, keys)

            parts = {"likelihood + gradient": (lik, params), "order sample + log q + gradient": (order, logits),
                     "Hungarian assignment": (hungarian, logits),
                     "Sinkhorn (20 iterations) + gradient": (jax.grad(lambda lg: jnp.sum(sinkhorn(lg) ** 2)), logits),
                     "Bethe permanent (log q)": (log_bethe_permanent, logits)}
            for name, (fn, x) in parts.items():
                def run(x, fn=fn):
                    def body(c, _):
                        out = fn(c)
                        shift = 1e-30 * sum(jnp.sum(a) for a in jax.tree.leaves(out)).astype(dt)
                        return jax.tree.map(lambda a: a + shift, c), None
                    return jax.lax.scan(body, x, None, length=inner)[0]
                compiled[(precision, name)] = (jax.jit(run).lower(x).compile(), x, x64)
    steps = {p: Timed(p, build_ours, dataset, 50, p == "float64", precision=p) for p in ("float32", "float64")}
    times = {key: [] for key in compiled}
    for _ in range(repeats):  # interleaved
        for precision, v in steps.items():
            v.time_once()
        for key, (f, x, x64) in compiled.items():
            with jax.enable_x64(x64):
                t0 = time.perf_counter()
                jax.block_until_ready(f(x))
                times[key].append((time.perf_counter() - t0) / inner)
    rows = [{"precision": p, "part": "whole step (shipped settings)", "median_ms": 1e3 * np.median(v.times),
             "min_ms": 1e3 * np.min(v.times)} for p, v in steps.items()]
    rows += [{"precision": p, "part": name, "median_ms": 1e3 * np.median(t), "min_ms": 1e3 * np.min(t)}
             for (p, name), t in times.items()]
    for r in rows:
        log(f"  {r['precision']} {r['part']}: {r['median_ms']:.3f} ms (min {r['min_ms']:.3f})")
    return rows


def step_memory(n_rows):
    """XLA memory analysis (MB) of one step of ours (shipped) and of the reference at ``n_rows`` rows."""
    dataset = problem(n_rows)
    out = {}
    for key, build, x64 in (("ours", build_ours, True), ("reference", build_reference, False)):
        with jax.enable_x64(x64):
            step, state, data = build(dataset)
            mem = step.lower(state, data, 1).compile().memory_analysis()
        out[f"{key}_step_temp_mb"] = mem.temp_size_in_bytes / 2**20
        out[f"{key}_step_args_mb"] = mem.argument_size_in_bytes / 2**20
    return out


def _memory_row(row):
    """The step-memory columns of a timing row of the shipped collapsed step or the reference."""
    key = "ours" if row["variant"] == "collapsed (shipped: 4 particles x 2 restarts, float64)" else "reference"
    return {f"{key}_step_temp_mb": row["xla_temp_mb"], f"{key}_step_args_mb": row["xla_args_mb"]}


_FIT_CHILD = r"""
import json, sys, time
from latentscm.data import SimulationConfig, simulate
from latentscm.inference import fit
n, steps = int(sys.argv[1]), int(sys.argv[2])
pairs = n // 2
train = simulate(SimulationConfig(n_pairs=pairs, n_regimes=20, rows_per_regime=pairs // 20), seed=0)[0]
def status(key):  # /proc: VmHWM is this process's peak (ru_maxrss would carry the parent's over exec)
    for line in open("/proc/self/status"):
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
base = status("VmRSS")
t0 = time.perf_counter()
post = fit(train, "collapsed", config={"steps": steps}, seed=0, progress=False)
print(json.dumps({"fit_peak_rss_mb": status("VmHWM"), "rss_before_fit_mb": base,
                  "fit_s": time.perf_counter() - t0, "data_mb": train.x.nbytes / 2**20}))
"""


def fit_memory(n_rows, steps):
    """Peak RSS of a whole collapsed fit (fresh process, same CPU affinity as this one)."""
    out = subprocess.run([sys.executable, "-c", _FIT_CHILD, str(n_rows), str(steps)], capture_output=True,
                         text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def machine():
    load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
    affinity = sorted(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else "?"
    return {"cpu": platform.processor() or platform.machine(), "cores_visible": os.cpu_count(),
            "affinity": affinity, "uptime": load, "jax": jax.__version__, "device": str(jax.devices()[0]),
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


def _loglog_fit(n, y):
    """Slope of log y against log n (1 = linear growth)."""
    n, y = np.asarray(n, float), np.asarray(y, float)
    return float(np.polyfit(np.log(n), np.log(y), 1)[0])


def write_results(timing, memory, info, out=RESULTS):
    import pandas as pd

    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out.mkdir(parents=True, exist_ok=True)
    t, m = pd.DataFrame(timing), pd.DataFrame(memory)
    csv = pd.concat([t.assign(table="step_time"), m.assign(table="memory")], ignore_index=True)
    atomic_write(out / "step_time.csv", lambda p: csv.to_csv(p, index=False))

    fig, ax = plt.subplots(1, 2, figsize=(10, 4))
    for col, label in (("reference_step_temp_mb", "reference step (XLA temp)"),
                       ("ours_step_temp_mb", "collapsed step (XLA temp)"),
                       ("fit_peak_rss_mb", "collapsed whole fit (peak RSS)"),
                       ("fit_rss_growth_mb", "collapsed fit, RSS growth during fit")):
        if col in m:
            ax[0].loglog(m["N"], m[col], "o-", label=label)
    ax[0].set(xlabel="rows N", ylabel="MB", title="memory against N (d = 5, D = 100)")
    ax[0].legend(fontsize=8)
    for name, g in t.groupby("variant", sort=False):
        ax[1].loglog(g["N"], g["median_ms"], "o-", label=name)
    ax[1].set(xlabel="rows N", ylabel="ms per SVI step (median)", title="step time against N")
    ax[1].legend(fontsize=7)
    fig.tight_layout()
    atomic_write(out / "step_time.png", lambda p: fig.savefig(p, format="png", dpi=110))
    plt.close(fig)

    head = t[t["N"] == info["headline_n"]]
    lines = [
        "# One SVI step: `collapsed` against the reference design",
        "",
        f"Written by `benchmarks/step_time.py` on {info['date']}. Machine: {info['cpu']}, {info['cores_visible']} cores "
        f"visible, the run pinned to core(s) {info['affinity']} (`taskset`), {info['device']}, JAX {info['jax']}. "
        f"Load when it started: `{info['uptime_start']}`; when it ended: `{info['uptime_end']}` (the machine is "
        "shared with other jobs, so absolute times are noisy; the variants were timed interleaved in one process, "
        f"{info['repeats']} repeats each, medians reported).",
        "",
        *([info["note"], ""] if info.get("note") else []),
        "What is timed: one SVI step (ELBO gradient, Adam update) of the same NumPyro guide, optimiser and "
        "engine; only the model's likelihood differs (details in the script's docstring). *reference design*: "
        "z drawn from the SCM for every draw and every row by a Python loop over the nodes (unrolled in `jit`), "
        "every draw decoded, Gaussian log-likelihood of all N x D entries, float32. *collapsed*: the exact "
        "marginal likelihood from per-pattern sufficient statistics, with `precision = \"float32\"` (centred "
        "statistics, quadratic forms as squared norms; `docs/collapsed.md`) and `\"float64\"` (raw moments under x64).",
        "",
        f"## Step time at d = 5, D = 100, N = {info['headline_n']}",
        "",
        f"The data (default problem, seed 0): {info['patterns']}.",
        "",
        "| variant | median ms / step | min / max ms | speed-up vs reference |",
        "|---|---|---|---|",
    ]
    for _, r in head.iterrows():
        lines.append(f"| {r['variant']} | {r['median_ms']:.2f} | {r['min_ms']:.2f} / {r['max_ms']:.2f} | "
                     f"{r['ratio_vs_reference']:.0f}x |")
    other = t[t["N"] != info["headline_n"]]
    if len(other):
        lines += ["", "Other N (same variants):", "", "| N | variant | median ms / step | speed-up |", "|---|---|---|---|"]
        for _, r in other.iterrows():
            lines.append(f"| {int(r['N'])} | {r['variant']} | {r['median_ms']:.2f} | {r['ratio_vs_reference']:.0f}x |")
    lines += [
        "",
        "## Memory against N",
        "",
        "XLA's compiled memory analysis of one step (temporary buffers; arguments = data and state), and the "
        "peak resident memory of a whole `collapsed` fit "
        f"({info['fit_steps']} steps, default settings otherwise; one fresh process per N; 'growth' = peak minus "
        "the resident memory just before `fit`, i.e. after importing JAX and simulating the data).",
        "",
        "| N | collapsed step temp MB | collapsed step args MB | reference step temp MB | reference step args MB | "
        "fit peak RSS MB | fit RSS growth MB | fit s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for _, r in m.iterrows():
        lines.append(f"| {int(r['N'])} | {r['ours_step_temp_mb']:.2f} | {r['ours_step_args_mb']:.2f} | "
                     f"{r['reference_step_temp_mb']:.1f} | {r['reference_step_args_mb']:.2f} | "
                     f"{r.get('fit_peak_rss_mb', float('nan')):.0f} | {r.get('fit_rss_growth_mb', float('nan')):.0f} | "
                     f"{r.get('fit_s', float('nan')):.1f} |")
    slopes = {}
    for col in ("reference_step_temp_mb", "fit_rss_growth_mb"):
        ok = m[col].notna() & (m[col] > 0) if col in m else None
        if ok is not None and ok.sum() >= 2:
            slopes[col] = _loglog_fit(m["N"][ok], m[col][ok])
    lines += ["", "Log-log slopes against N (1 = linear): " + ", ".join(f"{k} {v:.2f}" for k, v in slopes.items())
              + "; the collapsed step's own memory does not depend on N (the data enter as statistics of the "
              "distinct intervention patterns).", "", "Plot: `step_time.png` (log-log).", ""]
    atomic_write(out / "step_time.md", lambda p: Path(p).write_text("\n".join(lines)))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="few repeats, small N grid (a smoke test)")
    p.add_argument("--repeats", type=int, default=7)
    p.add_argument("--n", type=int, default=4000, help="rows for the headline ratio")
    p.add_argument("--time-n", type=int, nargs="*", default=[4000, 16000], help="N for step times")
    p.add_argument("--unmatched-n", type=int, nargs="*", default=[16000],
                   help="N (of --time-n) timed without the 64-particle collapsed variant (one compilation less)")
    p.add_argument("--memory-n", type=int, nargs="*", default=[1000, 2000, 4000, 8000, 16000])
    p.add_argument("--fit-steps", type=int, default=300)
    p.add_argument("--part", choices=("all", "timing", "step-memory", "fit-memory", "profile"), default="all",
                   help="run one part only and save it as JSON in --out (parts can run in parallel)")
    p.add_argument("--assemble", action="store_true", help="write the tables from the saved parts")
    p.add_argument("--note", default="", help="a sentence added under the header (e.g. how the parts were run)")
    p.add_argument("--out", type=Path, default=RESULTS)
    a = p.parse_args(argv)
    if a.quick:
        a.repeats, a.time_n, a.memory_n, a.fit_steps = 2, [a.n], [1000, 2000], 50
    a.out.mkdir(parents=True, exist_ok=True)
    parts = ROOT / "benchmarks" / "_work" / f"step_time_parts-{a.out.resolve().name}"  # git-ignored
    parts.mkdir(parents=True, exist_ok=True)

    def save(name, obj):
        atomic_write(parts / f"{name}.json", lambda path: Path(path).write_text(json.dumps(obj, default=float)))

    if not a.assemble and a.part in ("all", "timing"):
        info = {"uptime_start": subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip(),
                "repeats": a.repeats, "headline_n": a.n, "fit_steps": a.fit_steps}
        st = unit_stats(make_units(*(getattr(problem(a.n), k) for k in ("x", "targets", "values")))[0])
        info["patterns"] = (f"R = {len(st.n)} distinct target patterns"
                            + (f", M = {len(st.fx)} blocks of the second-moment factor" if hasattr(st, "fx") else ""))
        timing = []
        for n in sorted(set(a.time_n) | {a.n}):
            print(f"step time, N = {n}", flush=True)
            timing += step_ratio(n, a.repeats, matched=n not in a.unmatched_n)
        info.update(machine())
        info["uptime_end"] = info.pop("uptime")
        save("timing-" + "-".join(str(n) for n in sorted(set(a.time_n) | {a.n})), {"info": info, "timing": timing})
    if not a.assemble and a.part in ("all", "profile"):
        print(f"profile, N = {a.n}", flush=True)
        load = subprocess.run(["uptime"], capture_output=True, text=True).stdout.strip()
        save("profile", {"uptime": load, "N": a.n, "repeats": a.repeats, "rows": profile_step(a.n, a.repeats)})
    if not a.assemble and a.part in ("all", "step-memory"):
        rows = []
        for n in a.memory_n:
            print(f"step memory, N = {n}", flush=True)
            rows.append({"N": n, **step_memory(n)})
            print("  " + json.dumps(rows[-1]), flush=True)
        save("step_memory", rows)
    if not a.assemble and a.part in ("all", "fit-memory"):
        rows = []
        for n in a.memory_n:
            print(f"fit memory, N = {n}", flush=True)
            row = {"N": n, **fit_memory(n, a.fit_steps), "fit_steps": a.fit_steps}
            row["fit_rss_growth_mb"] = row["fit_peak_rss_mb"] - row["rss_before_fit_mb"]
            rows.append(row)
            print("  " + json.dumps(row), flush=True)
        save("fit_memory", rows)
    if a.part == "all" or a.assemble:
        saved = [json.loads(f.read_text()) for f in sorted(parts.glob("timing-*.json"))]
        t = {"info": next(x["info"] for x in saved if any(r["N"] == a.n for r in x["timing"])),
             "timing": sorted((r for x in saved for r in x["timing"]), key=lambda r: r["N"])}
        sm = {r["N"]: r for r in json.loads((parts / "step_memory.json").read_text())}
        for r in t["timing"]:  # the timed steps' memory analyses fill in their N
            if r["variant"].startswith("reference") or r["variant"].endswith("restarts, float64)"):
                sm.setdefault(r["N"], {"N": r["N"]}).update(_memory_row(r))
        fm = {r["N"]: r for r in json.loads((parts / "fit_memory.json").read_text())}
        memory = [{**sm.get(n, {}), **fm.get(n, {}), "N": n} for n in sorted(set(sm) | set(fm))]
        info = t["info"]
        info["fit_steps"] = next(iter(fm.values()))["fit_steps"] if fm else a.fit_steps
        info["note"] = a.note
        write_results(t["timing"], memory, info, a.out)
        print(f"wrote {a.out / 'step_time.md'}")


if __name__ == "__main__":
    main()
