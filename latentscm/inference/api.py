"""``fit(dataset, method=...)``: the one entry point, and the registry of methods."""

from __future__ import annotations

import dataclasses
import warnings
from typing import Callable, NamedTuple

import numpy as np

from ..data import DataError, Dataset
from ..models.priors import parse_priors
from .amortized import AmortizedConfig, fit_amortized
from .biols import BiolsConfig, fit_biols
from .collapsed import CollapsedConfig, fit_collapsed
from .diagnostics import FitDiagnosticWarning, moment_problems
from .mcmc import MCMCConfig, fit_mcmc


class Method(NamedTuple):
    config: type  # frozen dataclass of settings
    fit: Callable  # fit(dataset, *, config, priors, seed, progress) -> Posterior
    decoders: tuple[str, ...]  # decoders it supports


METHODS = {
    "collapsed": Method(CollapsedConfig, fit_collapsed, ("linear", "identity")),
    "mcmc": Method(MCMCConfig, fit_mcmc, ("linear", "identity")),
    "biols": Method(BiolsConfig, fit_biols, ("linear", "mlp")),
    "amortized": Method(AmortizedConfig, fit_amortized, ("linear", "mlp")),
}


def make_config(method, config=None):
    """Validate ``method`` and turn ``config`` (None, dict, or the method's dataclass) into its settings."""
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
    return cls(**config)


def check_fit_inputs(dataset, method, config=None):
    """Validate a dataset against a method and its settings before any work; returns the settings.

    Raises DataError / ValueError with a message that says what is wrong and how to fix it.
    """
    if not isinstance(dataset, Dataset):
        raise DataError(f"fit expects a latentscm.data.Dataset; got {type(dataset).__name__}. "
                        "Use Dataset.load(path) or Dataset.from_arrays(x, targets, values).")
    cfg = make_config(method, config)
    if dataset.N < dataset.d + 2:
        raise DataError(f"{method}: {dataset.N} row{'s' if dataset.N != 1 else ''} cannot identify d = {dataset.d} "
                        f"latents; fitting needs at least d + 2 = {dataset.d + 2} rows")
    if getattr(cfg, "decoder", "linear") == "linear" and dataset.D < dataset.d:
        raise DataError(f"{method}: x has D = {dataset.D} dimensions, fewer than the d = {dataset.d} latents, so a "
                        "linear decoder cannot identify them; fit fewer latents or give more observed dimensions")
    order = getattr(cfg, "known_order", None)
    if order is not None and sorted(order) != list(range(dataset.d)):
        raise ValueError(f"{method}: known_order must be a permutation of 0..{dataset.d - 1}; got {order}")
    if getattr(cfg, "decoder", None) == "identity" and dataset.D != dataset.d:
        raise ValueError(f"{method}: decoder='identity' needs x to be the latents themselves (D == d); the "
                         f"dataset has D={dataset.D}, d={dataset.d}. Use decoder='linear'.")
    if getattr(cfg, "use_pairs", False) is True:  # every method with use_pairs: the same checks, before work
        if dataset.pair is None:
            raise DataError(f"{method}: use_pairs = true needs pair ids (dataset.pair: rows that share their "
                            "exogenous noise carry the same id); this dataset has none. Fit with use_pairs = false")
        _, counts = np.unique(dataset.pair, return_counts=True)  # at most two rows each: Dataset checks it
        if counts.max() < 2:
            raise DataError(f"{method}: use_pairs = true, but no pair id is shared by two rows; fit with "
                            "use_pairs = false")
    if dataset.num_unknown_targets:
        if getattr(cfg, "unknown_targets", "error") != "latent":
            supported = sorted(m for m, spec in METHODS.items()
                               if "unknown_targets" in {f.name for f in dataclasses.fields(spec.config)})
            raise DataError(f"{dataset.num_unknown_targets} intervention targets (row, node) are unknown. Give "
                            f"them, or infer them with the setting unknown_targets = \"latent\" (methods that "
                            f"support it: {supported})")
        if getattr(cfg, "use_pairs", False) is True:
            raise DataError(f"{method}: use_pairs = true cannot be combined with unknown targets (a pair's two "
                            "regimes would have to be enumerated jointly); fit with use_pairs = false")
        if getattr(cfg, "precision", "float64") != "float64":
            raise ValueError(f"{method}: unknown targets need precision = \"float64\" (the enumerated target "
                             "sets' densities differ by amounts float32 does not resolve)")
    if dataset.num_unknown_values and getattr(cfg, "unknown_values", "error") != "latent":
        first = int(np.argwhere(np.isnan(dataset.values))[0, 0])
        supported = sorted(m for m, spec in METHODS.items()
                           if "unknown_values" in {f.name for f in dataclasses.fields(spec.config)})
        raise DataError(f"{dataset.num_unknown_values} intervention values are missing where targets are 1 "
                        f"(first in row {first}). Provide them, or infer them as latent variables with the "
                        f"setting unknown_values = \"latent\" (methods that support it: {supported})")
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
    (:func:`~latentscm.inference.diagnostics.moment_problems`) runs on the draws; a failure is added to
    ``Posterior.diagnostics`` and emitted as a ``FitDiagnosticWarning``.
    """
    cfg = check_fit_inputs(dataset, method, config)
    spec = parse_priors(priors)
    if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
        raise ValueError(f"seed must be a non-negative integer; got {seed!r}")
    posterior = METHODS[method].fit(dataset, config=cfg, priors=spec, seed=seed, progress=progress)
    linear = ({"A", "b", "obs_scale"} <= set(posterior.decoder)
              or (not posterior.decoder and posterior.decode is None and dataset.D == dataset.d))
    if not linear:
        return posterior
    targets, values = dataset.targets, dataset.values
    if posterior.target_draws is not None:  # the check at the inferred targets (probability > 1/2)
        inferred = (posterior.target_probs > 0.5).astype(np.int8)[np.searchsorted(posterior.regimes, dataset.regime)]
        targets = np.where(dataset.target_unknown, inferred, dataset.targets)
        values = np.where(targets > dataset.targets, np.nan, values)
    problems = moment_problems(dataset.x, targets, values,
                               {"W": posterior.W, "noise_scales": posterior.noise_scales, **posterior.decoder},
                               tau=cfg.tau, value_scale=getattr(cfg, "value_scale", 1.0))
    for problem in problems:
        warnings.warn(f"{method}: {problem}", FitDiagnosticWarning, stacklevel=2)
    return dataclasses.replace(posterior, diagnostics=list(posterior.diagnostics) + problems) if problems else posterior
