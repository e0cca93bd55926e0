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
import time
import warnings
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

from .._validate import (KNOWN_ORDER, TEMPERATURES, check_fields, flag, integer, integer_or, number, one_of,
                         optional, path, setting)
from ..models.collapsed import (TargetStats, Units, centered_stats, collapsed_model, group_rows, make_units,
                                unit_factors, unit_latent_posterior, unit_stats)
from ..models.observed import identity_model, identity_stats
from ..models.permutation import GumbelSinkhornPermutation, order_from_matrix
from ..metrics import edge_probabilities
from ..models.priors import parse_priors
from ..models.scm import tril_size, tril_to_matrix, weights_from_order
from ._datarules import check_decoder, check_known_order, check_pairs, check_unknowns
from .diagnostics import FitDiagnosticWarning, restart_problems
from .initialise import initialise
from .targets import has_observational_regime, hard_targets, open_target_stats, target_draws
from .posterior import Posterior
from .sharding import resolve_devices, shard_stats, shard_units
from .svi import init as svi_init
from .svi import (best_restart, checkpoint_for, elbo_loss, geometric_schedule, loss_tail, make_step, run_svi,
                  seed_keys)

_INIT_SCALE = 0.01
_SUMMARY_NUMBERS = 5e6  # latent summaries: (draws, rows, k (D + d)) arrays (residuals k D wide) at most this big


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
    unknown_values: str = setting("error", one_of("error", "latent"))
    value_scale: float = setting(2.0, number(gt=0))
    unknown_targets: str = setting("error", one_of("error", "latent"))
    target_rate: float = setting(0.2, number(gt=0, lt=1))
    max_targets: int | None = setting(None, optional(integer(1), "for no limit"))
    target_sets: str = setting("auto", one_of("auto", "all", "near_start"))
    order_init: str = setting("proposal", one_of("proposal", "random"))
    init_scale: str = setting("auto", one_of("auto", "fixed", "data"))
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


def _mlp_logits(mlp, l_vec, sigma):
    """Order logits (d, d) from the (L, sigma) sample: one hidden tanh layer."""
    h = jnp.tanh(jnp.concatenate([l_vec, jnp.log(sigma)]) @ mlp["w1"] + mlp["b1"])
    d = sigma.shape[-1]
    return (h @ mlp["w2"] + mlp["b2"]).reshape(d, d)


def _site_specs(model, *args):
    """Shapes and supports of the model's continuous latent sites (P excluded), traced abstractly."""
    specs = {}

    def record():
        tr = handlers.trace(handlers.seed(model, 0)).get_trace(1.0, *args)
        for name, site in tr.items():
            if site["type"] == "sample" and not site["is_observed"] and name != "P":
                specs[name] = (tuple(site["value"].shape), site["fn"].support)
        return 0.0

    jax.eval_shape(record)
    return specs


def make_guide(specs, d, *, learn_order, gumbel_scale):
    """The guide: mean-field Gaussians for ``specs`` and, when ``learn_order``, q(P | L, sigma)."""

    def guide(temperature, *args):
        values = {}
        for name, (shape, support) in specs.items():
            loc = numpyro.param(f"{name}_loc", jnp.zeros(shape))
            scale = jax.nn.softplus(numpyro.param(f"{name}_rawscale", jnp.zeros(shape)))
            base = dist.Normal(loc, scale).to_event(len(shape))
            values[name] = numpyro.sample(name, dist.TransformedDistribution(base, biject_to(support)))
        if learn_order:
            mlp = numpyro.param("order_mlp", {})
            logits = _mlp_logits(mlp, values["edge_weight"], values["noise_scale"])
            numpyro.sample("P", GumbelSinkhornPermutation(logits, temperature, gumbel_scale))

    return guide


def _softplus_inv(y):
    return np.log(np.expm1(y))


def order_margin(config) -> float:
    """The order logits' starting margin of a ``collapsed`` or ``amortized`` config: its ``logit_scale``, or
    when that is None 8 with ``use_pairs`` (the paired likelihood is much sharper), else 4."""
    return config.logit_scale if config.logit_scale is not None else 8.0 if config.use_pairs else 4.0


