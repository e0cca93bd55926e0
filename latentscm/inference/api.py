"""``fit(dataset, method=...)``: the one entry point, and the registry of methods."""

from __future__ import annotations

import dataclasses
import warnings
from importlib import import_module
from typing import Callable, NamedTuple

from .._validate import normalise
from ..data import DataError, Dataset
from ..models.priors import parse_priors
from .diagnostics import FitDiagnosticWarning, posterior_moment_problems


class Method(NamedTuple):
    """A method's module (in ``latentscm.inference``), imported when its settings or fit are first asked for: the
    methods' modules import what they need (``amortized``: Equinox), and a fit pays only for its own."""

    module: str
    config_name: str  # frozen dataclass of settings
    fit_name: str  # fit(dataset, *, config, priors, seed, progress) -> Posterior
    decoders: tuple[str, ...]  # decoders it supports

    @property
    def config(self) -> type:
        return getattr(import_module(f"{__package__}.{self.module}"), self.config_name)

    @property
    def fit(self) -> Callable:
        return getattr(import_module(f"{__package__}.{self.module}"), self.fit_name)


METHODS = {
    "collapsed": Method("collapsed", "CollapsedConfig", "fit_collapsed", ("linear", "identity")),
    "mcmc": Method("mcmc", "MCMCConfig", "fit_mcmc", ("linear", "identity")),
    "biols": Method("biols", "BiolsConfig", "fit_biols", ("linear", "mlp")),
    "amortized": Method("amortized", "AmortizedConfig", "fit_amortized", ("linear", "mlp")),
    # collapsed's linear decoder, checked, refined with amortized's MLP decoder when the check fails
    "auto": Method("auto", "AutoConfig", "fit_auto", ("linear", "mlp")),
}


def make_config(method, config=None):
    """Validate ``method`` and turn ``config`` (None, dict, or the method's dataclass) into its settings.

    A dict's values may come from TOML or JSON: lists become tuples and numpy scalars Python numbers
    (:func:`latentscm._validate.normalise`) before the dataclass checks them.
    """
    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}; available methods: {sorted(METHODS)}")
    cls = METHODS[method].config
    if config is None:
        return cls()
    if isinstance(config, cls):
        return config
    if not isinstance(config, dict):
        raise TypeError(f"config for {method!r} must be a dict or {cls.__name__}; got {type(config).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(config) - known)
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for method {method!r}; known settings: {sorted(known)}")
    return cls(**{name: normalise(value) for name, value in config.items()})


def check_fit_inputs(dataset, method, config=None):
    """Validate a dataset against a method and its settings before any work; returns the settings.

    The rules every method shares (a Dataset, enough rows) are checked here, the method's own by its
    settings' ``check_dataset``. Raises DataError / ValueError with a message that says what is wrong
    and how to fix it.
    """
    if not isinstance(dataset, Dataset):
        raise DataError(f"fit expects a latentscm.data.Dataset; got {type(dataset).__name__}. "
                        "Use Dataset.load(path) or Dataset.from_arrays(x, targets, values).")
    cfg = make_config(method, config)
    if dataset.N < dataset.d + 2:
        raise DataError(f"{method}: {dataset.N} row{'s' if dataset.N != 1 else ''} cannot identify d = {dataset.d} "
                        f"latents; fitting needs at least d + 2 = {dataset.d + 2} rows")
    cfg.check_dataset(dataset)
    return cfg


def fit(dataset, method="collapsed", *, config=None, priors=None, seed=0, progress=True):
    """Infer the posterior over a latent SCM from ``dataset`` with the named method.

    Parameters
    ----------
    dataset : Dataset
        x (N, D) with targets (N, d) and values (N, d).
    method : str
        A key of ``METHODS``.
    config : dict or the method's config dataclass, optional
        Method settings (see e.g. ``CollapsedConfig``); unknown names are an error.
    priors : dict, path to a TOML file with a ``[priors]`` table, or PriorSpec, optional
    seed : int
        Seeds every random choice of the fit.
    progress : bool
        Show a progress bar.

    Everything is validated before any compilation starts. Afterwards, for linear and identity decoders,
    the posterior predictive check of each target pattern's second moments
    (:func:`~latentscm.inference.diagnostics.posterior_moment_problems`) runs on the draws, unless the method ran
    it itself (``info["moment_problems"]``); a failure is added to ``Posterior.diagnostics`` and emitted as a
    ``FitDiagnosticWarning``.
    """
    cfg = check_fit_inputs(dataset, method, config)
    spec = parse_priors(priors)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    posterior = METHODS[method].fit(dataset, config=cfg, priors=spec, seed=seed, progress=progress)
    problems = posterior.info.get("moment_problems")  # a method that ran the check itself
    if problems is None:
        problems = posterior_moment_problems(dataset, posterior)
    if not problems:  # None: the check does not apply
        return posterior
    for problem in problems:
        warnings.warn(f"{method}: {problem}", FitDiagnosticWarning, stacklevel=2)
    return dataclasses.replace(posterior, diagnostics=list(posterior.diagnostics) + problems)
