"""Data augmentation for ``mcmc`` with ``decoder_update = "gibbs"``: exact conditional draws of the latents
``z`` and of the linear decoder ``(A, b)``, and the model NUTS and the order moves target given them."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import jax.scipy.linalg
import numpyro
import numpyro.distributions as dist

from ..models.collapsed import _singles, _unit_terms
from ..models.observed import identity_log_likelihood, identity_stats
from ..models.scm import LOG_2PI, sample_graph


GIBBS_SITES = ("decoder_weight", "decoder_bias")


def normal_prior_params(prior):
    """``(loc, scale)`` of a Normal prior; a clear error for any other family (the conjugate decoder
    update needs Normal decoder priors)."""
    if prior.distribution is None and prior.family == "normal":
        return float(prior.params["loc"]), float(prior.params["scale"])
    if isinstance(prior.distribution, dist.Normal):
        return float(prior.distribution.loc), float(prior.distribution.scale)
    raise ValueError(
        f"mcmc: decoder_update='gibbs' needs a normal prior on {prior.name!r} (conjugate given z); got "
        f"{prior.family}. Use a normal prior or set decoder_update='nuts'.")


def gibbs_latents(key, x, targets, values, W, sigma, A, b, obs_scale, tau):
    """One exact draw of the latents z (N, d) from ``p(z | x, targets, values, W, sigma, A, b, s)``,
    rows independent: through the noise coordinates ``xi | x ~ N(K^{-1} U e, s^2 K^{-1})``, then
    ``z = xi Gamma + v Gz`` (as :func:`~latentscm.models.collapsed.unit_latent_posterior`)."""
    gamma, gz, Ue, _, K, V = _unit_terms(_singles(x, targets, values), W, sigma, A, b, obs_scale, tau, 1.0)
    n, r = Ue.shape
    d = W.shape[-1]
    chol = jnp.linalg.cholesky(K)  # K = C C^T
    mean = jax.scipy.linalg.cho_solve((chol, True), Ue[..., None])
    noise = jax.random.normal(key, (n, r, 1), K.dtype)
    xi = (mean + obs_scale * jax.scipy.linalg.solve_triangular(chol, noise, lower=True, trans="T"))[..., 0]
    return jnp.einsum("nr,nrq->nq", xi, gamma.reshape(n, r, d)) + jnp.einsum("nq,nqp->np", V, gz.reshape(n, d, d))


def sample_decoder(key, z, x, obs_scale, weight_prior, bias_prior):
    """One exact draw of the linear decoder ``A (d, D), b (D,)`` from ``p(A, b | z, x, s)``: for each
    output dimension a Bayesian linear regression of ``x[:, j]`` on ``[z, 1]`` with independent normal
    priors ``(loc, scale)`` (``weight_prior`` on A, ``bias_prior`` on b); all columns share one
    precision matrix, so one Cholesky factor serves the whole decoder."""
    n, d = z.shape
    F = jnp.concatenate([z, jnp.ones((n, 1), z.dtype)], axis=1)
    prec0 = jnp.concatenate([jnp.full(d, weight_prior[1] ** -2.0), jnp.full(1, bias_prior[1] ** -2.0)])
    loc0 = jnp.concatenate([jnp.full(d, weight_prior[0]), jnp.full(1, bias_prior[0])])
    s2 = obs_scale**2
    chol = jnp.linalg.cholesky(F.T @ F / s2 + jnp.diag(prec0))
    mean = jax.scipy.linalg.cho_solve((chol, True), F.T @ x / s2 + (prec0 * loc0)[:, None])
    noise = jax.random.normal(key, mean.shape, mean.dtype)
    draw = mean + jax.scipy.linalg.solve_triangular(chol, noise, lower=True, trans="T")
    return draw[:d], draw[d]


def aux_from(z, A, b, raw):
    """The augmentation for latents z (N, d) and decoder ``(A, b)`` on ``raw = (x, targets, values)``:
    the decoder, z's :class:`~latentscm.models.observed.IdentityStats`, the residual sum of squares and its count ``N D``."""
    x, targets, values = raw
    return {"decoder_weight": A, "decoder_bias": b, "zstats": identity_stats(z, targets, values),
            "rss": jnp.sum((x - z @ A - b) ** 2), "n_obs": jnp.asarray(x.size, x.dtype)}


def augmented_model(data, order, aux, *, priors, tau):
    """Target of the NUTS and order updates under ``decoder_update="gibbs"``: the SCM's sites and
    ``obs_scale`` given the augmentation ``aux`` (:func:`aux_from`): ``p(z | W, sigma)`` through z's
    statistics and ``p(x | z, A, b, s)`` through the residual sum of squares."""
    W, sigma, _ = sample_graph(aux["zstats"].gram.shape[-1], priors["edge_weight"], priors["noise_scale"], order)
    s = priors["obs_scale"].sample("obs_scale", ())
    numpyro.factor("z", identity_log_likelihood(aux["zstats"], W, sigma, tau))
    numpyro.factor("x", -0.5 * (aux["n_obs"] * (LOG_2PI + 2 * jnp.log(s)) + aux["rss"] / s**2))


def make_augmentation(priors, tau, fixed_noise):
    """``augment(key, params, raw) -> aux``: draw z from ``p(z | x, W, sigma, A, b, s)`` (z integrated
    out of nothing: the collapsed model's exact conditional), then ``(A, b)`` from
    ``p(A, b | z, x, s)``. With the NUTS and order updates of :func:`augmented_model` this is a Gibbs
    sampler on ``(z, A, b, rest)`` whose marginal over everything but z is the collapsed model's
    posterior; NUTS then moves only the SCM's sites and ``obs_scale`` (no 500-dimensional decoder)."""
    wp = normal_prior_params(priors["decoder_weight"])
    bp = normal_prior_params(priors["decoder_bias"])

    def augment(key, params, raw):
        sigma = params["noise_scale"] if fixed_noise is None else fixed_noise
        k_z, k_dec = jax.random.split(key)
        x, targets, values = raw
        z = gibbs_latents(k_z, x, targets, values, params["W"], sigma, params["decoder_weight"],
                           params["decoder_bias"], params["obs_scale"], tau)
        A, b = sample_decoder(k_dec, z, x, params["obs_scale"], wp, bp)
        return aux_from(z, A, b, raw)

    return augment
