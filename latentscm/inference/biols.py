"""``biols``: the seed paper's method (Subramanian et al. 2022, built on BCD Nets), as the baseline.

ELBO (model in :mod:`latentscm.models.biols`)::

    E_q [ log p(x | z, decoder) ] - KL(q(L, sigma) || p(L, sigma)) - E_q(L, sigma) KL(q(P | L, sigma) || p(P))

with ``q(z | L, sigma, P) = p(z | L, sigma, P, intervention)``: z is drawn from the SCM given each
row's intervention (reparameterised, one triangular solve per row), never inferred from x. Guide:

* ``q(L, log sigma)``: mean-field Gaussian; its log-sd is squashed to ``(-log_std_max, log_std_max)``
  by ``tanh`` and starts at -1, means at 0 (all as in the reference code);
* ``q(P | L, sigma)``: Gumbel-matching with logits ``T = c tanh(MLP(L, log sigma) / c)``
  (two GELU layers of ``order_hidden`` units, ``c = logit_constraint``); hard Hungarian samples,
  straight-through Gumbel-Sinkhorn gradients at a fixed temperature, ``log q(P)`` by the Bethe
  permanent; the prior over orders is uniform. With ``known_order`` P is fixed (what every run of
  the reference code did);
* ``z``: the SCM itself (the ``z`` site appears in model and guide with the same distribution, so
  its log-density terms cancel exactly and only the reconstruction term depends on it);
* decoder parameters: point estimates (maximum likelihood), optimised jointly.

Optimiser AdaBelief (the reference's ``scale_by_belief``). See ``docs/biols.md`` for the parts that
differ from the reference code and why.
"""

from __future__ import annotations

import time
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
import optax
from numpyro import handlers
from numpyro.distributions.transforms import biject_to

from .._validate import KNOWN_ORDER, check_fields, flag, integer, number, one_of, optional, path, sequence, setting
from ..models.biols import (MarginalHorseshoe, SitePrior, biols_model, decode, horseshoe_global_scale,
                             init_decoder)
from ..models.collapsed import latent_posterior
from ..models.permutation import GumbelSinkhornPermutation, order_from_matrix
from ..models.priors import parse_priors
from ..models.scm import InterventionalLinearGaussian, tril_size, tril_to_matrix, weights_from_order
from .posterior import Posterior
from ._datarules import check_decoder, check_known_order, check_unknowns
from .decoders import LinearDecoder, NetworkDecoder
from .guide import site_specs
from .svi import SVIProblem, checkpoint_for, elbo_loss, seed_keys, solve

_LATENT_NUMBERS = 5e7  # exact latent summaries: draws per call such that draws x N x D stays below this


@dataclass(frozen=True)
class BiolsConfig:
    """Settings of the ``biols`` method (bounds declared per field, checked in ``__post_init__``).

    steps, learning_rate: AdaBelief optimisation; num_particles: posterior samples per step (the
    reference used 64); batch_size: rows per step (None: all rows; the reference used all);
    decoder: ``"linear"`` or ``"mlp"``; decoder_hidden: MLP widths (the reference: 16, 64, 64, 64);
    order_hidden: width of the order MLP's two layers; known_order: node order (first to last) or
    None to learn it; horseshoe: the paper's marginal horseshoe prior on edge weights with the
    global scale of :func:`~latentscm.models.biols.horseshoe_global_scale` (False: the priors
    spec's ``edge_weight``); expected_degree: parents per node assumed by that rule;
    noise_prior_scale: sd of the normal prior on ``log sigma`` (None: the spec's ``noise_scale``);
    obs_scale: observation noise sd (fixed, as the reference's ``pred_sigma``); temperature:
    Gumbel-Sinkhorn temperature (fixed); logit_constraint, log_std_max: the reference's squashing
    constants; tau: intervention noise scale; num_draws: posterior draws kept; chunk: steps per
    jitted call; latent_draws, latent_steps: MAP latent estimates for the MLP decoder;
    checkpoint_dir, checkpoint_every: save the SVI state there every so many steps and resume from it
    (:func:`~latentscm.inference.svi.checkpoint_for`; ``latentscm fit`` sets the run folder).
    """

    steps: int = setting(2000, integer(1))
    learning_rate: float = setting(0.01, number(gt=0))
    num_particles: int = setting(16, integer(1))
    batch_size: int | None = setting(500, optional(integer(1), "for all rows"))
    decoder: str = setting("linear", one_of("linear", "mlp"))
    decoder_hidden: tuple[int, ...] = setting((16, 64, 64, 64),
                                              sequence(integer(1), "a non-empty tuple of integers >= 1", min_length=1))
    order_hidden: int = setting(128, integer(1))
    known_order: tuple[int, ...] | None = setting(None, KNOWN_ORDER)
    horseshoe: bool = setting(True, flag())
    expected_degree: float = setting(1.0, number(gt=0))
    noise_prior_scale: float | None = setting(3.0, optional(number(gt=0), "for the priors spec's noise_scale"))
    obs_scale: float = setting(0.1, number(gt=0))
    temperature: float = setting(0.2, number(gt=0))
    logit_constraint: float = setting(10.0, number(gt=0))
    log_std_max: float = setting(5.0, number(gt=0))
    tau: float = setting(0.1, number(gt=0))
    num_draws: int = setting(200, integer(2))
    chunk: int = setting(100, integer(1))
    latent_draws: int = setting(4, integer(1))
    latent_steps: int = setting(300, integer(1))
    checkpoint_dir: str | None = setting(None, optional(path(), "for no checkpoints"))
    checkpoint_every: int = setting(200, integer(1))

    def __post_init__(self):
        check_fields(self, "biols")

    def check_dataset(self, dataset):
        """Refuse, before any work, a dataset these settings cannot fit (DataError / ValueError)."""
        if dataset.d < 2:
            raise ValueError(f"biols: needs at least 2 latent nodes; the dataset has d={dataset.d}")
        check_decoder("biols", self.decoder, dataset)
        check_known_order("biols", self.known_order, dataset.d)
        check_unknowns("biols", dataset)


