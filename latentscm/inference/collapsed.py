"""``collapsed``: SVI on the collapsed model (linear decoder, z integrated out) with a learned order.

Guide (site names as in :mod:`latentscm.models.collapsed`):

* every continuous site (``edge_weight``, ``noise_scale``, ``decoder_weight``, ``decoder_bias``,
  ``obs_scale``, and horseshoe scales when used): mean-field Gaussian in unconstrained space;
* ``P``: ``q(P | L, sigma)``, Gumbel-matching with logits from an MLP of ``(L, log sigma)``; hard
  Hungarian samples in the forward pass, straight-through Gumbel-Sinkhorn gradients; ``log q(P)``
  by the Bethe permanent (:class:`~latentscm.models.permutation.GumbelSinkhornPermutation`).

The Sinkhorn temperature anneals geometrically from ``temperature[0]`` to ``temperature[1]``.
Variational parameters start from the data-driven initialisation of
:mod:`latentscm.inference.initialise` (order proposal included: the MLP's output bias starts at
``logit_scale`` times the proposed permutation); ``num_restarts`` optimisations run vectorised, the
others from random orders, and the best final ELBO wins. ``logit_scale = None`` (the default) means 4,
or 8 with ``use_pairs``: the paired likelihood is so sharp that the wrong orders a margin of 4 still
draws (about ``d e^-4`` of them) pull the weights off the proposal (docs/collapsed.md).

With ``decoder="identity"`` (x is z itself, ``D == d``: causal discovery on observed variables) the
model is :func:`~latentscm.models.observed.identity_model` and the guide has no decoder sites.
"""

from __future__ import annotations

import dataclasses
import functools
import threading
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from .._validate import (KNOWN_ORDER, TEMPERATURES, check_fields, flag, integer, integer_or, number, one_of,
                         optional, path, setting)
from ..metrics import edge_probabilities
from ..models.collapsed import (Units, centered_stats, collapsed_model, group_block, group_rows, make_units,
                                unit_latent_posterior, unit_stats)
from ..models.factors import unit_factors
from ..models.precision_form import pattern_row_moments
from ..models.target_sets import TargetStats
from ..models.observed import identity_model, identity_stats
from ..models.priors import parse_priors
from ._datarules import check_decoder, check_known_order, check_pairs, check_unknowns
from .decoders import IdentityDecoder, LinearDecoder
from .diagnostics import FitDiagnosticWarning, posterior_moment_problems, restart_problems
from .guide import (draw, initial_params, make_sampler, mean_field_guide, scale_updates, site_specs,
                    softplus_inv, step_factors)
from .initialise import initialise
from .order_mixture import mixture_from_guide, prepare_weighing
from .posterior import Posterior
from .sharding import pad_leading, resolve_devices, shard_stats, shard_units
from .svi import SVIProblem, checkpoint_for, geometric_schedule, loss_tail, seed_keys, solve
from .targets import has_observational_regime, hard_targets, open_target_stats, target_draws

_SUMMARY_NUMBERS = 5e6  # latent summaries: (draws, rows, k (D + d)) arrays (residuals k D wide) at most this big
_SHARDED_DRAWS = 8  # latent summaries over several devices: draws per call
MIXTURE_MAX_D = 5  # order_posterior = "auto": orders weighed up to this d (docs/collapsed.md, the order posterior)
REFIT_MAX_D = 5  # refit_on_misfit None: one refit up to this d, none above (docs/collapsed.md)
PAIR_WARMUP_MAX_D = 5  # pair_warmup None: half the steps warm up to this d, none above (docs/collapsed.md, pairs)
_PATTERN_BUCKET = 4  # patterns and factor blocks padded to a multiple of this with empty ones (they add exactly
# nothing): datasets of one design, whose count of distinct patterns varies by a few, share compiled programs
_PAIR_SHRINK = 10.0  # the guide's sds divided by this where the paired steps take over from the warm-up: the paired
# likelihood pins the weights and the decoder about ten times more tightly (docs/collapsed.md, pairs)
_ROW_BUCKET = 1024  # latent summaries: rows per block at most (blocks: the power of two that holds the median pattern)


