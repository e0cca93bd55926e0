"""One short check for when a GPU (or any accelerator) is available: a d = 50 fit and the step-time ratio.

Run it on the accelerator machine (with a JAX build for it, e.g. ``pip install -U "jax[cuda12]"``)::

    python benchmarks/gpu_check.py                 # d = 50 collapsed fit + step-time ratio, ~minutes on a GPU
    python benchmarks/gpu_check.py --quick         # tiny sizes: a smoke test that also runs on CPU

It prints the device JAX uses and writes ``benchmarks/results/gpu_check.md`` (``--out`` to change):
the device, the fit's wall time and structure metrics (E-SHD, AUROC, AUPRC, MCC) on the seed paper's
scaling setting (order learned, linear projection, D = 100, ER-1, multi-target interventions, 100
regimes), and the step-time ratio of ``benchmarks/step_time.py`` (our ``collapsed`` step against the
reference design, d = 5, D = 100, N = 4000, 64 draws), with ``--devices`` for the ``collapsed``
setting of the same name. A CPU run says so in the file: it is not a GPU measurement.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchmarks/ is not a package
import step_time  # noqa: E402

from latentscm._io import atomic_write  # noqa: E402
from latentscm.data import SimulationConfig, simulate  # noqa: E402
from latentscm.inference import fit  # noqa: E402
from latentscm.metrics import structure_metrics  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"


def fit_check(d, n_regimes, rows_per_regime, steps, devices, seed=0):
    """A collapsed fit on the seed paper's scaling setting; returns a dict of timings and metrics."""
    cfg = SimulationConfig(d=d, D=100, n_regimes=n_regimes, rows_per_regime=rows_per_regime,
                           n_pairs=n_regimes * rows_per_regime, targets="multi", projection="linear")
    train, test = simulate(cfg, seed=seed)
    t0 = time.perf_counter()
    post = fit(train, "collapsed", config={"steps": steps, "devices": devices}, seed=seed, progress=False)
    wall = time.perf_counter() - t0
    m = structure_metrics(post.W, train.weights, z_pred=post.latent_mean, z_true=train.z)
    return {"d": d, "N": train.N, "steps": steps, "wall_s": wall, "fit_seconds": post.seconds,
            **{k: m[k] for k in ("e_shd", "auroc", "auprc", "mcc") if k in m}}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="tiny sizes (CPU smoke test)")
    p.add_argument("--d", type=int, default=50)
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--devices", default="1", help="collapsed 'devices' setting: an integer or 'all'")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--out", type=Path, default=RESULTS / "gpu_check.md")
    a = p.parse_args(argv)
    devices = a.devices if a.devices == "all" else int(a.devices)
    d, n_regimes, rows, steps, ratio_n = a.d, 100, 50, a.steps, 4000
    if a.quick:
        d, n_regimes, rows, steps, ratio_n, a.repeats = 5, 10, 20, 30, 1000, 2
    dev = jax.devices()
    print(f"JAX {jax.__version__}, backend {jax.default_backend()}, devices: {dev}", flush=True)
    uptime = step_time.machine()["uptime"]
    print(f"fit: d = {d}, {n_regimes} regimes x {rows} pairs, {steps} steps", flush=True)
    f = fit_check(d, n_regimes, rows, steps, devices)
    print(f"  {f}", flush=True)
    print(f"step-time ratio at N = {ratio_n}", flush=True)
    timing = step_time.step_ratio(ratio_n, a.repeats, matched=False)
    on_cpu = jax.default_backend() == "cpu"
    for r in timing:
        print(f"  {r['variant']}: {r['median_ms']:.2f} ms, {r['ratio_vs_reference']:.1f}x", flush=True)
    lines = [
        "# GPU check" + (" (CPU smoke run: NOT a GPU measurement)" if on_cpu else ""),
        "",
        f"Written by `benchmarks/gpu_check.py{' --quick' if a.quick else ''}` on "
        f"{time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())}. JAX {jax.__version__}, backend "
        f"`{jax.default_backend()}`, devices `{[str(x) for x in dev]}` (fit used `devices = {devices!r}`). "
        f"Load at start: `{uptime}`.",
        "",
        *(["JAX found no accelerator, so these are CPU numbers from a smoke run of the script. Rerun it on "
           "a GPU machine (`python benchmarks/gpu_check.py`) to record the real check.", ""] if on_cpu else []),
        f"## collapsed fit, d = {f['d']}, D = 100, N = {f['N']} (ER-1, multi-target, {n_regimes} regimes, "
        "linear projection, order learned, seed 0)",
        "",
        "| steps | wall s (incl. compile) | fit s | E-SHD | AUROC | AUPRC | MCC |",
        "|---|---|---|---|---|---|---|",
        f"| {f['steps']} | {f['wall_s']:.1f} | {f['fit_seconds']:.1f} | {f.get('e_shd', np.nan):.2f} | "
        f"{f.get('auroc', np.nan):.3f} | {f.get('auprc', np.nan):.3f} | {f.get('mcc', np.nan):.3f} |",
        "",
        f"## One SVI step against the reference design (d = 5, D = 100, N = {ratio_n}, 64 draws)",
        "",
        "| variant | median ms / step | speed-up |",
        "|---|---|---|",
        *[f"| {r['variant']} | {r['median_ms']:.2f} | {r['ratio_vs_reference']:.1f}x |" for r in timing],
        "",
    ]
    a.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(a.out, lambda path: Path(path).write_text("\n".join(lines)))
    print(f"wrote {a.out}")


if __name__ == "__main__":
    main()
