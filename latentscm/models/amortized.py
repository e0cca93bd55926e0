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
``pairs``              plate           with ``pairs``: over the P pairs (rows a, b sharing their noise)
``z_pair``             (Bp, d)         latents of each pair's row a (SCM prior)
``u``                  (Bp, d)         ~ N(0, I): the noise row b draws afresh (see :func:`pair_second`)
``x_pair``             (Bp, 2, D)      observed rows a, b (in ``pairs``)
=====================  ==============  ==========================================================

Unknown intervention values (``known`` 0 where targeted): ``v_j ~ N(0, value_scale^2)`` integrated
out, so the intervened node's scale is ``sqrt(tau^2 + value_scale^2)`` there (:func:`intervention_scale`).

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

from .scm import LOG_2PI, InterventionalLinearGaussian, sample_graph, solve_scm


def gaussian_scm_kl(loc, scale_tril, weights, noise_scales, targets, values, tau):
    """``KL(N(loc, L L^T) || p(z | W, sigma, m, v))`` per row, in closed form.

    loc: (..., d); scale_tril: (..., d, d) lower Cholesky factor of q's covariance (a diagonal one for
    a mean-field q); weights (d, d); noise_scales (d,); targets, values: (..., d); tau: scalar or an
    array broadcastable to (..., d) (the intervened nodes' scale per entry). Returns (...,).

    The SCM's density is ``prod_j N([z (I - B)]_j; m_j v_j, S_j)`` with ``B = W diag(1 - m)`` and
    ``S = (1 - m) sigma^2 + m tau^2`` (``det(I - B) = 1``: unit triangular in a topological order), so
    ``E_q[log p] = -1/2 sum_j (log(2 pi S_j) + ((mu (I - B) - m v)_j^2 + ||L^T (I - B)_{:, j}||^2) / S_j)``
    and ``E_q[log q] = -d/2 (1 + log 2 pi) - sum log|diag L|``. No inverse is needed.
    """
    d = weights.shape[-1]
    loc = jnp.asarray(loc)
    m = jnp.asarray(targets).astype(loc.dtype)
    IB = jnp.eye(d) - weights * (1 - m)[..., None, :]  # (..., d, d)
    S = jnp.where(m > 0, jnp.asarray(tau) ** 2, noise_scales**2)
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


def intervention_scale(tau, targets, known=None, value_scale=2.0):
    """Per-entry scale of the intervened nodes (N, d): ``tau`` where the value is known, ``sqrt(tau^2 +
    value_scale^2)`` where it is unknown (``v ~ N(0, value_scale^2)`` integrated out; its value is then 0).
    ``known=None``: every value known, returns ``tau`` itself."""
    if known is None:
        return tau
    missing = jnp.asarray(targets) * (1 - jnp.asarray(known))
    return jnp.sqrt(tau**2 + value_scale**2 * missing)


def pair_second(z_a, u, weights, noise_scales, targets_a, targets_b, values_b, tau_b, order=None):
    """Row b's latents (..., d) of a pair from row a's latents ``z_a`` and the fresh noise ``u ~ N(0, I)``.

    Rows a and b share the exogenous noise: for a node unintervened in both,
    ``sigma_j eps_j = [z_a (I - W)]_j``; a node intervened in b takes ``v_b + tau_b u``; a node
    intervened in a only takes the noise that a never used, ``sigma u``. Then ``z_b (I - B_b) = c`` with
    ``B_b = W diag(1 - m_b)``::

        c = (1 - m_a)(1 - m_b) [z_a (I - W)] + m_b (v_b + tau_b u) + m_a (1 - m_b) sigma u
    """
    d = weights.shape[-1]
    m_a, m_b = targets_a, targets_b
    resid = z_a @ (jnp.eye(d) - weights)
    c = (1 - m_a) * (1 - m_b) * resid + m_b * (values_b + tau_b * u) + m_a * (1 - m_b) * noise_scales * u
    return solve_scm(weights, m_b, c, order)