@dataclass(frozen=True)
class CollapsedConfig:
    """Settings of the ``collapsed`` method (bounds declared per field; ``logit_scale`` None: :func:`order_margin`)."""

    steps: int = setting(1000, integer(1))
    learning_rate: float = setting(0.01, number(gt=0))
    lr_final_fraction: float = setting(0.05, number(gt=0, le=1))
    num_particles: int = setting(4, integer(1))
    num_restarts: int = setting(2, integer(1))
    num_draws: int = setting(200, integer(2))
    temperature: tuple[float, float] = setting((1.0, 0.2), TEMPERATURES)
    gumbel_scale: float = setting(1.0, number(gt=0))
    logit_scale: float | None = setting(None, optional(number(gt=0), "for the default margin"))
    mlp_hidden: int = setting(32, integer(1))
    tau: float = setting(0.1, number(gt=0))
    use_pairs: bool = setting(False, flag())
    pair_warmup: float | None = setting(None, optional(number(ge=0, lt=1), "for 0.5 up to d = 5 and 0 above"))
    refit_on_misfit: int | None = setting(None, optional(integer(0), "for 1 up to d = 5 and 0 above"))
    unknown_values: str = setting("error", one_of("error", "latent"))
    value_scale: float = setting(2.0, number(gt=0))
    unknown_targets: str = setting("error", one_of("error", "latent"))
    target_rate: float = setting(0.2, number(gt=0, lt=1))
    max_targets: int | None = setting(None, optional(integer(1), "for no limit"))
    target_sets: str = setting("auto", one_of("auto", "all", "near_start"))
    order_init: str = setting("proposal", one_of("proposal", "random"))
    order_posterior: str = setting("auto", one_of("auto", "mixture", "guide"))
    mixture_orders: int = setting(256, integer(1))
    mixture_draws: int = setting(256, integer(10))
    init_scale: str = setting("auto", one_of("auto", "fixed", "scale", "data"))
    known_order: tuple[int, ...] | None = setting(None, KNOWN_ORDER)
    chunk: int = setting(100, integer(1))
    checkpoint_dir: str | None = setting(None, optional(path(), "for no checkpoints"))
    checkpoint_every: int = setting(200, integer(1))
    devices: int | str = setting(1, integer_or(1, "all"))
    decoder: str = setting("linear", one_of("linear", "identity"))
    precision: str = setting("float64", one_of("float32", "float64"))

    def __post_init__(self):
        check_fields(self, "collapsed")
        if self.decoder == "identity" and (self.use_pairs or self.unknown_values != "error"
                                           or self.unknown_targets != "error"):
            raise ValueError("collapsed: decoder='identity' (x is z) supports neither use_pairs nor "
                             "unknown_values='latent' nor unknown_targets='latent'; use decoder='linear' for those")

    def check_dataset(self, dataset):
        """Refuse, before any work, a dataset these settings cannot fit (DataError / ValueError)."""
        check_decoder("collapsed", self.decoder, dataset)
        check_known_order("collapsed", self.known_order, dataset.d)
        check_pairs("collapsed", self.use_pairs, dataset)
        check_unknowns("collapsed", dataset, targets=self.unknown_targets == "latent",
                       values=self.unknown_values == "latent", use_pairs=self.use_pairs, precision=self.precision)


def scaled_settings(d: int, use_pairs: bool = False) -> dict:
    """Settings of ``collapsed`` for ``d`` latents, by a fixed rule (no per-run tuning).

    Up to d = 10: the defaults. Beyond, one step costs O(R (d D^2 + d^3)) per particle and restart,
    while the data-driven start already holds the order and the weights (see ``docs/collapsed.md``,
    scaling), so the budget goes to refining them: one restart (the second one only checks a random
    start), fewer particles, 500 steps, and the order logits start at ``log(20 d)`` times the
    proposed permutation (at least 4): with Gumbel noise of scale 1, a draw then moves a node off
    the proposal with probability about ``d e^-logit_scale = 1/20``. Beyond d = 30 the decoder starts at
    its data-driven scale (``init_scale = "data"``; at d = 50 the fixed 0.01 start lost the order).
    With ``use_pairs`` the margin is at least 8, the paired default (at d = 20 a margin of 6 lost the
    order on 2 of 3 paired knockout problems: E-SHD 17 and 15). Returns a dict for ``fit(config=...)``
    (``use_pairs`` included when true).
    """
    pairs = {"use_pairs": True} if use_pairs else {}
    if d <= 10:
        return pairs
    margin = max(8.0 if use_pairs else 4.0, float(np.log(20 * d)))
    out = {"num_restarts": 1, "num_particles": 2 if d <= 30 else 1, "steps": 500, "num_draws": 100,
           "logit_scale": round(margin, 2)} | pairs
    return out | ({"init_scale": "data"} if d > 30 else {})


class CollapsedBuild(NamedTuple):
    """:func:`build_collapsed`'s result: the SVI problem and what the posterior is assembled from."""

    problem: SVIProblem
    config: CollapsedConfig  # "auto" settings resolved
    ini: object  # the data-driven start (:class:`~latentscm.inference.initialise.Initialisation`)
    units: tuple  # the rows the statistics came from, as units
    tstats: TargetStats | None  # regimes whose targets are inferred
    devices: list
    known: jax.Array | None  # a fixed order


