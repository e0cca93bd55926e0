"""Benchmark: causal structure from pixels, and generation under unseen interventions (issue 4).

Cases (``simulate(image_config(layout, d=5), seed)``: paired design, ER-1, 2000 pairs in 20
multi-target regimes, Gaussian intervention values of scale 2, 50 x 50 grey images, pixel noise 0.05;
4000 training rows, 500 held-out rows in 5 unseen regimes):

* ``chemistry`` + ``collapsed`` (linear decoder, z integrated out exactly, order learned): the
  acceptance case, mean E-SHD <= 1, AUROC >= 0.97, MCC >= 0.95 over seeds 0-2.
* ``chemistry_shift`` + ``amortized`` (image decoder: MLP, order learned): the harder variant where a
  latent moves its block, so the decoder must be nonlinear. Reported whatever it gets.
* ``chemistry`` + ``biols`` (the seed method, MLP decoder, order learned): does it run on images.

Every fit runs in its own process (``--one``), so ``peak_rss_mb`` is that fit's peak resident memory
and ``wall_s`` includes start-up and JIT compilation; ``seconds`` is the fit itself. After each fit:
generation under the d single-node interventions ``do(z_j = -7)`` (training values ~ N(0, 2^2)):
mean per-pixel absolute error of the posterior predictive mean image against the true renderer's
mean noiseless image (``latentscm.generation``), and the same for the graph-blind baseline (the same
posterior with W = 0 at prediction); a figure grid per fit in ``benchmarks/results/images/``.

Usage: ``taskset -c 0 python benchmarks/images.py [--table images | images-saturating] [--cases ...]
[--seeds 0 1 2] [--steps N]`` writes ``benchmarks/results/<table>.{csv,md}`` from the table's finished fits
in ``benchmarks/_work/images-<case>-seed<N>.json`` (so cases can be run one at a time; ``--report`` only
rewrites the table).

Table ``images-saturating`` (issue 12): the default of image files, ``auto`` (the linear fit, its regime
check, the MLP decoder when the check fails, kept when the held-out evidence prefers it), on
``saturating-auto`` (``image_config("chemistry", scale="saturating")``: the renderer clips >= 10 % of some
node's rows) and ``chemistry-auto`` (the default scale, as ``chemistry-collapsed``).
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
WORK = ROOT / "benchmarks" / "_work"
CASES = {  # name: (layout, method, fit settings, SCM scale of image_config)
    # one restart (the default is 2): halves the cost; the order proposal starts it (docs/images.md)
    "chemistry-collapsed": ("chemistry", "collapsed", {"num_restarts": 1}, "default"),
    "shift-amortized": ("chemistry_shift", "amortized", {}, "default"),
    "chemistry-biols": ("chemistry", "biols", {}, "default"),
    # the default of image files (`auto`: linear fit, regime check, MLP refinement when it fails), with the
    # linear fit's restarts as in chemistry-collapsed
    "saturating-auto": ("chemistry", "auto", {"linear": {"num_restarts": 1}}, "saturating"),
    "chemistry-auto": ("chemistry", "auto", {"linear": {"num_restarts": 1}}, "default"),
}
TABLES = {  # results file: its cases
    "images": ["chemistry-collapsed", "shift-amortized", "chemistry-biols"],
    "images-saturating": ["saturating-auto", "chemistry-auto"],
}
COLUMNS = ["case", "layout", "scale", "method", "seed", "e_shd", "e_shd_double", "auroc", "auprc", "mcc", "edge_rmse",
           "heldout_nll", "gen_error", "gen_error_baseline", "seconds", "wall_s", "cpu_s", "peak_rss_mb", "steps",
           "clip_max", "decoder", "misfit", "heldout_linear", "heldout_mlp", "nll_linear", "nll_mlp"]
CHOICE = ("decoder", "misfit", "heldout_linear", "heldout_mlp", "nll_linear", "nll_linear_se", "nll_mlp", "nll_mlp_se",
          "reason")


def one(case: str, seed: int, steps: int | None) -> dict:
    """Fit one case and seed in this process; returns the result row (also written as JSON)."""
    import matplotlib

    matplotlib.use("Agg")
    from latentscm.data import image_config, simulate
    from latentscm.data.images import clipped_fraction
    from latentscm.generation import generation_error, plot_generation_grid
    from latentscm.inference import fit
    from latentscm.plots import save_figure
    from latentscm.runs import run_metrics

    start = time.perf_counter()
    layout, method, config, scale = CASES[case]
    if steps is not None:  # auto: both of its fits
        config |= {part: config.get(part, {}) | {"steps": steps} for part in ("linear", "mlp")} if method == "auto" \
            else {"steps": steps}
    train, test = simulate(image_config(layout, scale=scale, d=5), seed)
    posterior = fit(train, method, config=config, seed=seed, progress=False)
    row = run_metrics(posterior, train, test, seed=seed)
    gen = generation_error(posterior, train, value=-7.0, seed=seed)
    out = RESULTS / "images"
    out.mkdir(parents=True, exist_ok=True)
    fig = plot_generation_grid(gen["truth"], gen["generated"], train.image_shape, baseline=gen["baseline"],
                               labels=[f"do(z{j} = -7)" for j in range(train.d)])
    save_figure(fig, out / f"{case}-seed{seed}.png", dpi=80)
    row |= {"case": case, "layout": layout, "method": method, "gen_error": gen["error"],
            "gen_error_baseline": gen["baseline_error"], "wall_s": round(time.perf_counter() - start, 1),
            "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "cpu_s": round(resource.getrusage(resource.RUSAGE_SELF).ru_utime
                           + resource.getrusage(resource.RUSAGE_SELF).ru_stime, 1),
            "steps": posterior.info.get("config", {}).get("steps"),
            "gen_per_node": gen["per_node"].tolist(), "gen_baseline_per_node": gen["baseline_per_node"].tolist(),
            "scale": scale, "clip": clipped_fraction(train.z).round(4).tolist(),
            "clip_max": float(clipped_fraction(train.z).max())}
    choice = posterior.info.get("decoder_choice")
    if choice is not None:
        row |= {k: choice.get(k) for k in CHOICE + ("linear_seconds", "mlp_seconds")}
    return row


NOTES = """
## Notes

