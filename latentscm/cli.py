"""Command line: ``latentscm run | fit | simulate`` (also ``python -m latentscm``).

``run``
    Simulate the embedded default problem (:class:`latentscm.data.SimulationConfig` defaults), fit it,
    print the metrics and write a run folder (see :mod:`latentscm.runs`).
``fit``
    Fit a dataset in the external ``.npz`` format (see :meth:`latentscm.data.Dataset.load`).
``simulate``
    Write a simulated dataset in the external format.

Settings file (``--config FILE.toml``)::

    method = "collapsed"          # optional; --method overrides it
    d = 5                         # optional; must equal the data's number of latents

    [fit]                         # settings of the method (e.g. CollapsedConfig), passed as config=
    steps = 1500

    [priors]                      # passed as priors= (see latentscm.models.priors)
    edge_weight = {dist = "horseshoe", scale = 0.1}

User errors (bad data, settings or priors) print ``error: <message>`` to stderr and exit with code 2,
before any compilation starts.

Start-up: this module imports nothing but the standard library. ``--help``, argument errors, the
settings file, the method's name, the output paths and the data files (numpy) are checked before JAX,
NumPyro, ArviZ or matplotlib are imported, so that such errors return at once. Then the method's
settings and the priors are validated (this imports JAX and NumPyro).

Compilation cache: ``run`` and ``fit`` turn on JAX's persistent compilation cache (see
:func:`enable_compilation_cache`) before their first JAX work, so that a second fit of the same shapes
loads its compiled programs from disk instead of compiling them again. The folder is
``$XDG_CACHE_HOME/latentscm/jax`` (default ``~/.cache/latentscm/jax``); the environment variable
``LATENTSCM_JAX_CACHE`` moves it, and ``LATENTSCM_JAX_CACHE=off`` (or empty) turns the cache off. The
command line also compiles with XLA's backend optimisation level 1 (unless ``XLA_FLAGS`` sets a level):
about 0.6 times the compile time, the same step times. The library itself never changes JAX's configuration.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
import tomllib
from pathlib import Path

__all__ = ["main", "load_config", "UsageError", "compilation_cache_dir", "enable_compilation_cache"]

DEFAULT_METHOD = "collapsed"
# The keys of latentscm.inference.METHODS, here so that a wrong --method is reported without importing
# JAX (tests/test_cli.py checks that both agree).
METHOD_NAMES = ("collapsed", "mcmc", "biols", "amortized", "auto")
CACHE_ENV = "LATENTSCM_JAX_CACHE"
XLA_OPT_FLAG = "--xla_backend_optimization_level=1"
# Data with an image_shape (e.g. `latentscm fit --data images.npz`), or with at least AUTO_RATIO dimensions
# per latent, default to this method: `auto` fits `collapsed` (linear decoder, exact at D = 2500 pixels),
# checks it and refines with the MLP decoder when the check fails (latentscm.inference.auto, which
# documents the rule).
IMAGE_METHOD = "auto"
AUTO_RATIO = 10
EXAMPLES = ("default", "images")
QUICK_FIT = {"steps": 300}
_TOP_LEVEL = ("method", "d", "fit", "priors")


class UsageError(Exception):
    """A user error the command line reports as ``error: <message>`` with exit code 2."""


@dataclasses.dataclass(frozen=True)
class FileConfig:
    """Contents of a ``--config`` TOML file (all parts optional)."""

    method: str | None = None
    d: int | None = None
    fit: dict = dataclasses.field(default_factory=dict)
    priors: dict = dataclasses.field(default_factory=dict)


def load_config(path: str | os.PathLike | None) -> FileConfig:
    """Read and check a settings file; ``UsageError`` naming the problem when it is invalid."""
    if path is None:
        return FileConfig()
    path = Path(path)
    try:
        with path.open("rb") as fh:
            raw = tomllib.load(fh)
    except FileNotFoundError:
        raise UsageError(f"config file {path} not found") from None
    except OSError as e:
        raise UsageError(f"cannot read config file {path}: {e}") from None
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"config file {path} is not valid TOML: {e}") from None
    unknown = sorted(set(raw) - set(_TOP_LEVEL))
    if unknown:
        raise UsageError(
            f"config file {path}: unknown top-level key(s) {unknown}; allowed are {list(_TOP_LEVEL)} "
            "(method settings go in the [fit] table, priors in the [priors] table)")
    method = raw.get("method")
    if method is not None and not isinstance(method, str):
        raise UsageError(f"config file {path}: method must be a string like \"collapsed\"; got {method!r}")
    d = raw.get("d")
    if d is not None and (isinstance(d, bool) or not isinstance(d, int) or d < 1):
        raise UsageError(f"config file {path}: d must be a positive integer (the number of latents); got {d!r}")
    for table in ("fit", "priors"):
        if not isinstance(raw.get(table, {}), dict):
            raise UsageError(f"config file {path}: [{table}] must be a table; got {raw[table]!r}")
    return FileConfig(method=method, d=d, fit=dict(raw.get("fit", {})), priors=dict(raw.get("priors", {})))


def compilation_cache_dir(environ=None) -> Path | None:
    """Folder of the command line's persistent JAX compilation cache; None when it is turned off.

    ``LATENTSCM_JAX_CACHE`` when set (``off`` or empty: None), else ``$XDG_CACHE_HOME/latentscm/jax``
    (an absolute ``XDG_CACHE_HOME`` only, as the XDG specification says), else ``~/.cache/latentscm/jax``.
    """
    env = os.environ if environ is None else environ
    if CACHE_ENV in env:
        value = env[CACHE_ENV].strip()
        return None if value.lower() in ("", "off") else Path(value).expanduser()
    xdg = env.get("XDG_CACHE_HOME", "")
    base = Path(xdg) if xdg and os.path.isabs(xdg) else Path.home() / ".cache"
    return base / "latentscm" / "jax"


def enable_compilation_cache() -> Path | None:
    """Turn on JAX's persistent compilation cache in :func:`compilation_cache_dir`; returns the folder.

    Imports JAX. Every compiled program is cached, however fast its compilation (the default threshold
    of one second would skip most of a fit's programs). When ``LATENTSCM_JAX_CACHE`` is not set but JAX's
    own cache folder is (``JAX_COMPILATION_CACHE_DIR``), JAX's settings are left as they are. A folder
    that cannot be created turns the cache off with a warning. It takes effect only before the process's
    first compilation (JAX decides once per process), so ``run`` and ``fit`` call it before any JAX work.
    First it sets XLA's optimisation level (:func:`_set_xla_optimisation`), the cache on or off.
    """
    _set_xla_optimisation()
    folder = compilation_cache_dir()
    if folder is None:
        return None
    import jax

    if CACHE_ENV not in os.environ and jax.config.jax_compilation_cache_dir:
        return Path(jax.config.jax_compilation_cache_dir)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        print(f"warning: JAX compilation cache off: cannot create {folder} ({e}); set {CACHE_ENV} to "
              "another folder, or to off", file=sys.stderr)
        return None
    jax.config.update("jax_compilation_cache_dir", str(folder))
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    jax.config.update("jax_persistent_cache_min_entry_size_bytes", -1)
    return folder


def _set_xla_optimisation(environ=None) -> None:
    """Compile with XLA's backend (LLVM) optimisation level 1 unless ``XLA_FLAGS`` already sets one.

    Measured on the default problem (2 cores, benchmarks/results/overhead.md): level 1 compiles the
    programs of a fit in about 0.6 times the time of XLA's default level, with the same step times
    (the heavy arithmetic is in LAPACK calls and small fusions). Takes effect only before JAX's CPU
    backend starts, so the command line calls it first; the library leaves ``XLA_FLAGS`` alone.
    """
    env = os.environ if environ is None else environ
    flags = env.get("XLA_FLAGS", "")
    if "--xla_backend_optimization_level" not in flags:
        env["XLA_FLAGS"] = (flags + " " + XLA_OPT_FLAG).strip()


# ---------------------------------------------------------------------------------------------------
# shared steps
# ---------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Settings:
    method: str
    fit: dict  # the method's settings as read: the [fit] table, or the resumed run's
    priors: dict
    d: int | None
    described: dict | None = None  # settings and priors as run.json records them (set by _resolve)
    config: object = None  # the method's settings object, built once by _resolve
    prior_spec: object = None  # the parsed priors (PriorSpec), built by _resolve


def _settings(args, quick: bool = False, default_method: str = DEFAULT_METHOD) -> _Settings:
    """Merge the settings file with the flags and check the method's name (no JAX: see :func:`_resolve`)."""
    cfg = load_config(args.config)
    method = args.method or cfg.method or default_method
    fit_cfg = dict(cfg.fit)
    if quick and method == "auto":  # both fits short
        fit_cfg |= {part: dict(fit_cfg.get(part) or {}) | QUICK_FIT for part in ("linear", "mlp")}
    elif quick:
        fit_cfg |= QUICK_FIT
    if method not in METHOD_NAMES:
        raise UsageError(f"unknown method {method!r}; available methods: {', '.join(sorted(METHOD_NAMES))}")
    return _Settings(method, fit_cfg, cfg.priors, cfg.d)


def _resolve(args, settings: _Settings) -> _Settings:
    """Build the method's settings object and the priors, once: the first JAX work, after the compilation
    cache is on. A resumed run keeps the description its run.json holds."""
    enable_compilation_cache()
    from latentscm.inference.api import make_config
    from latentscm.models.priors import parse_priors

    try:
        config = make_config(settings.method, settings.fit)
        prior_spec = parse_priors(settings.priors)
    except (ValueError, TypeError) as e:
        where = f" (from {args.config})" if args.config else ""
        raise UsageError(f"{e}{where}") from None
    described = settings.described or {"method": settings.method, "config": dataclasses.asdict(config),
                                       "priors": prior_spec.describe()}
    return dataclasses.replace(settings, config=config, prior_spec=prior_spec, described=described)


def _check_d(settings: _Settings, dataset, source: str) -> None:
    if settings.d is not None and settings.d != dataset.d:
        raise UsageError(f"the config file says d = {settings.d} but {source} has d = {dataset.d} latents "
                         f"(columns of targets); fix or remove 'd' in the config file")


def _check_outputs(args) -> None:
    """Fail before the (long) fit when an output path cannot be written."""
    if args.out and Path(args.out).exists() and not Path(args.out).is_dir():
        raise UsageError(f"--out {args.out} exists and is not a folder; give a folder for the run's files")
    json_path = getattr(args, "json", None)
    if json_path and Path(json_path).is_dir():
        raise UsageError(f"--json {json_path} is a folder; give a file name such as metrics.json")


def _load(path, what: str):
    from latentscm.data import DataError, Dataset

    try:
        return Dataset.load(path)
    except DataError as e:
        raise UsageError(f"{what}: {e}") from None


def _check_fit_inputs(dataset, settings: _Settings) -> None:
    from latentscm.inference.api import check_fit_inputs

    try:
        check_fit_inputs(dataset, settings.method, settings.config)
    except ValueError as e:
        raise UsageError(str(e)) from None


# ---------------------------------------------------------------------------------------------------
# subcommands
# ---------------------------------------------------------------------------------------------------


# ---------------------------------------------------------------------------------------------------
# parser
# ---------------------------------------------------------------------------------------------------


def _nonneg_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected a non-negative integer, got {value}")
    return value


def _pos_int(text: str) -> int:
    value = _nonneg_int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    return value


def _fit_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--method", help=f"inference method (default: the config file's, else {IMAGE_METHOD!r} for images "
                                    f"and data with D >= {AUTO_RATIO} d, else {DEFAULT_METHOD!r})")
    p.add_argument("--config", metavar="FILE.toml", help="settings file with optional method, d, [fit], [priors]")
    p.add_argument("--seed", type=_nonneg_int, default=0, help="seed of simulation and fit (default 0)")
    p.add_argument("--out", metavar="DIR", help="run folder (default runs/<timestamp>-<method>-seed<N>)")


class _Parser(argparse.ArgumentParser):
    """argparse with the command line's one error form: ``error: <message>`` on stderr, exit code 2
    (argparse's own form prints the usage block first). Sub-commands use the same class."""

    def error(self, message):
        self.exit(2, f"error: {self.prog}: {message} (see '{self.prog} --help')\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="latentscm", description="Bayesian inference of latent linear-Gaussian structural causal models.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="{run,fit,compare,simulate}")

    p = sub.add_parser("run", help="simulate the default problem, fit it, write a run folder",
                       description="Simulate the embedded default problem (paired design, d=5, D=100, ER-1 graph, "
                                   "linear projection, 2000 pairs in 20 multi-target regimes, Gaussian "
                                   "intervention values of scale 2), fit it, print metrics, write a run folder.")
    _fit_options(p)
    p.add_argument("--quick", action="store_true",
                   help=f"few optimisation steps ({QUICK_FIT}), for smoke tests; overrides the config file")
    p.add_argument("--example", choices=EXAMPLES, default="default",
                   help="'default': the problem above; 'images': the same SCM design rendered as 50x50 "
                        "'chemistry' images (d=5, D=2500), fitted with "
                        f"{IMAGE_METHOD!r} by default (the decoder chosen by the evidence), plus generation under "
                        "do(z_j = -7) (generation.png)")


    p = sub.add_parser("fit", help="fit a dataset in the external .npz format",
                       description="Fit a dataset in the external .npz format; metrics are computed where it "
                                   "carries the ground truth (weights, z).")
    p.add_argument("--data", metavar="FILE.npz", help="the dataset to fit (required unless --resume)")
    p.add_argument("--resume", metavar="DIR", help="continue the interrupted fit whose run folder is DIR "
                                                   "(same data, settings and seed; from its last checkpoint)")
    p.add_argument("--test", metavar="FILE.npz", help="held-out dataset; adds heldout_nll to the metrics")
    _fit_options(p)
    p.add_argument("--json", metavar="FILE", help="also write the metrics as one flat JSON object here")


    p = sub.add_parser("compare", help="fit several methods on the same data; write a comparison table and plot",
                       description="Fit each method with each seed on the same dataset (one process per fit) and "
                                   "write comparison.csv, comparison.md and comparison.png (held-out NLL beside "
                                   "PSIS-LOO on the training data).")
    p.add_argument("--data", required=True, metavar="FILE.npz", help="the dataset to fit")
    p.add_argument("--methods", required=True, help="comma-separated method names, e.g. collapsed,mcmc")
    p.add_argument("--seeds", default="0", help="comma-separated seeds (default 0)")
    p.add_argument("--test", metavar="FILE.npz", help="held-out dataset; adds heldout_nll")
    p.add_argument("--out", metavar="DIR", help="output folder (default runs/<timestamp>-compare)")


    p = sub.add_parser("simulate", help="write a simulated dataset in the external .npz format")
    p.add_argument("--out", required=True, metavar="FILE.npz", help="training set destination")
    p.add_argument("--test-out", metavar="FILE.npz", help="also write the test set (new regimes) here")
    p.add_argument("--seed", type=_nonneg_int, default=0)
    p.add_argument("--d", type=_pos_int, default=5, help="number of latents (default 5)")
    p.add_argument("--D", type=_pos_int, help="observation dimension (default 100; d for --projection so)")
    p.add_argument("--design", choices=("paired", "iid"), default="paired")
    p.add_argument("--projection", choices=("linear", "mlp", "so", "chemistry", "chemistry_shift"), default="linear",
                   help="chemistry / chemistry_shift: 50x50 images (D = 2500, pixel noise 0.05)")
    p.add_argument("--scale", choices=("default", "saturating"), default="default",
                   help="images only: 'saturating' draws a stronger SCM (value scale 1, weights 1-3, noise sd "
                        "1.5-2.5) whose latents the renderer clips often (image_config(..., scale=...))")
    p.add_argument("--graph", choices=("er", "sf"), default="er")
    p.add_argument("--edges-per-node", type=float, default=1.0, metavar="K")
    p.add_argument("--targets", choices=("multi", "single"), default="multi")
    p.add_argument("--values", choices=("gaussian", "uniform", "zero"), default="gaussian")
    p.add_argument("--n-regimes", type=_pos_int, help="interventional training regimes (default 20)")
    p.add_argument("--rows-per-regime", type=_pos_int,
                   help="rows per regime (default 100); paired design: n_pairs = n_regimes * rows_per_regime")
    p.add_argument("--n-rows", type=_pos_int, help="training rows of the iid design (default 4000)")
    p.add_argument("--n-test-regimes", type=_nonneg_int, help="regimes of the test set (default 5)")

    return parser


def entry() -> None:
    """The console script (``latentscm``, ``python -m latentscm``): :func:`main`, then :func:`exit_now`: the
    interpreter's own teardown of JAX's and XLA's objects and of the thousands of imported modules took 0.6 s of
    a 10 s warm run. Nothing is pending by then: every output is written atomically and closed before ``main``
    returns (an exception still ends the process normally)."""
    exit_now(main())


def exit_now(code: int) -> None:
    """Flush stdout and stderr, then end the process at once with ``code`` (``os._exit``: no teardown)."""
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.flush()
        except (OSError, ValueError):  # a closed pipe (e.g. `latentscm run | head`): nothing left to say there
            pass
    os._exit(code)


def main(argv: list[str] | None = None) -> int:
    """Run the command line; returns the exit code (0 ok, 2 user error)."""
    os.environ.setdefault("MPLBACKEND", "Agg")  # plots are only written to files
    argv = list(sys.argv[1:] if argv is None else argv)
    args = build_parser().parse_args(argv)
    args.argv = argv
    from . import cli_commands  # the commands' work, imported once the arguments parse

    try:
        return getattr(cli_commands, f"cmd_{args.command}")(args)
    except UsageError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