def build_collapsed(dataset, config: CollapsedConfig, priors, seed, ini=None) -> CollapsedBuild:
    """The collapsed SVI problem: statistics, start, model, guide, initial parameters and optimiser.

    Arrays are made in the precision of the steps: call it, and :func:`~latentscm.inference.svi.solve`,
    under ``jax.enable_x64(config.precision == "float64" or config.decoder == "identity")``. ``ini``: the
    data-driven start when already made (:func:`~latentscm.inference.initialise.initialise`)."""
    d = dataset.d
    rng = np.random.default_rng(seed)
    identity = config.decoder == "identity"
    open_rows = None if dataset.target_unknown is None else dataset.target_unknown.any(1)
    if config.init_scale == "auto":  # inferred targets: latents in the unknown-value gauge, often >> 1: steps too;
        # pairs: the start scale did not make LOO reliable and cost one hidden-value fit its graph (docs/collapsed.md)
        auto = "data" if open_rows is not None else "fixed" if config.use_pairs else "scale"
        config = dataclasses.replace(config, init_scale=auto)
    with jax.enable_x64(True):  # the start and the statistics in float64 (numpy), whatever the steps'
        if ini is None:
            ini = initialise(dataset.x, dataset.targets, dataset.values, order=config.known_order, observed=identity,
                             tau=config.tau, value_scale=config.value_scale, seed=seed,
                             unknown=dataset.target_unknown, regime=dataset.regime, target_rate=config.target_rate)
    devices = resolve_devices(config.devices)  # > 1: the statistics' rows split over devices
    units, stats, tstats = _statistics(dataset, config, ini, devices)
    known = None if config.known_order is None else jnp.asarray(config.known_order)
    model = _model_of(config, priors, known)
    data = (stats, tstats)
    specs = site_specs(model, 1.0, data)
    guide = mean_field_guide(specs, d, learn_order=known is None, gumbel_scale=config.gumbel_scale)
    params0 = initial_params(specs, ini, d, config, rng)
    warm, steps = warmup_split(config, d)  # with pairs: the paired steps, after the warm-up's
    rate = optax.cosine_decay_schedule(config.learning_rate, steps, config.lr_final_fraction)
    if warm:  # after a warm-up the paired steps ramp their rate up from 0 (see _pair_warmup)
        rate = optax.warmup_cosine_decay_schedule(0.0, config.learning_rate, steps // 5, steps,
                                                  config.learning_rate * config.lr_final_fraction)
    optimizer = optax.adam(rate)
    if config.init_scale == "data":
        optimizer = optax.chain(optimizer, scale_updates(step_factors(params0, ini, config)))
    problem = SVIProblem(model, guide, params0, optimizer, geometric_schedule(*config.temperature, steps),
                         data, config.num_particles,
                         identity=program_identity("collapsed.step", config, priors, devices))
    return CollapsedBuild(problem, config, ini, units, tstats, devices, known)


def warmup_split(config, d) -> tuple[int, int]:
    """``(warm-up steps, paired steps)`` for ``d`` latents: with ``use_pairs``, the first ``pair_warmup`` of ``steps``
    (None: 0.5 up to ``PAIR_WARMUP_MAX_D``, else 0; at least one step left for the pairs) fit the rows as
    independent; without pairs ``(0, steps)``."""
    fraction = config.pair_warmup if config.pair_warmup is not None else 0.5 if d <= PAIR_WARMUP_MAX_D else 0.0
    warm = min(round(config.steps * fraction), config.steps - 1) if config.use_pairs else 0
    return warm, config.steps - warm


def _pair_warmup(dataset, config, built, priors, seed, key, progress):
    """The paired fit's warm-up (docs/collapsed.md, pairs): ``config`` (as given, "auto" settings unresolved) without
    pairs, for the warm-up's steps, from the same data-driven start, with ``key`` folded with 1 (``key`` itself drives
    the paired steps). Its final parameters start the paired steps (every restart its own), the guide's sds divided
    by ``_PAIR_SHRINK``; the paired steps' learning rate ramps up from 0 over their first fifth
    (:func:`build_collapsed`). Returns ``(built with those parameters, the warm-up's SVIFit)``; ``(built, None)``
    without a warm-up. With a checkpoint folder the warm-up keeps its own file, ``checkpoint-unpaired.npz``."""
    warm_steps = warmup_split(built.config, dataset.d)[0]
    if warm_steps == 0:
        return built, None
    warm_config = dataclasses.replace(config, use_pairs=False, steps=warm_steps)
    warm = build_collapsed(dataset, warm_config, priors, seed, ini=built.ini)
    checkpoint = checkpoint_for("collapsed", warm_config, priors, seed, dataset)
    if checkpoint is not None:
        checkpoint = checkpoint._replace(path=Path(checkpoint.path).with_name("checkpoint-unpaired.npz"))
    fit = solve(warm.problem, jax.random.fold_in(key, 1), warm_steps, chunk=config.chunk, progress=progress,
                desc="collapsed (pairs off)", checkpoint=checkpoint)
    params = {name: softplus_inv(np.logaddexp(0.0, value) / _PAIR_SHRINK) if name.endswith("_rawscale") else value
              for name, value in fit.params.items()}  # sd = softplus(rawscale)
    params = jax.tree.map(lambda a, like: jnp.asarray(a, like.dtype), params, built.problem.params)
    return built._replace(problem=built.problem._replace(params=params)), fit


