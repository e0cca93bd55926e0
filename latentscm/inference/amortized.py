"""``amortized``: SVI with per-row latents and a Gaussian encoder, for linear and MLP decoders.

Model: :func:`latentscm.models.amortized.amortized_model` (rows subsampled in minibatches).
Guide:

* the global sites (``edge_weight``, ``noise_scale``, ``obs_scale``, and ``decoder_weight`` /
  ``decoder_bias`` for a linear decoder) and the order ``P``: exactly the guide of ``collapsed``
  (:func:`latentscm.inference.guide.mean_field_guide`: mean-field Gaussians, Gumbel-matching order
  distribution with logits from an MLP of ``(L, log sigma)``, straight-through gradients);
* ``z``: ``q(z_n | x_n, m_n, v_n)``, Gaussian with mean and scale (diagonal, or a full Cholesky factor)
  from an equinox MLP of ``[standardised x_n, m_n, v_n]`` (site param ``encoder$params``).

The ELBO is ``numpyro.infer.TraceMeanField_ELBO``: ``z``'s term is the closed-form KL to the SCM's
Gaussian (registered in :mod:`latentscm.models.amortized`), scaled by ``N / batch_size``.

Initialisation ("supervised", the default): interventions label the latents, since where node j is
targeted ``z_j = v_j + eta``. The encoder (fed ``x`` only, with ``m`` and ``v`` zeroed) is first fitted
by regression of ``v_j`` on ``x`` over those rows; its output ``z_hat`` (every row, every node) then
gives the order proposal and ``L``, ``sigma`` (:mod:`latentscm.inference.initialise`), and the decoder is
fitted by regression of ``x`` on ``z_hat``. The encoder's inputs for ``m`` and ``v`` start at zero
weight. ``latent_init = "linear"`` uses the principal-subspace estimate of ``initialise`` instead.
"""

from __future__ import annotations

import functools
import time
from dataclasses import dataclass
from typing import NamedTuple

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import optax
from numpyro import handlers
from numpyro.contrib.module import eqx_module

from .._validate import (KNOWN_ORDER, TEMPERATURES, check_fields, flag, integer, number, one_of, optional, path,
                         setting)
from ..models.amortized import amortized_model, intervention_scale, unit_batches
from ..models.priors import parse_priors
from ..models.scm import tril_to_matrix, weights_from_order
from .decoders import LinearDecoder, NetworkDecoder
from .encoder import (decode_point, encode, importance_log_predictive, initialise_amortized, noise_guide, pair_latents,
                      pair_units)
from .guide import draw, initial_params, make_sampler, mean_field_guide, site_specs
from .posterior import Posterior
from ._datarules import check_decoder, check_known_order, check_pairs, check_unknowns
from .svi import SVIProblem, checkpoint_for, geometric_schedule, seed_keys, solve

_INIT_Z_SCALE = 0.05