* The `shift-amortized` and `chemistry-biols` rows ran on 2026-11-28 between 02:09 and 02:41 UTC, one fit
  at a time on core 1 (`taskset -c 1`) while other engineers' jobs used core 0 only. The
  `chemistry-collapsed` rows were rerun on 2026-11-28 10:47-10:57 UTC on core 1 (core 0 ran the scaling
  benchmark) after the collapsed likelihood was rewritten in latent space: 133-155 s per fit against
  183-237 s before, the same structure on seeds 0-1 and E-SHD 0.49 against 0.43 on seed 2. The wall
  times are those of one dedicated core, an upper bound for the 2-core machine; every fit is within the
  15-minute budget.
* `chemistry-biols` runs `BiolsConfig()` defaults (linear decoder, 2000 steps, 16 particles, 500 rows
  per step). Its step got fast once the minibatch was shared by the particles and the linear decoder's
  density evaluated from `x A^T` (docs/biols.md); before that one fit did not finish in 24 CPU minutes.
  Its 4.9 GB peak came from the latent summaries (50 draws x 4000 rows x 2500 pixels per call); the
  chunk is now bounded by N x D (not re-measured).
* Generation errors are dominated by the decoders' unbounded outputs where the renderer clips
  (chemistry: z < -8 is black; see docs/images.md). `biols`'s generation barely beats the graph-blind
  baseline: its graph is largely wrong (E-SHD 5) and its noise scales collapse (docs/biols.md).