def _initial_params(specs, ini, d, config, rng):
    """Stacked (restart axis first) initial variational parameters."""
    R = config.num_restarts
    hidden = config.mlp_hidden
    n_in = tril_size(d) + d
    out = {}
    for r in range(R):
        order = ini.order if (r == 0 and config.order_init == "proposal") or config.known_order else rng.permutation(d)
        W_pos = ini.W[np.ix_(order, order)]  # W_pos[a, b]: position a -> position b
        L = W_pos.T[np.tril_indices(d, -1)] if r == 0 or config.known_order else np.zeros(tril_size(d))
        locs = {
            "edge_weight": L, "noise_scale": np.log(ini.sigma), "decoder_weight": ini.A,
            "decoder_bias": ini.b, "obs_scale": np.log(ini.obs_scale),
        }
        params = {}
        for name, (shape, support) in specs.items():
            loc = locs.get(name)
            if loc is None:  # hierarchical scales: start at the unconstrained value of 1 (or 0.1 for global)
                loc = np.full(shape, np.log(0.1) if name.endswith("global_scale") else 0.0)
            params[f"{name}_loc"] = np.asarray(loc, np.float64).reshape(shape)
            scale = np.broadcast_to(_decoder_scales(ini, config).get(name, _INIT_SCALE), shape)
            params[f"{name}_rawscale"] = _softplus_inv(np.asarray(scale, np.float64))
        if config.known_order is None:
            P0 = np.eye(d)[order]
            params["order_mlp"] = {
                "w1": rng.normal(size=(n_in, hidden)) / np.sqrt(n_in), "b1": np.zeros(hidden),
                "w2": rng.normal(size=(hidden, d * d)) * 0.01, "b2": order_margin(config) * P0.reshape(-1),
            }
        out[r] = params
    return jax.tree.map(lambda *xs: jax.device_put(np.stack(xs)), *out.values())


def _decoder_scales(ini, config):
    """With ``init_scale = "data"``: the decoder's sites start at about their posterior sd
    (``obs_scale / sqrt(sum_n z_nj^2)`` for row j of A, ``obs_scale / sqrt(N)`` for b) instead of
    0.01, and their Adam steps are scaled by the same ratio. With N rows and a sharp observation
    model the decoder's posterior sd is ~1e-4: a guide sd of 0.01, or Adam's first steps of size
    ``learning_rate`` on all d x D entries, wreck the likelihood and, at large d, the order."""
    if getattr(config, "init_scale", "fixed") != "data":  # amortized shares _initial_params, has no such setting
        return {}
    z2 = np.maximum((np.asarray(ini.z) ** 2).sum(0), 1e-12)
    return {"decoder_weight": np.minimum(ini.obs_scale / np.sqrt(z2), _INIT_SCALE)[:, None],
            "decoder_bias": min(ini.obs_scale / np.sqrt(len(ini.z)), _INIT_SCALE)}


def _step_factors(params, ini, config):
    """Per-leaf factors on Adam's updates (one restart's parameter tree): 1, or with
    ``init_scale = "data"`` the decoder's start-scale ratio and, for the order network's first layer,
    ``15 / fan-in`` (its fan-in is d(d-1)/2 + d)."""
    factors = jax.tree.map(lambda a: 1.0, jax.tree.map(lambda a: a[0], params))
    for name, scale in _decoder_scales(ini, config).items():
        if f"{name}_loc" in factors:
            shape = np.shape(params[f"{name}_loc"])[1:]
            factors[f"{name}_loc"] = jnp.asarray(np.broadcast_to(np.asarray(scale) / _INIT_SCALE, shape))
    if config.init_scale == "data" and "order_mlp" in factors:
        # an Adam step moves every first-layer weight by ~learning_rate, so the hidden layer's input
        # moves by ~learning_rate x fan-in: keep that at its d = 5 size (fan-in 15), where the
        # defaults were set
        n_in = np.shape(params["order_mlp"]["w1"])[1]
        factors["order_mlp"]["w1"] = min(1.0, (tril_size(5) + 5) / n_in)
    return factors