def program_identity(name, config, priors, devices):
    """The key of a fit's program across processes (:func:`~latentscm.inference.programs.program`): its name, the
    settings and the priors (every setting but the checkpoint's can shape a program); None (traced in each
    process) when the statistics are split over several devices or a prior holds a distribution object."""
    if len(devices) > 1 or any(p.distribution is not None for p in priors.priors.values()):
        return None
    settings = {f.name: getattr(config, f.name) for f in dataclasses.fields(config)
                if f.name not in ("checkpoint_dir", "checkpoint_every", "refit_on_misfit")}
    return f"{name}|{type(config).__name__}{settings!r}|{priors!r}"


def _statistics(dataset, config, ini, devices):
    """The model's data: the units of the rows whose targets are all known, their statistics (identity
    decoder: of x itself) as device arrays in the steps' precision, and the target statistics of the others."""
    open_rows = None if dataset.target_unknown is None else dataset.target_unknown.any(1)
    with jax.enable_x64(True):  # the statistics in float64 (numpy), whatever the steps'
        closed = slice(None) if open_rows is None else ~open_rows  # rows whose targets are all known
        units = make_units(dataset.x[closed], dataset.targets[closed], dataset.values[closed],
                           dataset.pair[closed] if config.use_pairs else None) if not np.all(open_rows) else ()
        if config.decoder == "identity":  # x is z: the SCM density of the observed latents, O(d^3) statistics
            return units, identity_stats(jnp.asarray(dataset.x, jnp.float64), dataset.targets, dataset.values), None
        stats = tuple(unit_stats(u) if config.precision == "float64" else centered_stats(u, np.float32)
                      for u in units)
        tstats = None if open_rows is None else open_target_stats(dataset, config, ini.targets)
    # in the precision of the steps; padded (_PATTERN_BUCKET), then split over the devices
    stats = tuple(shard_stats(jax.device_put(pad_leading(st, _PATTERN_BUCKET)), devices) for st in stats)
    if tstats is not None:  # arrays: the model's data (arguments of the compiled programs, not constants)
        tstats = TargetStats(*jax.device_put((tstats.stats, tstats.candidates, tstats.log_prior)))
    return units, stats, tstats


def _model_of(config, priors, known):
    """The NumPyro model ``model(temperature, (stats, tstats))`` (the temperature is the guide's; ``tstats``: the
    :class:`TargetStats` of the regimes whose targets are inferred, or None). The data are the compiled
    programs' arguments, not constants: a program then depends on the data's shapes only (XLA also compiles
    large constants slowly)."""
    def model(temperature, data):
        stats, tstats = data
        if config.decoder == "identity":
            identity_model(stats, priors=priors, tau=config.tau, order=known)
        else:
            collapsed_model(stats, priors=priors, tau=config.tau, value_scale=config.value_scale, order=known,
                            unknown=tstats)

    return model


class _WeighingAhead:
    """The order mixture's weighing program (its shapes do not depend on the fit) traced, lowered and compiled in
    a thread while the SVI steps run: :meth:`start` (``solve``'s ``after_compile``) starts it; :meth:`settle`
    returns once its tracing is over (NumPyro's handler stack is global: the main thread traces no model
    before); :meth:`weighing` waits for the compiled :class:`~.order_mixture.Weighing`."""

    def __init__(self, model, stats, fixed, draws_per_order, identity):
        self.traced = threading.Event()
        self._job = (model, stats, fixed, draws_per_order, identity)
        self._future = None

    def _work(self):
        model, stats, fixed, draws_per_order, identity = self._job
        try:
            with jax.enable_x64(True):  # a thread's own setting
                weighing = prepare_weighing(model, stats, fixed, draws_per_order=draws_per_order, lower=True,
                                            identity=identity)
        finally:
            self.traced.set()
        return weighing._replace(weigher=weighing.weigher.compile())  # XLA's compilation touches no handler

    def settle(self):
        """Wait until the thread, if started, has traced."""
        if self._future is not None:
            self.traced.wait()

    def start(self):
        pool = ThreadPoolExecutor(1, thread_name_prefix="latentscm-weighing")
        self._future = pool.submit(self._work)
        pool.shutdown(wait=False)

    def weighing(self, fixed):
        """The compiled weighing, holding the decoder at ``fixed``."""
        return self._future.result()._replace(fixed=fixed)