def _order_logits(mlp, l_vec, log_sigma, c):
    """(d, d) order logits ``c tanh(MLP(L, log sigma) / c)`` (two GELU layers, as the reference)."""
    h = jnp.concatenate([l_vec, log_sigma], axis=-1)
    h = jax.nn.gelu(h @ mlp["w1"] + mlp["b1"])
    h = jax.nn.gelu(h @ mlp["w2"] + mlp["b2"])
    out = h @ mlp["w3"] + mlp["b3"]
    d = log_sigma.shape[-1]
    return (c * jnp.tanh(out / c)).reshape(d, d)


def make_guide(d, config, *, extra_specs=None):
    """The BIOLS guide ``guide(temperature, data)``; ``data`` has ``targets`` (N, d), ``values``.

    extra_specs: shapes and supports of further continuous model sites (e.g. hierarchical prior
    scales when ``horseshoe=False`` with a hierarchical spec), each given a mean-field Gaussian.
    """
    learn_order = config.known_order is None
    known = None if learn_order else np.asarray(config.known_order)
    T = tril_size(d)
    cap = config.log_std_max

    def gaussian(name, shape, support):
        loc = numpyro.param(f"{name}_loc", jnp.zeros(shape))
        log_std = numpyro.param(f"{name}_log_std", jnp.full(shape, -1.0))
        scale = jnp.exp(cap * jnp.tanh(log_std / cap))
        base = dist.Normal(loc, scale).to_event(len(shape))
        return numpyro.sample(name, dist.TransformedDistribution(base, biject_to(support)))

    def global_part(temperature):
        """Sample (L, sigma, P) from the guide; returns W (d, d), sigma (d,) and the node order (d,)."""
        for name, (shape, support) in (extra_specs or {}).items():
            gaussian(name, shape, support)
        l_vec = gaussian("edge_weight", (T,), constraints_real)
        sigma = gaussian("noise_scale", (d,), constraints_positive)
        if learn_order:
            mlp = numpyro.param("order_mlp", {})
            logits = _order_logits(mlp, l_vec, jnp.log(sigma), config.logit_constraint)
            P = numpyro.sample("P", GumbelSinkhornPermutation(logits, temperature))
            order = order_from_matrix(jax.lax.stop_gradient(P))
        else:
            order = jnp.asarray(known)
            P = jnp.eye(d)[order]
        return weights_from_order(tril_to_matrix(l_vec, d), P), sigma, order

    def guide(temperature, data, row_scale=1.0):
        W, sigma, order = global_part(temperature)
        targets, values = data["targets"], data["values"]
        with numpyro.plate("rows", targets.shape[0]), handlers.scale(scale=row_scale):
            numpyro.sample("z", InterventionalLinearGaussian(W, sigma, targets, values, config.tau,
                                                                    order=order))

    guide.global_part = global_part
    return guide


constraints_real = dist.constraints.real
constraints_positive = dist.constraints.positive


