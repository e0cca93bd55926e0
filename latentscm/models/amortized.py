"""The latent SCM with explicit per-row latents ``z``, for any decoder (linear or MLP).

Per row n (target mask ``m_n``, values ``v_n``)::

    z_n ~ InterventionalLinearGaussian(W, sigma, m_n, v_n, tau)     (the SCM's Gaussian)
    x_n ~ Normal(g(z_n), s^2 I_D)                                   (decoder g)

Model sample sites (public API; the global ones share names and meaning with
:mod:`latentscm.models.collapsed`):

=====================  ==============  ==========================================================
site                   shape           meaning
=====================  ==============  ==========================================================
``edge_weight``        (d(d-1)/2,)     free entries of the position-space lower-triangular ``L``
``noise_scale``        (d,)            SCM noise scales sigma
``decoder_weight``     (d, D)          linear decoder only: ``A`` of ``g(z) = z A + b``
``decoder_bias``       (D,)            linear decoder only: ``b``
``decoder$params``     param           MLP decoder only: equinox module parameters (point estimate,
                                       registered by ``numpyro.contrib.module.eqx_module``)
``obs_scale``          ()              observation noise s
``P``                  (d, d)          permutation (``P[p, i] = 1``: node i at position p); uniform
                                       prior; absent when the order is given
``W``                  (d, d)          deterministic ``P^T L^T P``
``rows``               plate           over the N rows, subsampled to ``batch_size``
``z``                  (B, d)          local latents (in ``rows``)
``x``                  (B, D)          observed (in ``rows``)
=====================  ==============  ==========================================================

The closed-form KL between a Gaussian ``q(z_n)`` and the SCM's Gaussian ``p(z_n | W, sigma, m_n, v_n)``
(:func:`gaussian_scm_kl`) is registered with NumPyro's ``kl_divergence`` for ``Normal(...).to_event(1)``
and ``MultivariateNormal`` guides, so ``numpyro.infer.TraceMeanField_ELBO`` uses it for ``z``.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpyro
import numpyro.distributions as dist
from numpyro.contrib.module import eqx_module
from numpyro.distributions.kl import kl_divergence

from .scm import LOG_2PI, InterventionalLinearGaussian, sample_graph


def gaussian_scm_kl(loc, scale_tril, weights, noise_scales, targets, values, tau):
    """``KL(N(loc, L L^T) || p(z | W, sigma, m, v))`` per row, in closed form.

    loc: (..., d); scale_tril: (..., d, d) lower Cholesky factor of q's covariance (a diagonal one for
    a mean-field q); weights (d, d); noise_scales (d,); targets, values: (..., d). Returns (...,).

    The SCM's density is ``prod_j N([z (I - B)]_j; m_j v_j, S_j)`` with ``B = W diag(1 - m)`` and
    ``S = (1 - m) sigma^2 + m tau^2`` (``det(I - B) = 1``: unit triangular in a topological order), so
    ``E_q[log p] = -1/2 sum_j (log(2 pi S_j) + ((mu (I - B) - m v)_j^2 + ||L^T (I - B)_{:, j}||^2) / S_j)``
    and ``E_q[log q] = -d/2 (1 + log 2 pi) - sum log|diag L|``. No inverse is needed.
    """
    d = weights.shape[-1]
    loc = jnp.asarray(loc)
    m = jnp.asarray(targets).astype(loc.dtype)
    IB = jnp.eye(d) - weights * (1 - m)[..., None, :]  # (..., d, d)
    S = jnp.where(m > 0, tau**2, noise_scales**2)
    resid = jnp.einsum("...k,...kj->...j", loc, IB) - m * values
    spread = jnp.sum(jnp.einsum("...ki,...kj->...ij", scale_tril, IB) ** 2, axis=-2)  # ||L^T (I-B)_{:,j}||^2
    neg_cross = 0.5 * jnp.sum(LOG_2PI + jnp.log(S) + (resid**2 + spread) / S, axis=-1)
    neg_entropy = -0.5 * d * (1.0 + LOG_2PI) - jnp.sum(jnp.log(jnp.abs(jnp.diagonal(scale_tril, 0, -2, -1))), -1)
    return neg_entropy + neg_cross


@kl_divergence.register(dist.Independent, InterventionalLinearGaussian)
def _kl_independent_normal(q, p):
    if not isinstance(q.base_dist, dist.Normal) or q.reinterpreted_batch_ndims != 1:
        raise NotImplementedError
    loc, scale = q.base_dist.loc, q.base_dist.scale
    scale_tril = scale[..., :, None] * jnp.eye(loc.shape[-1])
    return gaussian_scm_kl(loc, scale_tril, p.weights, p.noise_scales, p.targets, p.values, p.tau)


@kl_divergence.register(dist.MultivariateNormal, InterventionalLinearGaussian)
def _kl_mvn(q, p):
    return gaussian_scm_kl(q.loc, q.scale_tril, p.weights, p.noise_scales, p.targets, p.values, p.tau)


def amortized_model(x=None, *, targets, values, priors, decoder="linear", tau=0.1, order=None, batch_size=None,
                    D=None):
    """NumPyro model with per-row latents (site names in the module docstring).

    x: (N, D) observations or None (prior predictive; then give ``D``); targets, values: (N, d);
    priors: PriorSpec; decoder: ``"linear"`` (random ``A``, ``b`` with the priors ``decoder_weight``,
    ``decoder_bias``) or an equinox module mapping one row's ``z`` (d,) to ``g(z)`` (D,) (its parameters
    are a point estimate, site ``decoder$params``); tau: intervention noise; order: optional known node
    order (d,), replacing ``P`` by a constant; batch_size: rows per subsample of the ``rows`` plate
    (None: all rows; the likelihood and the latents' KL are scaled by ``N / batch_size``).
    """
    N, d = jnp.shape(targets)
    D = jnp.shape(x)[-1] if x is not None else D
    if D is None:
        raise ValueError("amortized_model: give x, or D (the observation dimension) for the prior predictive")
    if isinstance(decoder, str):
        if decoder != "linear":
            raise ValueError(f"amortized_model: decoder must be 'linear' or an equinox module; got {decoder!r}")
        A = priors["decoder_weight"].sample("decoder_weight", (d, D))
        b = priors["decoder_bias"].sample("decoder_bias", (D,))

        def g(z):
            return z @ A + b
    else:
        net = eqx_module("decoder", decoder)

        def g(z):
            return jax.vmap(net)(z)
    s = priors["obs_scale"].sample("obs_scale", ())
    W, sigma, _ = sample_graph(d, priors["edge_weight"], priors["noise_scale"], order)
    with numpyro.plate("rows", N, subsample_size=batch_size) as idx:
        t, v = jnp.asarray(targets)[idx], jnp.asarray(values)[idx]
        z = numpyro.sample("z", InterventionalLinearGaussian(W, sigma, t, v, tau))
        obs = None if x is None else jnp.asarray(x)[idx]
        numpyro.sample("x", dist.Normal(g(z), s).to_event(1), obs=obs)