def _weighing_ahead(built, dataset, priors):
    """A :class:`_WeighingAhead` for this fit (the statistics under the start's decoder give the shapes)."""
    with jax.enable_x64(True):
        start = jax.tree.map(lambda a: np.asarray(a)[0], built.problem.params)  # the decoder's shapes
        model, stats, fixed = weighing_problem(built, dataset, priors, start)
    return _WeighingAhead(model, stats, fixed, built.config.mixture_draws, _weighing_identity(built, priors))


def _weighing_identity(built, priors):
    return program_identity("collapsed.weighing", built.config, priors, built.devices)


def weighing_problem(built, dataset, priors, params):
    """What the order mixture weighs with (:func:`~.order_mixture.mixture_from_guide`): ``(model, data,
    fixed decoder)``. With a linear decoder held at the guide's median ``A, b, s``, x's density factorises
    into its coordinates ``y = (x - b) V`` in the row space of ``A = U S V^T`` (a collapsed model with the
    d x d decoder ``A V`` and no bias) and an orthogonal remainder that does not depend on the SCM: so the
    orders are weighed on d-dimensional statistics, at O(d^3) per evaluation whatever D."""
    if built.config.decoder == "identity":
        return built.problem.model, built.problem.data, {}
    A = np.asarray(params["decoder_weight_loc"], np.float64)
    b = np.asarray(params["decoder_bias_loc"], np.float64)
    s = float(np.exp(params["obs_scale_loc"]))  # obs_scale is positive: the guide's loc is its log
    V = np.linalg.svd(A, full_matrices=False)[2].T  # (D, d)
    projected = dataclasses.replace(dataset, x=((np.asarray(dataset.x, np.float64) - b) @ V).astype(np.float32),
                                    projection=None, image_shape=None)
    config = dataclasses.replace(built.config, precision="float64")  # weighed in float64 (call under x64)
    _, stats, tstats = _statistics(projected, config, built.ini, built.devices[:1])
    fixed = {"decoder_weight": A @ V, "decoder_bias": np.zeros(dataset.d), "obs_scale": np.asarray(s)}  # numpy: no
    # host-side JAX work (each such op is a compilation of its own)
    return _model_of(config, priors, built.known), (stats, tstats), fixed


def fit_collapsed(dataset, *, config: CollapsedConfig, priors=None, seed=0, progress=True):
    """Fit the collapsed model to ``dataset``; returns a :class:`Posterior`. A fit that fails the posterior
    predictive check of its second moments is redone with twice the steps (:func:`refits` times at most) and the
    better of the two kept (:func:`_refit`)."""
    start = time.perf_counter()
    posterior = _fit_once(dataset, config, parse_priors(priors), seed, progress)
    if not refits(config, dataset):
        return posterior
    problems = posterior_moment_problems(dataset, posterior)
    posterior.info["moment_problems"] = problems  # fit(...) reports them
    if not problems:
        return posterior
    return _refit(dataset, config, priors, seed, progress, posterior, start)