"""


def _markdown(df, seeds_note: str) -> str:
    summary = df.drop(columns=["seed"]).groupby("case", sort=False).mean(numeric_only=True)
    summary.insert(0, "fits", df.groupby("case", sort=False).size())
    return ("# Images: structure from pixels and generation under unseen interventions\n\n"
            "Timings: one pinned core (`taskset -c N`) of a 2-core machine, no GPU (see the notes for the "
            "load); one process per fit (`wall_s` includes start-up, JIT "
            "compilation, metrics and the generation check; `seconds` is the fit; `cpu_s` is the process's "
            "CPU time, user + system, which the other jobs on the core do not inflate). Data: "
            "`simulate(image_config(layout, d=5), seed)`, paired design, ER-1, 4000 rows of 50 x 50 "
            "pixels, order learned. `gen_error`: mean per-pixel absolute error of the posterior "
            "predictive mean image against the true renderer's mean noiseless image under the 5 "
            "single-node interventions do(z_j = -7) (training values ~ N(0, 2^2)); `gen_error_baseline`: "
            "the same posterior with W = 0 at prediction (graph-blind). Figures: `images/<case>-seed<N>.png` "
            f"(truth | generated mean | difference | baseline | its difference). {seeds_note}\n\n"
            "## Means over seeds\n\n" + summary.round(4).to_markdown() +
            "\n\n## Per fit\n\n" + df.round(4).to_markdown(index=False) + "\n" + NOTES)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--table", default="images", choices=list(TABLES),
                        help="results file and its cases (images: the methods; images-saturating: the default auto)")
    parser.add_argument("--cases", nargs="+", default=None, choices=list(CASES), help="default: the table's")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--steps", type=int, default=None, help="override the method's steps")
    parser.add_argument("--report", action="store_true", help="only rewrite the tables from finished fits")
    parser.add_argument("--one", nargs=2, metavar=("CASE", "SEED"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    WORK.mkdir(parents=True, exist_ok=True)
    if args.one:
        row = one(args.one[0], int(args.one[1]), args.steps)
        (WORK / f"images-{args.one[0]}-seed{args.one[1]}.json").write_text(json.dumps(row))
        return
    import pandas as pd

    from latentscm._io import atomic_write

    cases = TABLES[args.table]
    for case in [] if args.report else (args.cases or cases):
        for seed in args.seeds:
            cmd = [sys.executable, __file__, "--one", case, str(seed)]
            if args.steps is not None:
                cmd += ["--steps", str(args.steps)]
            subprocess.run(cmd, check=True)
            print(json.loads((WORK / f"images-{case}-seed{seed}.json").read_text()), flush=True)
    rows = [json.loads(p.read_text()) for case in cases for p in sorted(WORK.glob(f"images-{case}-seed*.json"))]
    df = pd.DataFrame(rows)
    df = df[[c for c in COLUMNS if c in df]].sort_values(["case", "seed"], key=lambda s: s.map(
        {c: i for i, c in enumerate(CASES)}) if s.name == "case" else s)
    RESULTS.mkdir(parents=True, exist_ok=True)
    atomic_write(RESULTS / f"{args.table}.csv", lambda tmp: df.to_csv(tmp, index=False))
    if args.table == "images":
        text = _markdown(df, "Settings: each method's defaults except `num_restarts = 1` for `collapsed`; "
                             "`steps` per fit in the table.")
    else:
        text = _markdown_saturating(df, rows)
    atomic_write(RESULTS / f"{args.table}.md", lambda tmp: Path(tmp).write_text(text))
    print(text)


def _markdown_saturating(df, rows) -> str:
    summary = df.drop(columns=["seed", "decoder"]).groupby("case", sort=False).mean(numeric_only=True)
    summary.insert(0, "fits", df.groupby("case", sort=False).size())
    reasons = "\n".join(f"* `{r['case']}` seed {r['seed']}: clipped fraction per node {r['clip']}; decoder: "
                         f"{r.get('reason')} (linear fit {r.get('linear_seconds') or float('nan'):.0f} s"
                         + (f", MLP fit {r['mlp_seconds']:.0f} s)" if r.get("mlp_seconds") else ")") for r in rows)
    return ("# Images that saturate: the default `auto` fit (decoder chosen by the evidence)\n\n"
            "Cases: `simulate(image_config('chemistry', scale=..., d=5), seed)`: `saturating` (value scale 1, "
            "edge weights 1-3, noise sd 1.5-2.5, so that the renderer clips |z| > 8 in >= 10 % of some node's "
            "rows) and the default scale (`chemistry`, 0.5-5 % clipped), paired design, ER-1, 4000 rows of 50 x 50 "
            "pixels, order learned, fitted with `fit(train, 'auto', config={'linear': {'num_restarts': 1}})`: "
            "collapsed (linear decoder, one restart as in `images.md`), its regime check, and when the check's "
            "excess misfit exceeds 0.25 nats per row the MLP decoder (`amortized` defaults, 4000 steps) fitted on "
            "80 % of the "
            "pairs, kept when its excess misfit on the other 20 % is lower than the linear fit's by more than 0.25 "
            "(docs/criticism.md). Columns as in `images.md`; `clip_max`: the largest clipped fraction of a "
            "node's rows; `decoder`: the kept decoder; `misfit`: the check's statistic on the training rows "
            "(nats per row); `heldout_*`: the same on the held-out rows, per fit; `nll_*`: held-out NLL per "
            "pair (nats), reported, not used. Timings: one process per fit pinned to core 0 (`taskset -c 0`) of a "
            "2-core machine shared with two other engineers' jobs (see the notes): wall and fit seconds are "
            "inflated by that load; "
            "`cpu_s` is this process's own CPU time.\n\n"
            "## Means over seeds\n\n" + summary.round(4).to_markdown() +
            "\n\n## Per fit\n\n" + df.round(4).to_markdown(index=False) + "\n\n## Decisions\n\n" + reasons
            + "\n" + NOTES_SATURATING)


NOTES_SATURATING = """
## Notes