def _scale_updates(factors):
    """optax transformation multiplying each update leaf by a fixed factor."""
    return optax.GradientTransformation(
        lambda params: optax.EmptyState(),
        lambda updates, state, params=None: (jax.tree.map(lambda u, f: u * f, updates, factors), state))


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


def fit_collapsed(dataset, *, config: CollapsedConfig, priors=None, seed=0, progress=True):
    """Fit the collapsed model to ``dataset``; returns a :class:`Posterior`."""
    start = time.perf_counter()
    priors = parse_priors(priors)
    d = dataset.d
    rng = np.random.default_rng(seed)
    identity = config.decoder == "identity"
    # float64: everything under x64. float32: the statistics (centred per pattern) and the
    # latent summaries in float64, the SVI steps in float32 (the identity decoder's O(d^3) model: float64)
    x64 = config.precision == "float64" or identity
    open_rows = None if dataset.target_unknown is None else dataset.target_unknown.any(1)
    if config.init_scale == "auto":  # inferred targets: latents in the unknown-value gauge, often >> 1
        config = dataclasses.replace(config, init_scale="fixed" if open_rows is None else "data")
    with jax.enable_x64(True):
        ini = initialise(dataset.x, dataset.targets, dataset.values, order=config.known_order, observed=identity,
                         tau=config.tau, value_scale=config.value_scale, seed=seed,
                         unknown=dataset.target_unknown, regime=dataset.regime, target_rate=config.target_rate)
        closed = slice(None) if open_rows is None else ~open_rows  # rows whose targets are all known
        units = make_units(dataset.x[closed], dataset.targets[closed], dataset.values[closed],
                           dataset.pair[closed] if config.use_pairs else None) if not np.all(open_rows) else ()
        devices = resolve_devices(config.devices)  # > 1: the statistics' rows split over devices
        if identity:  # x is z: the SCM density of the observed latents, O(d^3) statistics
            stats = identity_stats(jnp.asarray(dataset.x, jnp.float64), dataset.targets, dataset.values)
        else:  # numpy statistics, computed in float64 in either precision
            stats = tuple(unit_stats(u) if x64 else centered_stats(u, np.float32) for u in units)
        tstats = None if open_rows is None else open_target_stats(dataset, config, ini.targets)
    with jax.enable_x64(x64):
        if not identity:  # to (sharded) device arrays, in the precision of the steps
            stats = tuple(shard_stats(jax.device_put(st), devices) for st in stats)
        if tstats is not None:
            tstats = TargetStats(jax.device_put(tstats.stats), tstats.candidates, tstats.log_prior)
        known = None if config.known_order is None else jnp.asarray(config.known_order)

        def model(temperature, stats):
            if identity:
                identity_model(stats, priors=priors, tau=config.tau, order=known)
            else:
                collapsed_model(stats, priors=priors, tau=config.tau, value_scale=config.value_scale, order=known,
                                unknown=tstats)

        specs = _site_specs(model, stats)
        guide = make_guide(specs, d, learn_order=known is None, gumbel_scale=config.gumbel_scale)
        neg_elbo = elbo_loss(config.num_particles)

        def loss_fn(params, key, temperature, stats):
            return neg_elbo(key, params, model, guide, temperature, stats)

        steps = config.steps
        schedule = geometric_schedule(*config.temperature, steps)

        params0 = _initial_params(specs, ini, d, config, rng)
        optimizer = optax.adam(optax.cosine_decay_schedule(config.learning_rate, steps, config.lr_final_fraction))
        if config.init_scale == "data":
            optimizer = optax.chain(optimizer, _scale_updates(_step_factors(params0, ini, config)))
        keys = seed_keys(seed, 2 + config.num_restarts)  # SVI, the posterior's draws, each restart's check
        state = svi_init(keys[0], params0, optimizer)
        step_fn = make_step(loss_fn, optimizer, schedule)
        checkpoint = checkpoint_for("collapsed", config, priors, seed, dataset)
        state, losses = run_svi(step_fn, state, stats, steps, chunk=config.chunk, progress=progress,
                                desc="collapsed", checkpoint=checkpoint)
        best, tail_loss = best_restart(losses)
        fitted = jax.tree.map(np.asarray, state.params)  # restart axis first
        sampler = make_sampler(guide, config.temperature[1], config.num_draws, d, known)  # one compilation
        draws = _draw(sampler, jax.tree.map(lambda a: a[best], fitted), keys[1])
        # the other restarts' graphs (own keys: the posterior's draws are unchanged)
        restart_probs = [edge_probabilities(np.asarray(
            draws["W"] if r == best else _draw(sampler, jax.tree.map(lambda a: a[r], fitted), keys[2 + r])["W"],
            np.float64)) for r in range(config.num_restarts)]
    draws = {k: v.astype(np.float64) if v.dtype.kind == "f" else v for k, v in draws.items()}
    losses = np.asarray(losses, np.float64)
    anchor = 0 if config.order_init == "proposal" and config.known_order is None else None
    diagnostics = restart_problems(-loss_tail(losses), np.stack(restart_probs), best=best, anchor=anchor)
    if ini.problem:  # the start's own evidence (inferred targets)
        diagnostics.append(ini.problem)
    if open_rows is not None and not has_observational_regime(dataset):
        diagnostics.append("targets were inferred without a regime known to be observational: a node without "
                           "parents fits equally well with its targeted and free regimes swapped, so its inferred "
                           "targets may be inverted; label the control regime (targets all 0) if there is one")
    for problem in diagnostics:
        warnings.warn(f"collapsed: {problem}", FitDiagnosticWarning, stacklevel=3)  # at fit(...)
    targets = {}
    with jax.enable_x64(True):
        if tstats is not None:  # each draw's exact target posterior; latents given the most probable sets
            targets = {"regimes": np.unique(dataset.regime),
                       "target_draws": target_draws(tstats, draws, config, dataset)}
            hard = hard_targets(dataset, targets["regimes"], targets["target_draws"].mean(0))
            units = make_units(dataset.x, hard, np.where(hard > dataset.targets, np.nan, dataset.values),
                               dataset.pair if config.use_pairs else None)
        if identity:
            latent_mean, latent_sd, decoder = np.asarray(dataset.x, np.float64), np.zeros((dataset.N, d)), {}
        else:
            latent_mean, latent_sd = latent_summaries(dataset, draws, config.tau, units=units,
                                                      value_scale=config.value_scale, devices=devices)
            decoder = {"A": draws["decoder_weight"], "b": draws["decoder_bias"], "obs_scale": draws["obs_scale"]}
    return Posterior(
        method="collapsed", W=draws["W"], noise_scales=draws["noise_scale"], orders=draws["order"],
        decoder=decoder,
        latent_mean=latent_mean, latent_scale=latent_sd, elbo=-losses[:, best],
        seconds=time.perf_counter() - start, tau=config.tau,
        info={"restart_elbo": (-tail_loss).tolist(), "best_restart": best,
              "restart_edge_probs": np.stack(restart_probs).tolist(),
              "proposal_order": ini.order.tolist(),
              "units": {f"k={u.x.shape[1]}": len(u.x) for u in units}, "config": config.__dict__, "priors": priors.describe()},
        diagnostics=diagnostics, **targets,
    )