def pair_noise_guide(loc_b, scale_b, weights, noise_scales, targets_a, targets_b, values_b, tau_b):
    """Gaussian ``q(u)`` (loc, scale) (..., d) from a Gaussian guess ``N(loc_b, scale_b)`` of row b's latents,
    through the inverse of :func:`pair_second`: ``u_j = ([loc_b (I - B_b)]_j - v_b_j) / tau_b`` where b
    intervenes on j, ``[loc_b (I - B_b)]_j / sigma_j`` where only a does (scales divided alike), and the
    prior ``N(0, 1)`` (KL 0) where neither does (u_j is unused there)."""
    d = weights.shape[-1]
    m_a, m_b = targets_a, targets_b
    resid = jnp.einsum("...k,...kj->...j", loc_b, jnp.eye(d) - weights * (1 - m_b)[..., None, :])
    used = jnp.maximum(m_a, m_b)
    factor = jnp.where(m_b > 0, tau_b, noise_scales) * used + (1 - used)
    loc = used * (resid - m_b * values_b) / factor
    scale = jnp.where(used > 0, scale_b / factor, 1.0)
    return loc, scale


def unit_batches(n_singles, n_pairs, batch_size):
    """Subsample sizes (singles, pairs) for ``batch_size`` rows split over the two plates in proportion
    to their rows (a pair counts two rows); None: no subsampling."""
    if batch_size is None:
        return None, None
    n = n_singles + 2 * n_pairs
    if batch_size >= n:
        return n_singles, n_pairs
    bp = min(n_pairs, max(1, round(batch_size * n_pairs / n))) if n_pairs else 0
    bs = min(n_singles, max(1, batch_size - 2 * bp)) if n_singles else 0
    return bs, bp


def amortized_model(x=None, *, targets, values, priors, decoder="linear", tau=0.1, order=None, batch_size=None,
                    D=None, known=None, value_scale=2.0, units=None):
    """NumPyro model with per-row latents (site names in the module docstring).

    x: (N, D) observations or None (prior predictive; then give ``D``); targets, values: (N, d);
    priors: PriorSpec; decoder: ``"linear"`` (random ``A``, ``b`` with the priors ``decoder_weight``,
    ``decoder_bias``) or an equinox module mapping one row's ``z`` (d,) to ``g(z)`` (D,) (its parameters
    are a point estimate, site ``decoder$params``); tau: intervention noise; order: optional known node
    order (d,), replacing ``P`` by a constant; batch_size: rows per subsample of the ``rows`` plate
    (None: all rows; the likelihood and the latents' KL are scaled by ``N / batch_size``); known: (N, d)
    1 where a targeted value is observed (None: all; unknown values must be 0 in ``values``) with prior
    sd ``value_scale``; units: None, or ``(singles (S,), pairs (P, 2))`` row indices: pairs share their
    exogenous noise (plate ``pairs``, sites ``z_pair``, ``u``, ``x_pair``), singles are the plate
    ``rows``; ``batch_size`` then counts rows over both plates (:func:`unit_batches`).
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
    targets, values = jnp.asarray(targets), jnp.asarray(values)
    scale = jnp.broadcast_to(intervention_scale(tau, targets, known, value_scale), targets.shape)
    if units is None:
        singles, pairs, (bs, bp) = None, None, (batch_size, 0)
    else:
        singles, pairs = units
        bs, bp = unit_batches(len(singles), len(pairs), batch_size)
    if singles is None or len(singles):
        with numpyro.plate("rows", N if singles is None else len(singles), subsample_size=bs) as idx:
            r = idx if singles is None else jnp.asarray(singles)[idx]
            z = numpyro.sample("z", InterventionalLinearGaussian(W, sigma, targets[r], values[r], scale[r]))
            obs = None if x is None else jnp.asarray(x)[r]
            numpyro.sample("x", dist.Normal(g(z), s).to_event(1), obs=obs)
    if pairs is not None and len(pairs):
        with numpyro.plate("pairs", len(pairs), subsample_size=bp) as idx:
            ia, ib = jnp.asarray(pairs)[idx, 0], jnp.asarray(pairs)[idx, 1]
            z_a = numpyro.sample("z_pair", InterventionalLinearGaussian(W, sigma, targets[ia], values[ia], scale[ia]))
            u = numpyro.sample("u", dist.Normal(jnp.zeros_like(z_a), 1.0).to_event(1))
            z_b = pair_second(z_a, u, W, sigma, targets[ia], targets[ib], values[ib], scale[ib])
            mean = jnp.stack([g(z_a), g(z_b)], axis=-2)  # (Bp, 2, D)
            obs = None if x is None else jnp.stack([jnp.asarray(x)[ia], jnp.asarray(x)[ib]], axis=-2)
            numpyro.sample("x_pair", dist.Normal(mean, s).to_event(2), obs=obs)