* Load (2026-12-07, 01:53-03:00 UTC): every fit ran pinned to core 0 of the 2-core machine, which it
  shared with one or two other engineers' jobs (profiling and benchmark runs; core 1 was busy with a third
  engineer's work), so each process got a third to a half of the core: `seconds` and `wall_s` are inflated
  by that load (`cpu_s` is the process's own CPU time). On a dedicated core `collapsed` takes 133-155 s
  here (`images.md`) and `amortized` 170-190 s at 2000 steps.
* Earlier versions of the rule on `saturating-auto` seed 0 (same data, same linear fit), not in the table:
  (1) deciding by the held-out NLL (MLP kept when lower by 2 se) kept the linear fit: E-SHD 3.88, AUROC 0.70,
  MCC 0.764, generation error 0.115 against the graph-blind baseline's 0.095 (worse than no graph); the
  linear fit's held-out NLL was lower by 32.6 +- 3.9 nats per pair of 5000 pixels (docs/criticism.md).
  (2) deciding by the held-out misfit with the MLP at amortized's default 2000 steps: MLP kept (held-out
  misfit 1.29 linear, 0.235 MLP), E-SHD 2.52, AUROC 1.0, MCC 0.964, generation error 0.0280 (0.0358), fit
  394 s; hence 4000 steps for the refinement (`MLP_STEPS`).
* `chemistry-auto` seed 0 reproduces `chemistry-collapsed` seed 0 of `images.md` exactly (E-SHD 0, AUROC 1,
  MCC 0.995, generation error 0.0149 against 0.0242): the check gives 0.061 nats per row, below 0.25, so
  nothing else runs; the auto fit costs the check (about 3 s) more than `collapsed`.
"""


if __name__ == "__main__":
    main()