def _fit_once(dataset, config, priors, seed, progress):
    """One fit of ``config`` (``priors`` parsed): the start, the steps, the draws, the order weighing, the latents."""
    start = time.perf_counter()
    d = dataset.d
    # float64: everything under x64. float32: the statistics (centred per pattern) and the
    # latent summaries in float64, the SVI steps in float32 (the identity decoder's O(d^3) model: float64)
    x64 = config.precision == "float64" or config.decoder == "identity"
    keys = seed_keys(seed, 3 + config.num_restarts)  # SVI, the posterior's draws, each restart's check, mixture
    with jax.enable_x64(x64):
        built = build_collapsed(dataset, config, priors, seed)
        built, warm = _pair_warmup(dataset, config, built, priors, seed, keys[0], progress)
        config = built.config
        warm_steps, paired_steps = warmup_split(config, d)  # (0, steps) without pairs
        ahead = _weighing_ahead(built, dataset, priors) if uses_mixture(config, d) else None
        try:
            svi = solve(built.problem, keys[0], paired_steps, chunk=config.chunk, progress=progress,
                        desc="collapsed", checkpoint=checkpoint_for("collapsed", config, priors, seed, dataset),
                        after_compile=None if ahead is None else ahead.start)
        finally:  # the main thread traces no model before (also when the steps failed)
            if ahead is not None:
                ahead.settle()
        sampler = make_sampler(built.problem.guide, config.temperature[1], config.num_draws, d, built.known,
                               program_identity("collapsed.draws", config, priors, built.devices))
        draws = draw(sampler, svi.restart(svi.best), keys[1])
        # the other restarts' graphs (own keys: the posterior's draws are unchanged)
        others = {r: draw(sampler, svi.restart(r), keys[2 + r]) for r in range(config.num_restarts) if r != svi.best}
        restart_probs = np.stack([edge_probabilities(np.asarray(others.get(r, draws)["W"], np.float64))
                                  for r in range(config.num_restarts)])
    mixture = None
    if uses_mixture(config, d):  # the calibrated order posterior replaces the guide's orders (SCM sites)
        with jax.enable_x64(True):
            best = svi.restart(svi.best)
            model, stats, fixed = weighing_problem(built, dataset, priors, best)
            weighing = (prepare_weighing(model, stats, fixed, draws_per_order=config.mixture_draws,
                                         identity=_weighing_identity(built, priors))
                        if ahead is None else ahead.weighing(fixed))
            seeds = np.concatenate([draws["order"]] + [o["order"] for o in others.values()])
            mixture = mixture_from_guide(weighing, stats, best, draws, keys[-1], seeds=seeds,
                                         num_draws=config.num_draws, max_orders=config.mixture_orders, seed=seed)
            draws = {**draws, **mixture.draws}
    draws = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in draws.items()}
    diagnostics = _diagnostics(dataset, config, built.ini, svi, restart_probs, mixture)
    targets, units = {}, built.units
    with jax.enable_x64(True):
        if built.tstats is not None:  # each draw's exact target posterior; latents given the most probable sets
            targets = {"regimes": np.unique(dataset.regime),
                       "target_draws": target_draws(built.tstats, draws, config, dataset)}
            hard = hard_targets(dataset, targets["regimes"], targets["target_draws"].mean(0))
            units = make_units(dataset.x, hard, np.where(hard > dataset.targets, np.nan, dataset.values),
                               dataset.pair if config.use_pairs else None)
        if config.decoder == "identity":
            latent_mean, latent_sd, decoder = np.asarray(dataset.x, np.float64), np.zeros((dataset.N, d)), IdentityDecoder()
        else:
            latent_mean, latent_sd = latent_summaries(dataset, draws, config.tau, units=units,
                                                      value_scale=config.value_scale, devices=built.devices)
            decoder = LinearDecoder(draws["decoder_weight"], draws["decoder_bias"], draws["obs_scale"],
                                    value_scale=config.value_scale, pairs=config.use_pairs)
    return Posterior(
        method="collapsed", W=draws["W"], noise_scales=draws["noise_scale"], orders=draws["order"],
        decoder=decoder, latent_mean=latent_mean, latent_scale=latent_sd, seconds=time.perf_counter() - start,
        elbo=-np.concatenate(([] if warm is None else [warm.losses[:, svi.best]]) + [svi.losses[:, svi.best]]),
        tau=config.tau,
        info={"restart_elbo": (-svi.tail).tolist(), "best_restart": svi.best,
              "pair_warmup_steps": warm_steps, "refits": [],
              "restart_edge_probs": restart_probs.tolist(), "proposal_order": built.ini.order.tolist(),
              "units": {f"k={u.x.shape[1]}": len(u.x) for u in units}, "config": config.__dict__,
              **({"order_mixture": mixture.summary()} if mixture is not None else {}),
              "priors": priors.describe()},
        diagnostics=diagnostics, **targets,
    )


def refits(config, dataset) -> int:
    """How often a fit that fails the moment check (:func:`~.diagnostics.posterior_moment_problems`) may be
    redone with twice the steps (:func:`_refit`): ``refit_on_misfit``, or when None 1 up to :data:`REFIT_MAX_D`
    latents and 0 above (docs/collapsed.md)."""
    if config.refit_on_misfit is not None:
        return config.refit_on_misfit
    return 1 if dataset.d <= REFIT_MAX_D else 0


def _refit(dataset, config, priors, seed, progress, first, start):
    """The fit of ``config`` again with twice the steps and one refit fewer, after ``first`` failed its moment
    check; its checkpoints in the subfolder ``refit`` of ``checkpoint_dir``. Kept: the fit that passes the check,
    or when both fail the one with the higher ELBO (the best restart's tail median), or the first when the refit's
    loss became non-finite. ``info["refits"]`` records each refit (the steps and misfit before it, both ELBOs or
    the refit's error, which was kept); ``seconds`` counts both fits."""
    longer = dataclasses.replace(config, steps=2 * config.steps, refit_on_misfit=refits(config, dataset) - 1)
    if config.checkpoint_dir is not None:
        longer = dataclasses.replace(longer, checkpoint_dir=str(Path(config.checkpoint_dir) / "refit"))
    record = {"steps": config.steps, "misfit": first.info["moment_problems"][0],
              "elbo": first.info["restart_elbo"][first.info["best_restart"]]}
    try:
        second = fit_collapsed(dataset, config=longer, priors=priors, seed=seed, progress=progress)
    except FloatingPointError as e:  # the longer steps diverged: the first fit stands
        info = {**first.info, "refits": [record | {"refit_error": str(e), "kept": "first"}]}
        return dataclasses.replace(first, info=info, seconds=time.perf_counter() - start)
    if second.info.get("moment_problems") is None:  # no refit left there: its check not run yet
        second.info["moment_problems"] = posterior_moment_problems(dataset, second)
    record["refit_elbo"] = second.info["restart_elbo"][second.info["best_restart"]]
    keep = 1 if not second.info["moment_problems"] or record["refit_elbo"] >= record["elbo"] else 0
    record["kept"] = ("first", "refit")[keep]
    kept = (first, second)[keep]
    info = {**kept.info, "refits": [record] + second.info["refits"]}
    return dataclasses.replace(kept, info=info, seconds=time.perf_counter() - start)


