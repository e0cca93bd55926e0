"""Where the time of ``latentscm run --quick`` goes besides the arithmetic: imports, compilation, I/O.

Each mode runs ``latentscm run --quick`` (the embedded default problem, 300 steps of ``collapsed``)
through :func:`latentscm.cli.main` in a fresh Python process and times its phases there:

=====================  =============================================================================
``import_cli``         ``import latentscm.cli`` (the standard library only)
``import_jax``         ``import jax`` (and turning the compilation cache on, as the command line does)
``import_inference``   ``latentscm.inference`` and ``latentscm.runs`` (NumPyro, Optax, ...; a method's own module at fit)
``import_plots``       ``latentscm.plots`` and ``arviz_base`` (matplotlib, xarray)
``simulate``           ``latentscm.data.simulate`` of the default problem
``validate``           the settings and priors (``latentscm.cli_commands._resolve``)
``fit``                ``latentscm.inference.fit`` (its own ``seconds`` are reported as well)
``metrics``            ``latentscm.runs.run_metrics`` (structure metrics, MCC, held-out NLL)
``write``              ``latentscm.runs.write_run``: posterior.nc, JSON, four figures, dataset.npz
``other``              the rest of ``main`` (argument parsing, printing)
=====================  =============================================================================

plus ``process`` (the wall time of the whole process as its parent sees it, interpreter start
included). Modes: ``cold`` (a fresh persistent compilation cache folder), ``warm`` (a second process
on the same folder), ``off`` (``LATENTSCM_JAX_CACHE=off``: no persistent cache). In every phase it
counts, through ``jax.monitoring`` listeners, the programs JAX traced (``jaxpr_trace_duration``
events), the backend compilations requested (``backend_compile_duration``: those served by the
persistent cache included), the persistent-cache hits and the entries written; XLA compilations are
requests minus hits.

It also times ``latentscm --help`` and two input errors (``fit --method nope`` and ``fit --data
missing.npz``): wall time of ``python -m latentscm ...``, median of ``--repeats``.

The slowest compile requests of each mode are listed with their cache status. The fit processes keep
Python's random ``PYTHONHASHSEED`` unless ``--pythonhashseed N`` is given: the compiled programs must not
depend on it (NumPyro's ``Trace_ELBO`` made the SVI step depend on it, so the step missed the cache in
every new process until ``latentscm.inference.svi.elbo_loss`` replaced it).

Usage: ``python benchmarks/overhead.py [--full] [--modes cold,warm,off] [--repeats 5] [--pythonhashseed N]``
(a few minutes) writes ``benchmarks/results/overhead.{md,json}`` (``--out STEM`` for another name; ``--full``: the
full ``latentscm run``, 1000 steps, as ``overhead-full``); scratch
files (run folders, the cache) go to ``benchmarks/_work/overhead/``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PHASES = ("import_cli", "import_jax", "import_inference", "import_plots", "simulate", "validate", "fit",
          "metrics", "write", "other")
COUNTS = ("traces", "compile_requests", "cache_hits", "xla_compiles", "cache_writes")
_TRACE = "/jax/core/compile/jaxpr_trace_duration"
_COMPILE = "/jax/core/compile/backend_compile_duration"
_HIT = "/jax/compilation_cache/cache_hits"
_WRITE = "/jax/compilation_cache/cache_misses"  # recorded when an entry is written


# ------------------------------------------------------------------------------------------ child


def _child(args) -> None:
    """One ``run --quick`` in this process, phases timed; the result as JSON in ``args.child``."""
    now = time.perf_counter
    seconds = {p: 0.0 for p in PHASES}
    counts = {p: dict.fromkeys(COUNTS, 0) for p in PHASES}
    compile_secs = dict.fromkeys(PHASES, 0.0)
    programs = []  # (name, seconds, served by the persistent cache) of every backend compile request
    hit = [False]
    phase = ["import_cli"]

    t = now()
    import latentscm.cli as cli

    seconds["import_cli"] = now() - t

    phase[0] = "import_jax"
    t = now()
    import jax
    import jax.monitoring

    folder = cli.enable_compilation_cache()  # before any compilation, as `run` does
    seconds["import_jax"] = now() - t

    def on_duration(event, duration, **kwargs):
        if event == _TRACE:
            counts[phase[0]]["traces"] += 1
        elif event == _COMPILE:
            counts[phase[0]]["compile_requests"] += 1
            compile_secs[phase[0]] += duration
            programs.append((kwargs.get("fun_name", "?"), duration, hit[0]))
            hit[0] = False

    def on_event(event, **kwargs):
        if event == _HIT:  # recorded inside the compile request it serves, before its duration
            counts[phase[0]]["cache_hits"] += 1
            hit[0] = True
        elif event == _WRITE:
            counts[phase[0]]["cache_writes"] += 1

    jax.monitoring.register_event_duration_secs_listener(on_duration)
    jax.monitoring.register_event_listener(on_event)

    for name, modules in (("import_inference", ("latentscm.inference", "latentscm.runs")),
                          ("import_plots", ("latentscm.plots", "arviz_base"))):
        phase[0] = name
        t = now()
        for module in modules:
            __import__(module)
        seconds[name] = now() - t

    import latentscm.data
    import latentscm.inference
    import latentscm.runs

    fit_seconds = []

    def timed(name, fn):
        def wrapper(*a, **k):
            outer, phase[0] = phase[0], name
            t0 = now()
            try:
                result = fn(*a, **k)
            finally:
                seconds[name] += now() - t0
                phase[0] = outer
            if name == "fit":
                fit_seconds.append(float(result.seconds))
            return result
        return wrapper

    latentscm.data.simulate = timed("simulate", latentscm.data.simulate)
    import latentscm.cli_commands as commands

    commands._resolve = timed("validate", commands._resolve)
    latentscm.inference.fit = timed("fit", latentscm.inference.fit)
    latentscm.runs.run_metrics = timed("metrics", latentscm.runs.run_metrics)
    latentscm.runs.write_run = timed("write", latentscm.runs.write_run)

    phase[0] = "other"
    t = now()
    code = cli.main(["run"] + ([] if args.full else ["--quick"]) + ["--seed", str(args.seed), "--out", args.run_out])
    total_main = now() - t
    seconds["other"] = total_main - sum(seconds[p] for p in ("simulate", "validate", "fit", "metrics", "write"))
    if code != 0:
        raise SystemExit(f"latentscm run exited with {code}")
    for c in counts.values():
        c["xla_compiles"] = c["compile_requests"] - c["cache_hits"]
    result = {"seconds": seconds, "counts": counts, "compile_seconds": compile_secs, "main_seconds": total_main,
              "fit_own_seconds": fit_seconds[0] if fit_seconds else None,
              "slowest_programs": [{"name": n, "seconds": sec, "cache_hit": h}
                                   for n, sec, h in sorted(programs, key=lambda r: -r[1])[:5]],
              "pythonhashseed": os.environ.get("PYTHONHASHSEED"),
              "cache_dir": None if folder is None else str(folder), "jax": jax.__version__,
              "device": str(jax.devices()[0].device_kind), "backend": jax.default_backend()}
    Path(args.child).write_text(json.dumps(result))


# ------------------------------------------------------------------------------------------ parent


def _wall(cmd, env=None, repeats=5) -> dict:
    times, code = [], None
    for _ in range(repeats):
        t = time.perf_counter()
        proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
        times.append(time.perf_counter() - t)
        code = proc.returncode
    return {"median_s": statistics.median(times), "min_s": min(times), "max_s": max(times), "exit_code": code}


def _run_mode(mode: str, work: Path, seed: int, hashseed: str | None, full: bool) -> dict:
    cache = work / "cache"
    if mode == "cold" and cache.exists():
        shutil.rmtree(cache)
    env = dict(os.environ, LATENTSCM_JAX_CACHE="off" if mode == "off" else str(cache), MPLBACKEND="Agg")
    if hashseed is not None:
        env["PYTHONHASHSEED"] = hashseed
    result_path, run_out = work / f"{mode}.json", work / f"run-{mode}"
    shutil.rmtree(run_out, ignore_errors=True)
    cmd = [sys.executable, str(Path(__file__).resolve()), "--child", str(result_path), "--run-out", str(run_out),
           "--seed", str(seed)] + (["--full"] if full else [])
    print(f"[{mode}] {' '.join(cmd[1:])}", flush=True)
    t = time.perf_counter()
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True)
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise SystemExit(f"{mode}: the child process failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    result = json.loads(result_path.read_text())
    result["process_seconds"] = wall
    result["cache_files"] = sum(1 for _ in cache.rglob("*-cache")) if mode != "off" and cache.exists() else 0
    result["cache_mb"] = (sum(p.stat().st_size for p in cache.rglob("*") if p.is_file()) / 2**20
                          if mode != "off" and cache.exists() else 0.0)
    print(f"[{mode}] {wall:.1f} s", flush=True)
    return result


def _markdown(report: dict) -> str:
    modes = list(report["modes"])
    lines = [f"# Overhead of `{report.get('command', 'latentscm run --quick')}`", "",
             f"Generated by `benchmarks/overhead.py` on {report['date']}: {report['machine']}; JAX {report['jax']} "
             f"({report['backend']}, {report['device']}); load average at start {report['loadavg']}. "
             "One fresh process per mode; `cold`: an empty persistent compilation cache folder, `warm`: a second "
             "process on the same folder, `off`: `LATENTSCM_JAX_CACHE=off`. Seconds of wall time; in brackets "
             "the phase's XLA compilations / persistent-cache hits. PYTHONHASHSEED of the fit processes: "
             f"{report['pythonhashseed'] or 'not set (random)'}.", "",
             "| phase | " + " | ".join(modes) + " |", "|---|" + "---:|" * len(modes)]
    for p in PHASES:
        cells = []
        for m in modes:
            r = report["modes"][m]
            c = r["counts"][p]
            extra = f" ({c['xla_compiles']} / {c['cache_hits']})" if c["compile_requests"] else ""
            cells.append(f"{r['seconds'][p]:.2f}{extra}")
        lines.append(f"| {p} | " + " | ".join(cells) + " |")
    rows = [
        ("`main` total", lambda r: f"{r['main_seconds']:.2f}"),
        ("process (interpreter start included)", lambda r: f"{r['process_seconds']:.2f}"),
        ("fit's own `seconds`", lambda r: "" if r["fit_own_seconds"] is None else f"{r['fit_own_seconds']:.2f}"),
        ("programs traced", lambda r: str(sum(c["traces"] for c in r["counts"].values()))),
        ("XLA compilations", lambda r: str(sum(c["xla_compiles"] for c in r["counts"].values()))),
        ("seconds in backend compile (hits included)", lambda r: f"{sum(r['compile_seconds'].values()):.2f}"),
        ("persistent-cache hits", lambda r: str(sum(c["cache_hits"] for c in r["counts"].values()))),
        ("cache entries written", lambda r: str(sum(c["cache_writes"] for c in r["counts"].values()))),
        ("cache folder after the run", lambda r: f"{r['cache_files']} files, {r['cache_mb']:.1f} MiB"),
    ]
    for label, cell in rows:
        lines.append(f"| {label} | " + " | ".join(cell(report["modes"][m]) for m in modes) + " |")
    lines += ["", "Slowest backend compile requests (seconds; `hit`: served by the persistent cache):", "",
              "| mode | programs |", "|---|---|"]
    for m in modes:
        progs = ", ".join(f"`{p['name']}` {p['seconds']:.2f}{' hit' if p['cache_hit'] else ''}"
                          for p in report["modes"][m]["slowest_programs"])
        lines.append(f"| {m} | {progs} |")
    lines += ["", f"Start-up of the command line (wall time of `python -m latentscm ...`, median of "
              f"{report['repeats']}; none of these imports JAX):", "", "| command | median s | min s | max s | exit |",
              "|---|---:|---:|---:|---:|"]
    for label, r in report["startup"].items():
        lines.append(f"| `{label}` | {r['median_s']:.3f} | {r['min_s']:.3f} | {r['max_s']:.3f} | {r['exit_code']} |")
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--modes", default="cold,warm,off", help="comma list of cold, warm, off (default all)")
    parser.add_argument("--repeats", type=int, default=5, help="repeats of each start-up timing (default 5)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--pythonhashseed", metavar="N",
                        help="PYTHONHASHSEED of the fit processes (default: inherited, normally random)")
    parser.add_argument("--work", default=str(ROOT / "benchmarks" / "_work" / "overhead"))
    parser.add_argument("--out", default=None,
                        help="results stem: writes STEM.md and STEM.json")
    parser.add_argument("--full", action="store_true",
                        help="time the full `latentscm run` (1000 steps) instead of `run --quick` (300)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--run-out", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        _child(args)
        from latentscm.cli import exit_now

        exit_now(0)  # as the console script (latentscm.cli.entry): no interpreter teardown

    from latentscm._io import atomic_write

    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    if not modes or set(modes) - {"cold", "warm", "off"}:
        parser.error(f"--modes: expected a comma list of cold, warm, off; got {args.modes!r}")
    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, LATENTSCM_JAX_CACHE="off")
    py = [sys.executable, "-m", "latentscm"]
    missing = str(work / "missing.npz")
    report = {"date": time.strftime("%Y-%m-%d %H:%M"), "machine": f"{platform.machine()}, {os.cpu_count()} CPUs",
              "pythonhashseed": args.pythonhashseed, "command": "latentscm run" + ("" if args.full else " --quick"),
              "loadavg": " ".join(f"{x:.2f}" for x in os.getloadavg()), "repeats": args.repeats, "startup": {}}
    for label, cmd in (("latentscm --help", py + ["--help"]),
                       ("latentscm fit --data missing.npz --method nope", py + ["fit", "--data", missing, "--method", "nope"]),
                       ("latentscm fit --data missing.npz", py + ["fit", "--data", missing])):
        report["startup"][label] = _wall(cmd, env, args.repeats)
        print(f"{label}: {report['startup'][label]['median_s']:.3f} s", flush=True)
    report["modes"] = {}
    for mode in modes:
        report["modes"][mode] = _run_mode(mode, work, args.seed, args.pythonhashseed, args.full)
    first = next(iter(report["modes"].values()))
    report |= {"jax": first["jax"], "backend": first["backend"], "device": first["device"]}

    out = Path(args.out or ROOT / "benchmarks" / "results" / ("overhead-full" if args.full else "overhead"))
    out.parent.mkdir(parents=True, exist_ok=True)
    text = _markdown(report)
    atomic_write(out.with_suffix(".md"), lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))
    atomic_write(out.with_suffix(".json"),
                 lambda tmp: Path(tmp).write_text(json.dumps(report, indent=2) + "\n", encoding="utf-8"))
    print(text)
    print(f"wrote {out.with_suffix('.md')} and .json")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