def _priors_for(config, spec, n, d):
    """Edge-weight and noise-scale priors (objects with ``sample(site, shape)``) and a description."""
    if config.horseshoe:
        tau0 = horseshoe_global_scale(n, d, config.expected_degree)
        edge, edge_desc = SitePrior(MarginalHorseshoe(tau0)), {"dist": "marginal_horseshoe", "scale": tau0}
    else:
        edge, edge_desc = spec["edge_weight"], spec.describe()["edge_weight"]
    if config.noise_prior_scale is not None:
        noise = SitePrior(dist.LogNormal(0.0, float(config.noise_prior_scale)))
        noise_desc = {"dist": "lognormal", "loc": 0.0, "scale": float(config.noise_prior_scale)}
    else:
        noise, noise_desc = spec["noise_scale"], spec.describe()["noise_scale"]
    return edge, noise, {"edge_weight": edge_desc, "noise_scale": noise_desc}


def _initial_params(d, D, config, rng, extra_specs):
    """Initial variational and decoder parameters, with a leading restart axis of size 1."""
    T = tril_size(d)
    params = {"edge_weight_loc": np.zeros(T), "edge_weight_log_std": np.full(T, -1.0),
              "noise_scale_loc": np.zeros(d), "noise_scale_log_std": np.full(d, -1.0),
              "decoder": init_decoder(rng, config.decoder, d, D, config.decoder_hidden)}
    for name, (shape, _) in extra_specs.items():
        params[f"{name}_loc"] = np.zeros(shape)
        params[f"{name}_log_std"] = np.full(shape, -1.0)
    if config.known_order is None:
        h, n_in = config.order_hidden, T + d
        params["order_mlp"] = {
            "w1": rng.normal(size=(n_in, h)) / np.sqrt(n_in), "b1": np.zeros(h),
            "w2": rng.normal(size=(h, h)) / np.sqrt(h), "b2": np.zeros(h),
            "w3": rng.normal(size=(h, d * d)) / np.sqrt(h), "b3": np.zeros(d * d),
        }
    return jax.tree.map(lambda a: jnp.asarray(np.asarray(a, np.float32))[None], params)


def fit_biols(dataset, *, config: BiolsConfig, priors=None, seed=0, progress=True):
    """Fit BIOLS to ``dataset``; returns a :class:`Posterior` (see the module docstring)."""
    start = time.perf_counter()
    spec = parse_priors(priors)
    N, d, D = dataset.N, dataset.d, dataset.D
    batch = None if config.batch_size is None or config.batch_size >= N else config.batch_size
    rng = np.random.default_rng(seed)
    edge_prior, noise_prior, prior_desc = _priors_for(config, spec, N, d)
    data = {"x": jnp.asarray(dataset.x, jnp.float32), "targets": jnp.asarray(dataset.targets, jnp.float32),
            "values": jnp.asarray(np.where(dataset.targets > 0, np.nan_to_num(dataset.values), 0.0), jnp.float32)}
    order = None if config.known_order is None else np.asarray(config.known_order)
    decoder0 = init_decoder(rng, config.decoder, d, D, config.decoder_hidden)

    def model(temperature, data, row_scale=1.0):
        biols_model(data["targets"], data["values"], data["x"], decoder_init=decoder0, edge_prior=edge_prior,
                    noise_prior=noise_prior, tau=config.tau, obs_scale=config.obs_scale, order=order,
                    row_scale=row_scale)

    extra = site_specs(model, 1.0, data, exclude=("edge_weight", "noise_scale", "P", "z"))
    guide = make_guide(d, config, extra_specs=extra)
    neg_elbo = elbo_loss(config.num_particles)

    def loss_fn(params, key, temperature, data):
        if batch is not None:  # one minibatch per step, shared by the particles (x A^T computed once)
            key, k_rows = jax.random.split(key)
            idx = jax.random.choice(k_rows, N, (batch,), replace=False)
            data = jax.tree.map(lambda a: a[idx], data)
        return neg_elbo(key, params, model, guide, temperature, data, N / (batch or N)) / N

    key_svi, key_draw, key_latents = seed_keys(seed, 3)
    optimizer = optax.adabelief(config.learning_rate, eps=1e-8)
    problem = SVIProblem(model, guide, _initial_params(d, D, config, rng, extra), optimizer,
                         lambda step: config.temperature, data, config.num_particles, loss=loss_fn)
    svi = solve(problem, key_svi, config.steps, chunk=config.chunk, progress=progress, desc="biols",
                checkpoint=checkpoint_for("biols", config, priors, seed, dataset))
    losses, params = svi.losses, svi.restart(0)
    draws = _draw(guide, params, config.num_draws, config.temperature, key_draw)
    S = config.num_draws
    dec = {k: np.asarray(v) for k, v in params["decoder"].items()}
    obs_scale = np.full(S, config.obs_scale, np.float32)
    if config.decoder == "linear":
        decoder = LinearDecoder(np.broadcast_to(dec["A"], (S, d, D)), np.broadcast_to(dec["b"], (S, D)), obs_scale)
        latent_mean, latent_sd = _linear_latents(data, draws, dec, config)
    else:  # the network's weights as draws; no decode function and no density (the seed method has neither)
        decoder = NetworkDecoder({**{k: np.broadcast_to(v, (S,) + v.shape) for k, v in dec.items()},
                                  "obs_scale": obs_scale})
        latent_mean, latent_sd = _map_latents(data, draws, dec, config, key_latents)
    return Posterior(
        method="biols", W=draws["W"], noise_scales=draws["noise_scale"], orders=draws["order"], decoder=decoder,
        latent_mean=latent_mean, latent_scale=latent_sd, elbo=-losses[:, 0] * N,
        seconds=time.perf_counter() - start, tau=config.tau,
        info={"config": config.__dict__, "priors": prior_desc, "decoder_kind": config.decoder,
              "batch_size": batch or N, "latents": "exact p(z | x) per draw (linear decoder)"
              if config.decoder == "linear" else "MAP of p(x | z) p(z | SCM) per draw (MLP decoder)"},
    )