def uses_mixture(config, d) -> bool:
    """Whether the fit weighs orders (:mod:`.order_mixture`): the order learned and ``order_posterior =
    "mixture"``, or ``"auto"`` with d <= :data:`MIXTURE_MAX_D` (beyond, the linear extensions of a sparse DAG
    number hundreds and each candidate's Hessian over the d(d+1)/2 SCM sites makes weighing them cost more
    than the fit: measured in docs/collapsed.md)."""
    if config.known_order is not None:
        return False
    return config.order_posterior == "mixture" or (config.order_posterior == "auto" and d <= MIXTURE_MAX_D)


def _diagnostics(dataset, config, ini, svi, restart_probs, mixture=None):
    """The fit's problems (restarts that disagree, the start's own evidence, no labelled control regime,
    unreliable order weights), each also raised as a :class:`FitDiagnosticWarning`."""
    anchor = 0 if config.order_init == "proposal" and config.known_order is None else None
    diagnostics = restart_problems(-loss_tail(svi.losses), restart_probs, best=svi.best, anchor=anchor,
                                   weighed=mixture is not None)
    if ini.problem:  # the start's own evidence (rival targets or orders)
        diagnostics.append(ini.problem)
    if mixture is not None:
        diagnostics += mixture.problems()
    if dataset.target_unknown is not None and not has_observational_regime(dataset):
        diagnostics.append("targets were inferred without a regime known to be observational: a node without "
                           "parents fits equally well with its targeted and free regimes swapped, so its inferred "
                           "targets may be inverted; label the control regime (targets all 0) if there is one")
    for problem in diagnostics:
        warnings.warn(f"collapsed: {problem}", FitDiagnosticWarning, stacklevel=4)  # at fit(...)
    return diagnostics


def latent_summaries(dataset, draws, tau, *, units=None, value_scale=1.0, chunk=_SHARDED_DRAWS, devices=None):
    """Mixture mean and sd (N, d) of the exact ``p(z_n | x, ...)`` over the posterior draws.

    ``units`` (from :func:`make_units`) conditions each row on its whole unit (both halves of a
    pair); by default rows are independent. ``devices`` (a list of JAX devices): the units are split
    over them (see :mod:`latentscm.inference.sharding`), ``chunk`` draws per call; on one device the draws per
    call follow from the block size (:func:`_pattern_summaries`).
    """
    if units is None:
        units = make_units(dataset.x, dataset.targets, dataset.values)
    if devices is None or len(devices) == 1:
        return _pattern_summaries(dataset, draws, tau, units, value_scale)

    def moments(W, sigma, A, b, s, u):
        mean, cov = unit_latent_posterior(u, W, sigma, A, b, s, tau, value_scale)
        var = jnp.diagonal(cov.reshape(cov.shape[0], mean[0].size, -1), axis1=-2, axis2=-1)
        return mean, var.reshape(mean.shape) + mean**2

    keys = ("W", "noise_scale", "decoder_weight", "decoder_bias", "obs_scale")
    f = jax.jit(jax.vmap(moments, in_axes=(0,) * 5 + (None,)))
    S = len(draws["W"])
    m1, m2 = np.zeros(dataset.targets.shape), np.zeros(dataset.targets.shape)
    for u in units:
        rows = u.rows.reshape(-1)
        arrays = Units(*shard_units(tuple(np.asarray(a, np.float64) for a in u[:4]), devices or jax.devices()[:1]), None)
        for i in range(0, S, chunk):
            a, b_ = f(*(draws[k][i:i + chunk] for k in keys), arrays)
            m1[rows] += np.asarray(a.sum(0))[: len(u.x)].reshape(len(rows), -1)
            m2[rows] += np.asarray(b_.sum(0))[: len(u.x)].reshape(len(rows), -1)
    mean = m1 / S
    return mean, np.sqrt(np.maximum(m2 / S - mean**2, 0.0))


def _decoded(gamma, gz, A):
    """Project the latent factors through the linear decoder: Ut (R, r, kD), G (R, kd, kD)."""
    R, r, k, _ = gamma.shape
    D = A.shape[-1]
    Ut = jnp.einsum("rpkd,dD->rpkD", gamma, A).reshape(R, r, k * D)
    G = jnp.einsum("rqkd,dD->rqkD", gz, A).reshape(R, gz.shape[1], k * D)
    return Ut, G


