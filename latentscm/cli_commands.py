"""What the commands of :mod:`latentscm.cli` do once their arguments parse: ``run``, ``fit`` (and its
``--resume``), ``simulate`` and ``compare``. Like the parser, this module imports only the standard library
at import time; JAX and the rest come in through the steps that need them."""

from __future__ import annotations

import dataclasses
import json
import sys
import time
from pathlib import Path

from .cli import (AUTO_RATIO, DEFAULT_METHOD, IMAGE_METHOD, METHOD_NAMES, UsageError, _check_d,
                  _check_fit_inputs, _check_outputs, _load, _resolve, _settings, _Settings)


# What only the work after a fit imports (its checks, the run folder's ArviZ file and figures): imported in a
# thread while the fit runs, whose compiled programs release the GIL (about 1 s of a run's imports).
_AFTER_FIT = ("scipy.stats", "xarray", "arviz_base", "h5netcdf", "matplotlib.pyplot", "latentscm.plots")


def _preload(modules=_AFTER_FIT):
    """Start a daemon thread importing ``modules``; an import that fails there fails again, with its message,
    where the module is used."""
    import importlib
    import threading

    def run():
        for name in modules:
            try:
                importlib.import_module(name)
            except Exception:  # noqa: BLE001 (reported by the import that needs it)
                pass

    thread = threading.Thread(target=run, name="latentscm-preload", daemon=True)
    thread.start()
    return thread


def _fit(dataset, settings: _Settings, seed: int):
    import warnings

    from latentscm.inference import fit
    from latentscm.inference.diagnostics import FitDiagnosticWarning

    _preload()
    try:
        with warnings.catch_warnings():  # printed as "warning: ..." lines after the metrics (see _finish)
            warnings.simplefilter("ignore", FitDiagnosticWarning)
            posterior = fit(dataset, settings.method, config=settings.config, priors=settings.prior_spec, seed=seed,
                            progress=sys.stderr.isatty())
    except ValueError as e:  # DataError, PriorError and invalid settings are ValueErrors
        raise UsageError(str(e)) from None
    choice = posterior.info.get("decoder_choice")
    if choice is not None:  # method auto: what it chose and why (also in run.json)
        print(f"decoder: {choice['reason']}", flush=True)
    return posterior


def _default_out(method: str, seed: int) -> Path:
    base = Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-{method}-seed{seed}"
    out, k = base, 1
    while out.exists():
        k += 1
        out = base.with_name(f"{base.name}-{k}")
    return out


def _print_metrics(metrics: dict) -> None:
    width = max(len(k) for k in metrics)
    for key, value in metrics.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        print(f"{key:<{width}}  {value}")


def _finish(args, posterior, metrics, dataset, *, save_dataset, info) -> None:
    from latentscm.criticism import criticise
    from latentscm.runs import write_json, write_run

    criticism = criticise(posterior, dataset)  # LOO and the regime check on the training data
    metrics |= criticism.metrics
    _print_metrics(metrics)
    for problem in list(getattr(posterior, "diagnostics", [])) + criticism.problems:  # the evidence disagrees
        print(f"warning: {problem}")
    for refit in posterior.info.get("refits", []):  # which fit was kept, and why it was redone
        failed = f" (the refit failed: {refit['refit_error']})" if "refit_error" in refit else ""
        print(f"note: refitted with {2 * refit['steps']} steps, kept the {refit['kept']} fit{failed}: the "
              f"{refit['steps']}-step fit failed its {refit['misfit']}")
    for note in criticism.notes:  # about the criticism's own estimates
        print(f"note: {note}")
    out = Path(args.out) if args.out else _default_out(posterior.method, args.seed)
    args.out = str(out)
    info = dict(info) | {k: posterior.info[k] for k in ("decoder_choice", "refits") if posterior.info.get(k)}
    write_run(out, posterior, metrics, dataset, save_dataset=save_dataset, info=info, criticism=criticism)
    print(f"run folder: {out}")
    if getattr(args, "json", None):
        Path(args.json).parent.mkdir(parents=True, exist_ok=True)
        write_json(args.json, metrics)
        print(f"metrics JSON: {args.json}")