def make_sampler(guide, temperature, num, d, known=None):
    """The jitted draw function ``(key, params) -> {site: (num, ...)}`` of a fitted guide, with the
    graph's ``W`` (num, d, d) and ``order`` (num, d) derived inside it (``P`` is not returned; ``known``:
    a fixed order, else the guide's ``P``). Build it once per fit: a new one compiles again."""
    def one(k, params):
        tr = handlers.trace(handlers.seed(handlers.substitute(guide, params), k)).get_trace(temperature)
        out = {name: site["value"] for name, site in tr.items() if site["type"] == "sample"}
        P = out.pop("P", None)
        P = jnp.eye(d)[jnp.asarray(known)] if P is None else jnp.round(P)  # straight-through: hard in value
        out["W"] = weights_from_order(tril_to_matrix(out["edge_weight"], d), P)
        out["order"] = order_from_matrix(P)
        return out

    return jax.jit(lambda key, params: jax.vmap(one, in_axes=(0, None))(jax.random.split(key, num), params))


def _draw(sampler, params, key):
    """Posterior draws of a :func:`make_sampler` as numpy arrays."""
    return {k: np.asarray(v) for k, v in sampler(key, params).items()}


def latent_summaries(dataset, draws, tau, *, units=None, value_scale=1.0, chunk=8, devices=None):
    """Mixture mean and sd (N, d) of the exact ``p(z_n | x, ...)`` over the posterior draws.

    ``units`` (from :func:`make_units`) conditions each row on its whole unit (both halves of a
    pair); by default rows are independent. ``devices`` (a list of JAX devices): the units are split
    over them (see :mod:`latentscm.inference.sharding`).
    """
    if units is None:
        units = make_units(dataset.x, dataset.targets, dataset.values)
    if devices is None or len(devices) == 1:
        return _pattern_summaries(dataset, draws, tau, units, value_scale, chunk)

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
    :func:`~latentscm.models.collapsed.unit_latent_posterior`.
    """
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


def _pattern_summaries(dataset, draws, tau, units, value_scale, chunk):
    """:func:`latent_summaries` on one device, units grouped by pattern (rows padded so that few shapes
    compile; as many draws per call as keep the arrays small). Cost O(S (R d^3 + N D d)) instead of
    O(S N d^3)."""
    keys = ("W", "noise_scale", "decoder_weight", "decoder_bias", "obs_scale")
    moments = jax.vmap(_pattern_moments, in_axes=(0,) * 5 + (None,) * 4 + (None, None))

    @functools.partial(jax.jit, static_argnums=(10, 11))
    def f(weight, *args):  # sums over a chunk of draws, each weighted (0: padding)
        return tuple(jnp.einsum("s,s...->...", weight, m) for m in moments(*args))

    S = len(draws["W"])
    m1, m2 = np.zeros(dataset.targets.shape), np.zeros(dataset.targets.shape)
    for u in units:
        U, k, d = u.targets.shape
        patterns, g = group_rows(np.concatenate([u.targets.reshape(U, -1), u.known.reshape(U, -1)], axis=1))
        for r, pattern in enumerate(patterns):
            idx = np.flatnonzero(g == r)
            n = len(idx)  # padded to a power of two, or a multiple of 1024: few shapes to compile
            size = 1 << max(3, int(np.ceil(np.log2(n)))) if n <= 1024 else -(-n // 1024) * 1024
            X = np.zeros((size,) + u.x.shape[1:])
            V = np.zeros((size,) + u.values.shape[1:])
            X[: len(idx)], V[: len(idx)] = u.x[idx], u.values[idx]
            masks = np.asarray(pattern[: k * d].reshape(1, k, d), np.float64)
            known = np.asarray(pattern[k * d:].reshape(1, k, d), np.float64)
            rows = u.rows[idx].reshape(-1)
            # chunks of equal size (the last padded with weight 0): one shape per pattern size
            step = max(1, min(S, int(_SUMMARY_NUMBERS // (size * k * (u.x.shape[2] + d)))))
            padded = -(-S // step) * step
            weight = np.arange(padded) < S
            chunks = {key: np.concatenate([draws[key], np.repeat(draws[key][-1:], padded - S, 0)])
                      for key in keys}
            for i in range(0, padded, step):
                a, b_ = f(weight[i:i + step].astype(np.float64), *(chunks[key][i:i + step] for key in keys),
                          masks, known, X, V, float(tau), float(value_scale))
                m1[rows] += np.asarray(a)[: len(idx)].reshape(len(rows), -1)
                m2[rows] += np.asarray(b_)[: len(idx)].reshape(len(rows), -1)
    mean = m1 / S
    return mean, np.sqrt(np.maximum(m2 / S - mean**2, 0.0))