def _pattern_moments(W, sigma, A, b, s, masks, known, X, V, tau, value_scale):
    """First and second moments of ``p(Z | X, ...)`` for units that share one pattern.

    W ... s: one posterior draw; masks, known (1, k, d); X (n, k, D); V (n, k, d). The latent
    covariance and the Woodbury matrices depend only on the pattern, so they are formed once and
    each unit costs O(k D d): mean (n, k d) and mean^2 + var (n, k d). Same formulas as
    :func:`~latentscm.models.collapsed.unit_latent_posterior` (single rows, k = 1: in precision form,
    :func:`~latentscm.models.precision_form.pattern_row_moments`).
    """
    if X.shape[1] == 1:
        return pattern_row_moments(masks[0, 0], known[0, 0], X[:, 0], V[:, 0], W, sigma, A, b, s, tau, value_scale)
    gamma, gz = unit_factors(W, sigma, tau, value_scale, masks, known)
    Ut, G = _decoded(gamma, gz, A)
    Ut, G = Ut[0], G[0]  # (r, kD), (kd, kD)
    n, k, _ = X.shape
    r = Ut.shape[0]
    V = V.reshape(n, -1)
    e = X.reshape(n, -1) - jnp.tile(b, k) - V @ G
    Kinv = jnp.linalg.inv(s**2 * jnp.eye(r) + Ut @ Ut.T)
    gam = gamma[0].reshape(r, -1)
    mean = (e @ Ut.T) @ (Kinv @ gam) + V @ gz[0].reshape(gz.shape[1], -1)
    var = s**2 * jnp.einsum("rq,rs,sq->q", gam, Kinv, gam)
    return mean, mean**2 + var


@functools.partial(jax.jit, static_argnums=(10, 11))
def _weighted_pattern_moments(weight, *args):
    """:func:`_pattern_moments` summed over a chunk of draws, each weighted (0: padding); module level, so every
    fit in a process reuses the compiled program."""
    moments = jax.vmap(_pattern_moments, in_axes=(0,) * 5 + (None,) * 4 + (None, None))
    return tuple(jnp.einsum("s,s...->...", weight, m) for m in moments(*args))


def _pattern_summaries(dataset, draws, tau, units, value_scale):
    """:func:`latent_summaries` on one device, units grouped by pattern, each pattern's rows in blocks of one
    size (one compiled shape per unit size; as many draws per call as keep the arrays small). Cost
    O(S (R d^3 + N D d)) instead of O(S N d^3)."""
    keys = ("W", "noise_scale", "decoder_weight", "decoder_bias", "obs_scale")
    S = len(draws["W"])
    m1, m2 = np.zeros(dataset.targets.shape), np.zeros(dataset.targets.shape)
    for u in units:
        U, k, d = u.targets.shape
        patterns, g = group_rows(np.concatenate([u.targets.reshape(U, -1), u.known.reshape(U, -1)], axis=1))
        # every pattern's rows in blocks of one size (the power of two that holds the median pattern's rows, the
        # last block padded): one compiled shape per unit size, however the patterns' sizes vary. Each block
        # forms its pattern's factors again (O(d^3) per draw), so a typical pattern must fit one block: with
        # blocks of half its size the d = 200 scaling fit's summaries took 230 s instead of about 115 s
        block = group_block(g, _ROW_BUCKET)
        most = max(1, min(S, int(_SUMMARY_NUMBERS // (block * k * (u.x.shape[2] + d)))))  # draws per call at most
        step = -(-S // -(-S // most))  # as few calls as that allows, of equal size (200 draws, 186 at most: 2 x 100)
        padded = -(-S // step) * step  # the last padded with weight 0
        weight = (np.arange(padded) < S).astype(np.float64)
        chunks = {key: np.concatenate([draws[key], np.repeat(draws[key][-1:], padded - S, 0)]) for key in keys}
        for r, pattern in enumerate(patterns):
            masks = np.asarray(pattern[: k * d].reshape(1, k, d), np.float64)
            known = np.asarray(pattern[k * d:].reshape(1, k, d), np.float64)
            in_pattern = np.flatnonzero(g == r)
            for j in range(0, len(in_pattern), block):
                idx = in_pattern[j:j + block]
                X = np.zeros((block,) + u.x.shape[1:])
                V = np.zeros((block,) + u.values.shape[1:])
                X[: len(idx)], V[: len(idx)] = u.x[idx], u.values[idx]
                rows = u.rows[idx].reshape(-1)
                for i in range(0, padded, step):
                    a, b_ = _weighted_pattern_moments(weight[i:i + step], *(chunks[key][i:i + step] for key in keys),
                                                      masks, known, X, V, float(tau), float(value_scale))
                    m1[rows] += np.asarray(a)[: len(idx)].reshape(len(rows), -1)
                    m2[rows] += np.asarray(b_)[: len(idx)].reshape(len(rows), -1)
    mean = m1 / S
    return mean, np.sqrt(np.maximum(m2 / S - mean**2, 0.0))