@dataclass(frozen=True)
class AmortizedConfig:
    """Settings of the ``amortized`` method (bounds declared per field, checked in ``__post_init__``).

    Besides the settings shared with ``collapsed`` (``steps``, ``learning_rate``, ``num_particles``,
    ``num_restarts``, ``num_draws``, ``temperature``, ``gumbel_scale``, ``logit_scale``, ``mlp_hidden``,
    ``tau``, ``order_init``, ``known_order``, ``chunk``, ``checkpoint_dir``, ``checkpoint_every``):
    ``batch_size`` rows per step (capped at N); ``decoder`` ``"mlp"`` or ``"linear"``;
    ``decoder_width`` / ``decoder_depth`` and ``encoder_width`` / ``encoder_depth`` of the MLPs;
    ``encoder_covariance`` ``"diag"`` or ``"full"``; ``latent_init`` ``"supervised"`` or ``"linear"``;
    ``pretrain_steps`` of the supervised encoder and decoder fits; ``heldout_draws`` and
    ``heldout_particles`` of the importance-sampled held-out NLL (MLP decoder);
    ``unknown_values`` ``"error"`` or ``"latent"`` (missing values: ``v_j ~ N(0, value_scale^2)``,
    integrated out; the encoder is told which values are missing) and ``value_scale`` as in
    ``collapsed``; ``use_pairs``: rows with a shared ``pair`` id share their exogenous noise (plate
    ``pairs``; ``batch_size`` then counts rows over pairs and single rows).
    """

    steps: int = setting(2000, integer(1))
    learning_rate: float = setting(0.003, number(gt=0))
    batch_size: int = setting(256, integer(1))
    num_particles: int = setting(2, integer(1))
    num_restarts: int = setting(1, integer(1))
    num_draws: int = setting(200, integer(2))
    decoder: str = setting("mlp", one_of("mlp", "linear"))
    decoder_width: int = setting(64, integer(1))
    decoder_depth: int = setting(2, integer(1))
    encoder_width: int = setting(64, integer(1))
    encoder_depth: int = setting(2, integer(1))
    encoder_covariance: str = setting("diag", one_of("diag", "full"))
    latent_init: str = setting("supervised", one_of("supervised", "linear"))
    pretrain_steps: int = setting(1500, integer(0))
    temperature: tuple[float, float] = setting((1.0, 0.2), TEMPERATURES)
    gumbel_scale: float = setting(1.0, number(gt=0))
    logit_scale: float = setting(4.0, number(gt=0))
    mlp_hidden: int = setting(32, integer(1))
    tau: float = setting(0.1, number(gt=0))
    order_init: str = setting("proposal", one_of("proposal", "random"))
    known_order: tuple[int, ...] | None = setting(None, KNOWN_ORDER)
    heldout_draws: int = setting(50, integer(1))
    heldout_particles: int = setting(64, integer(1))
    chunk: int = setting(100, integer(1))
    checkpoint_dir: str | None = setting(None, optional(path(), "for no checkpoints"))
    checkpoint_every: int = setting(200, integer(1))
    unknown_values: str = setting("error", one_of("error", "latent"))
    value_scale: float = setting(2.0, number(gt=0))
    use_pairs: bool = setting(False, flag())

    def __post_init__(self):
        check_fields(self, "amortized")

    def check_dataset(self, dataset):
        """Refuse, before any work, a dataset these settings cannot fit (DataError / ValueError)."""
        check_decoder("amortized", self.decoder, dataset)
        check_known_order("amortized", self.known_order, dataset.d)
        check_pairs("amortized", self.use_pairs, dataset)
        check_unknowns("amortized", dataset, values=self.unknown_values == "latent")


class AmortizedBuild(NamedTuple):
    """:func:`build_amortized`'s result: the SVI problem and what the posterior is assembled from."""

    problem: SVIProblem
    ini: object  # the start (:class:`~latentscm.inference.initialise.Initialisation`)
    encoder0: eqx.Module
    decoder0: eqx.Module | None  # the network decoder's start (None: linear)
    units: tuple | None  # (singles, pairs) row indices with use_pairs
    known: jax.Array | None  # a fixed order
    x_norm: tuple  # per-feature mean and sd of x (the encoder's input standardisation)
    batch: int


def _data(dataset, config):
    """The arrays the model and guide see (float32), the pair units (with ``use_pairs``) and x's scaling."""
    x = jnp.asarray(dataset.x, jnp.float32)
    x_loc, x_scale = x.mean(0), x.std(0) + 1e-6
    targets = jnp.asarray(dataset.targets, jnp.float32)
    values = jnp.asarray(np.where(dataset.targets > 0, np.nan_to_num(dataset.values), 0.0), jnp.float32)
    vknown = jnp.asarray(~((dataset.targets > 0) & np.isnan(dataset.values)), jnp.float32)
    data = {"x": x, "x_std": (x - x_loc) / x_scale, "targets": targets, "values": values,
            "missing": targets * (1 - vknown)}
    units = pair_units(dataset) if config.use_pairs else None  # pair ids validated by check_fit_inputs
    if units is not None:
        data |= {"singles": jnp.asarray(units[0]), "pairs": jnp.asarray(units[1])}
    return data, units, (np.asarray(x_loc), np.asarray(x_scale))