def cmd_run(args) -> int:
    from latentscm.data import SimulationConfig, image_config, simulate
    from latentscm.runs import run_metrics

    images = args.example == "images"
    settings = _settings(args, quick=args.quick, default_method=IMAGE_METHOD if images else DEFAULT_METHOD)
    _check_outputs(args)
    sim = image_config("chemistry", d=5) if images else SimulationConfig()
    if settings.d is not None and settings.d != sim.d:
        raise UsageError(f"the config file says d = {settings.d} but the embedded default problem has "
                         f"d = {sim.d} latents; fix or remove 'd' in the config file")
    settings = _resolve(args, settings)
    train, test = simulate(sim, args.seed)
    print(f"simulated: {train.N} training rows (paired, {sim.n_regimes} regimes), {test.N} test rows, "
          f"d = {train.d}, D = {train.D}, seed {args.seed}", flush=True)
    posterior = _fit(train, settings, args.seed)
    metrics = run_metrics(posterior, train, test, seed=args.seed)
    figure = None
    if images:  # generation under unseen interventions do(z_j = -7): error and figure grid
        from latentscm.generation import generation_error, plot_generation_grid

        gen = generation_error(posterior, train, value=-7.0, seed=args.seed)
        metrics |= {"gen_error": gen["error"], "gen_error_baseline": gen["baseline_error"]}
        figure = plot_generation_grid(gen["truth"], gen["generated"], train.image_shape, baseline=gen["baseline"],
                                      labels=[f"do(z{j} = -7)" for j in range(train.d)])
    info = {"command": "run", "argv": args.argv, "seed": args.seed, "example": args.example,
            "simulation": dataclasses.asdict(sim), **settings.described}
    _finish(args, posterior, metrics, train, save_dataset=True, info=info)
    if figure is not None:
        from latentscm.plots import save_figure

        path = save_figure(figure, Path(args.out) / "generation.png", dpi=80)
        print(f"generation figure: {path}")
    return 0


def _resume_args(args) -> _Settings:
    """Settings and paths of the interrupted run in ``args.resume`` (its run.json)."""
    folder = Path(args.resume)
    info_path = folder / "run.json"
    if not info_path.is_file():
        raise UsageError(f"--resume {folder}: no run.json there; give the run folder of an earlier "
                         "'latentscm fit' (it is written when the fit starts)")
    try:
        info = json.loads(info_path.read_text())
        args.data, args.test, args.seed = info["data"], info["test"], int(info["seed"])
        method, config, priors = info["method"], dict(info["config"]), dict(info["priors"])
    except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise UsageError(f"--resume {folder}: run.json is not a run description ({e})") from None
    args.out = str(folder)
    config.pop("checkpoint_dir", None)
    return _Settings(method, config, priors, None, {"method": method, "config": config, "priors": priors})


def cmd_fit(args) -> int:
    if args.resume and args.data:
        raise UsageError("give either --data (a new fit) or --resume DIR (continue an interrupted one), not both")
    if not args.resume and not args.data:
        raise UsageError("--data FILE.npz is required (or --resume DIR to continue an interrupted fit)")
    settings = _resume_args(args) if args.resume else _settings(args)
    _check_outputs(args)
    dataset = _load(args.data, "--data")
    if not args.resume and (dataset.image_shape or dataset.D >= AUTO_RATIO * dataset.d):
        # images and D >> d: the decoder chosen by the evidence (auto) unless a method is named
        settings = _settings(args, default_method=IMAGE_METHOD)
    _check_d(settings, dataset, str(args.data))
    test = None
    if args.test:
        test = _load(args.test, "--test")
        if test.d != dataset.d or test.D != dataset.D:
            raise UsageError(f"--test {args.test} has d = {test.d}, D = {test.D} but --data {args.data} has "
                             f"d = {dataset.d}, D = {dataset.D}; they must match")
    # everything above needs no JAX; from here on it is imported
    settings = _resolve(args, settings)
    _check_fit_inputs(dataset, settings)
    from latentscm.runs import run_metrics, write_json

    out = Path(args.out) if args.out else _default_out(settings.method, args.seed)
    args.out = str(out)
    info = {"command": "fit", "argv": args.argv, "seed": args.seed, "data": str(Path(args.data).resolve()),
            "test": None if args.test is None else str(Path(args.test).resolve()), **settings.described}
    if "checkpoint_dir" in {f.name for f in dataclasses.fields(settings.config)}:
        settings = dataclasses.replace(settings, config=dataclasses.replace(settings.config, checkpoint_dir=str(out)))
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "run.json", info)  # written first, so that --resume can find the run
    print(f"run folder: {out}" + (" (resuming)" if args.resume else ""), flush=True)
    posterior = _fit(dataset, settings, args.seed)
    metrics = run_metrics(posterior, dataset, test, seed=args.seed)
    _finish(args, posterior, metrics, dataset, save_dataset=False, info=info)
    return 0


