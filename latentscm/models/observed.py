"""The SCM with its latents observed (decoder = identity, ``x = z``): the classic causal-discovery setting.

:func:`identity_model` has the SCM's sites of every model (``edge_weight``, ``P`` or a known order,
``noise_scale``, deterministic ``W``) and a factor ``x``: the exact log-density of the observed
latents, computed from :class:`IdentityStats` (O(d^3) per evaluation, whatever N).
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpyro

from .scm import LOG_2PI, sample_graph



class IdentityStats(NamedTuple):
    """Sufficient statistics of observed latents ``z`` (N, d) for the SCM log-density.

    gram (d, d, d): ``gram[j] = sum_{n: m_nj = 0} z_n^T z_n``; n_free (d,): rows where j is not
    intervened; n_int (d,): rows where it is; sse_int (d,): ``sum_{n: m_nj = 1} (z_nj - v_nj)^2``.
    """

    gram: jax.Array
    n_free: jax.Array
    n_int: jax.Array
    sse_int: jax.Array


def identity_stats(z, targets, values):
    """:class:`IdentityStats` of z (N, d) under the target mask (N, d) and values (N, d) (jax arrays;
    float64 under x64)."""
    z = jnp.asarray(z)
    m = jnp.asarray(targets) > 0
    v = jnp.where(m, jnp.nan_to_num(jnp.asarray(values, z.dtype)), 0.0)
    free = (~m).astype(z.dtype)
    gram = jnp.einsum("nj,na,nb->jab", free, z, z)
    return IdentityStats(gram, free.sum(0), m.sum(0).astype(z.dtype), jnp.sum(m * (z - v) ** 2, 0))


def identity_log_likelihood(stats, W, sigma, tau):
    """``sum_n log p(z_n | targets_n, values_n, W, sigma)`` from :class:`IdentityStats` (scalar).

    Equals the summed ``InterventionalLinearGaussian(W, sigma, targets, values, tau).log_prob(z)``.
    """
    d = W.shape[-1]
    w = W.T  # w[j] = W[:, j], the parent weights of node j
    e = jnp.eye(d)
    r = e - w  # residual of node j: z (e_j - W[:, j])
    sse = jnp.einsum("ja,jab,jb->j", r, stats.gram, r)
    free = -0.5 * (stats.n_free * (LOG_2PI + 2 * jnp.log(sigma)) + sse / sigma**2)
    inter = -0.5 * (stats.n_int * (LOG_2PI + 2 * jnp.log(tau)) + stats.sse_int / tau**2)
    return jnp.sum(free) + jnp.sum(inter)


def identity_model(stats, *, priors, tau=0.1, order=None):
    """NumPyro model of the SCM with z observed (decoder = identity). Sites as in the collapsed model,
    without the decoder: ``edge_weight``, ``P`` (or a known ``order``), ``noise_scale``, deterministic
    ``W``, factor ``x``."""
    d = stats.gram.shape[-1]
    W, sigma, _ = sample_graph(d, priors["edge_weight"], priors["noise_scale"], order)
    numpyro.factor("x", identity_log_likelihood(stats, W, sigma, tau))