def _guide(base_guide, encoder0, config, units, d, N, batch, known):
    """The full guide: ``base_guide`` (global sites and order) plus the encoder's ``q(z_n | x_n, m_n, v_n)``
    for each row, or with pairs each pair's first row and its shared-noise transform for the second."""
    latent_values = config.unknown_values == "latent"

    def guide(temperature, data=None):
        tr = handlers.trace(base_guide).get_trace(temperature)
        if data is None:
            return
        enc = eqx_module("encoder", encoder0)
        t, v, miss = data["targets"], data["values"], data["missing"] if latent_values else None

        def q(r):
            return enc.distribution(data["x_std"][r], t[r], v[r], None if miss is None else miss[r])

        if units is None:
            with numpyro.plate("rows", N, subsample_size=batch) as idx:
                numpyro.sample("z", q(idx))
            return
        singles, pairs = data["singles"], data["pairs"]
        bs, bp = unit_batches(len(singles), len(pairs), batch)
        if len(singles):
            with numpyro.plate("rows", len(singles), subsample_size=bs) as idx:
                numpyro.sample("z", q(singles[idx]))
        if len(pairs):
            P = tr["P"]["value"] if known is None else jnp.eye(d)[known]
            W = weights_from_order(tril_to_matrix(tr["edge_weight"]["value"], d), P)
            sigma = tr["noise_scale"]["value"]
            scale = jnp.broadcast_to(intervention_scale(config.tau, t, None if miss is None else 1 - miss,
                                                        config.value_scale), t.shape)
            with numpyro.plate("pairs", len(pairs), subsample_size=bp) as idx:
                a, b = pairs[idx, 0], pairs[idx, 1]
                numpyro.sample("z_pair", q(a))
                numpyro.sample("u", noise_guide(enc, data["x_std"][b], t[b], v[b], None if miss is None else miss[b],
                                                W, sigma, t[a], scale[b]))

    return guide


def build_amortized(dataset, config: AmortizedConfig, priors, seed) -> AmortizedBuild:
    """The amortized SVI problem: data, supervised start, model, guide, initial parameters and optimiser."""
    d, N = dataset.d, dataset.N
    rng = np.random.default_rng(seed)
    data, units, x_norm = _data(dataset, config)
    ini, encoder0, decoder0 = initialise_amortized(dataset, config, seed_keys(seed, 4)[0], data["x_std"],
                                                   data["targets"], data["values"])
    known = None if config.known_order is None else jnp.asarray(config.known_order)
    batch = min(config.batch_size, N)
    decoder_arg = "linear" if config.decoder == "linear" else decoder0
    latent_values = config.unknown_values == "latent"

    def model(temperature, data):
        amortized_model(data["x"], priors=priors, decoder=decoder_arg, order=known, batch_size=batch,
                        targets=data["targets"], values=data["values"], tau=config.tau,
                        value_scale=config.value_scale, known=1 - data["missing"] if latent_values else None,
                        units=None if units is None else (data["singles"], data["pairs"]))

    specs = site_specs(model, 1.0, data, exclude=("P", "z", "z_pair", "u"))
    base_guide = mean_field_guide(specs, d, learn_order=known is None, gumbel_scale=config.gumbel_scale)
    guide = _guide(base_guide, encoder0, config, units, d, N, batch, known)
    params0 = initial_params(specs, ini, d, config, rng)
    nets = {"encoder$params": eqx.filter(encoder0, eqx.is_inexact_array)}
    if decoder0 is not None:
        nets["decoder$params"] = eqx.filter(decoder0, eqx.is_inexact_array)
    params0 |= jax.tree.map(lambda a: jnp.broadcast_to(a, (config.num_restarts,) + a.shape), nets)
    params0 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), params0)
    # A short warm-up keeps the first Adam steps from knocking the pretrained networks off their fit.
    optimizer = optax.adam(optax.linear_schedule(config.learning_rate / 100, config.learning_rate, 100))
    problem = SVIProblem(model, guide, params0, optimizer, geometric_schedule(*config.temperature, config.steps),
                         data, config.num_particles, mean_field=True)
    return AmortizedBuild(problem, ini, encoder0, decoder0, units, known, x_norm, batch)