def _draw(guide, params, num, temperature, key):
    """Posterior draws of (W, sigma, order) from the fitted guide, as numpy arrays."""

    def one(k):
        with handlers.seed(rng_seed=k), handlers.substitute(data=params):
            return guide.global_part(temperature)

    W, sigma, order = jax.jit(jax.vmap(one))(jax.random.split(key, num))
    return {"W": np.asarray(W), "noise_scale": np.asarray(sigma), "order": np.asarray(order)}


def _linear_latents(data, draws, dec, config):
    """Mixture mean and sd (N, d) of the exact Gaussian ``p(z_n | x_n, ...)`` over the draws.

    Draws go in chunks of at most 50, fewer when N x D is large (each draw holds N x D numbers)."""
    N, D = data["x"].shape
    chunk = int(max(1, min(50, _LATENT_NUMBERS // (N * D))))
    f = jax.jit(jax.vmap(lambda W, s: latent_posterior(data["x"], data["targets"], data["values"], W, s,
                                                       dec["A"], dec["b"], config.obs_scale, config.tau)))
    S = len(draws["W"])
    m1 = m2 = 0.0
    for i in range(0, S, chunk):
        mean, cov = f(jnp.asarray(draws["W"][i:i + chunk]), jnp.asarray(draws["noise_scale"][i:i + chunk]))
        m1 = m1 + mean.sum(0)
        m2 = m2 + (jnp.diagonal(cov, axis1=-2, axis2=-1) + mean**2).sum(0)
    mean = np.asarray(m1 / S)
    return mean, np.sqrt(np.maximum(np.asarray(m2 / S) - mean**2, 0.0))


def _map_latents(data, draws, dec, config, key):
    """MLP decoder: per-row MAP of ``log p(x_n | z) + log p(z | SCM, m_n, v_n)`` for a few draws.

    Adam from the SCM's interventional mean, vectorised over rows and draws; returns the mean and
    sd of the MAP points across draws (the sd reflects posterior uncertainty about the SCM only).
    """
    k = min(config.latent_draws, len(draws["W"]))
    idx = np.asarray(jax.random.choice(key, len(draws["W"]), (k,), replace=False))
    x, t, v = data["x"], data["targets"], data["values"]
    opt = optax.adam(0.05)

    def solve(W, sigma):
        prior = InterventionalLinearGaussian(W, sigma, t, v, config.tau)

        def objective(z):
            ll = dist.Normal(decode(dec, z), config.obs_scale).log_prob(x).sum()
            return -(ll + prior.log_prob(z).sum())

        def body(carry, _):
            z, s = carry
            g = jax.grad(objective)(z)
            u, s = opt.update(g, s, z)
            return (optax.apply_updates(z, u), s), None

        z0 = prior.mean
        (z, _), _ = jax.lax.scan(body, (z0, opt.init(z0)), None, length=config.latent_steps)
        return z

    zs = jax.jit(jax.vmap(solve))(jnp.asarray(draws["W"][idx]), jnp.asarray(draws["noise_scale"][idx]))
    zs = np.asarray(zs)
    return zs.mean(0), zs.std(0)