def cmd_simulate(args) -> int:
    from latentscm.data import IMAGE_LAYOUTS, IMAGE_SCALES, SimulationConfig, simulate

    fields = {"d": args.d, "graph": args.graph, "edges_per_node": args.edges_per_node, "design": args.design,
              "targets": args.targets, "values": args.values, "projection": args.projection}
    image = args.projection in IMAGE_LAYOUTS
    fields["D"] = args.D if args.D is not None else (args.d if args.projection == "so" else 2500 if image else 100)
    if image:
        fields["obs_noise"] = 0.05  # pixel noise on the [0, 1] scale, as in the seed paper
        fields |= IMAGE_SCALES[args.scale]
    elif args.scale != "default":
        raise UsageError(f"--scale {args.scale} is for images; give --projection chemistry or chemistry_shift")
    for name in ("n_regimes", "rows_per_regime", "n_rows", "n_test_regimes"):
        if getattr(args, name) is not None:
            fields[name] = getattr(args, name)
    if args.design == "paired":
        fields["n_pairs"] = (fields.get("n_regimes", SimulationConfig.n_regimes)
                             * fields.get("rows_per_regime", SimulationConfig.rows_per_regime))
    try:
        config = SimulationConfig(**fields)
    except ValueError as e:
        raise UsageError(str(e)) from None
    if args.test_out and config.n_test_regimes == 0:
        raise UsageError("--test-out needs a test set: give --n-test-regimes 1 or more, or leave --test-out out")
    train, test = simulate(config, args.seed)
    for path, data, name in ((args.out, train, "training set"), (args.test_out, test, "test set")):
        if path is None:
            continue
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        data.save(path)
        print(f"wrote {name}: {path} ({data.N} rows, d = {data.d}, D = {data.D})")
    return 0


def cmd_compare(args) -> int:
    methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    unknown = sorted(set(methods) - set(METHOD_NAMES))
    if not methods or unknown:
        raise UsageError(f"--methods: unknown or missing method(s) {unknown or methods}; available methods: "
                         f"{', '.join(sorted(METHOD_NAMES))}")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        raise UsageError(f"--seeds must be comma-separated integers such as 0,1,2; got {args.seeds!r}") from None
    for path, flag in ((args.data, "--data"), (args.test, "--test")):
        if path is not None:
            _load(path, flag)  # validate before any fit starts
    out = Path(args.out) if args.out else Path("runs") / f"{time.strftime('%Y%m%d-%H%M%S')}-compare"
    import warnings

    from latentscm.compare import compare  # pandas; each fit runs in its own child process

    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always", UserWarning)
            table = compare(args.data, methods, seeds=seeds, test=args.test, out_dir=out)
    except (ValueError, RuntimeError) as e:
        raise UsageError(str(e)) from None
    summary = table.drop(columns="seed").groupby("method", sort=False).mean(numeric_only=True)
    print(summary.round(4).to_string())
    for w in caught:  # e.g. unreliable LOO
        print(f"warning: {w.message}")
    print(f"comparison: {out / 'comparison.md'} (and .csv, .png)")
    return 0