def _latents(encoder, dataset, config, x_norm, draws, key):
    """Latent means and sds (N, d) of ``dataset``'s rows: the encoder's, with x standardised as in the fit
    (``x_norm``); with ``use_pairs``, each pair's row b through the pair's transform."""
    data, units, _ = _data(dataset, config)
    data["x_std"] = (data["x"] - jnp.asarray(x_norm[0])) / jnp.asarray(x_norm[1])
    missing = data["missing"] if config.unknown_values == "latent" else None
    latent_mean, latent_sd = encode(encoder, data["x_std"], data["targets"], data["values"], missing)
    if units is not None and len(units[1]):  # row b of each pair: through the pair's transform
        b = units[1][:, 1]
        latent_mean[b], latent_sd[b] = pair_latents(encoder, data, units[1], draws, config, key)
    return latent_mean, latent_sd


def fit_amortized(dataset, *, config: AmortizedConfig, priors=None, seed=0, progress=True, latents_for=None):
    """Fit the amortized model to ``dataset``; returns a :class:`Posterior`. Its latent summaries are those of
    ``latents_for``'s rows (a Dataset with the same d and D, e.g. all rows when ``dataset`` is a split of
    them; default ``dataset``)."""
    start = time.perf_counter()
    priors = parse_priors(priors)
    _, key_svi, key_draw, key_predictive = seed_keys(seed, 4)  # the first: the start's (build_amortized)
    built = build_amortized(dataset, config, priors, seed)
    d = dataset.d
    svi = solve(built.problem, key_svi, config.steps, chunk=config.chunk, progress=progress, desc="amortized",
                checkpoint=checkpoint_for("amortized", config, priors, seed, dataset))
    params = svi.restart(svi.best)
    draws = draw(make_sampler(built.problem.guide, config.temperature[1], config.num_draws, d, built.known), params,
                 key_draw)
    encoder = eqx.combine(params["encoder$params"], built.encoder0)
    latent_mean, latent_sd = _latents(encoder, dataset if latents_for is None else latents_for, config,
                                      built.x_norm, draws, key_draw)
    units = built.units
    if config.decoder == "linear":
        decoder = LinearDecoder(draws["decoder_weight"], draws["decoder_bias"], draws["obs_scale"],
                                value_scale=config.value_scale, pairs=config.use_pairs)
    else:
        net = eqx.combine(params["decoder$params"], built.decoder0)
        log_predictive = functools.partial(
            importance_log_predictive, encoder, net, built.x_norm,
            {"W": draws["W"], "noise_scale": draws["noise_scale"], "obs_scale": draws["obs_scale"]},
            config.tau, config.heldout_draws, config.heldout_particles, key_predictive,
            config.value_scale if config.unknown_values == "latent" else None)
        decoder = NetworkDecoder({"obs_scale": draws["obs_scale"]}, decode=functools.partial(decode_point, net),
                                 log_predictive=log_predictive)
    return Posterior(
        method="amortized", W=draws["W"], noise_scales=draws["noise_scale"], orders=draws["order"],
        decoder=decoder, latent_mean=latent_mean, latent_scale=latent_sd, elbo=-svi.losses[:, svi.best],
        seconds=time.perf_counter() - start, tau=config.tau,
        info={"restart_elbo": (-svi.tail).tolist(), "best_restart": svi.best,
              "proposal_order": built.ini.order.tolist(), "decoder_kind": config.decoder, "batch_size": built.batch,
              "latents": "encoder mean and sd of q(z_n | x_n, targets_n, values_n)" + (
                  "; each pair's row b: Monte Carlo mean and sd of z_b(z_a, u) over q and the posterior draws"
                  if units is not None else ""),
              "units": None if units is None else {"singles": len(units[0]), "pairs": len(units[1])},
              "config": config.__dict__, "priors": priors.describe()},
    )
