"""The collapsed model for linear decoders: ``z`` integrated out exactly.

Per row, ``x_n = z_n A + b + s * noise`` with ``z_n ~ N(mu_n, C^T S C)`` (see ``scm``), so
``x_n ~ N(v_n G + b, U U^T + s^2 I_D)`` with ``G = diag(m) C A`` and ``U^T = S^{1/2} C A`` (d, D):
low rank plus diagonal, handled by Woodbury and the determinant lemma. Rows sharing a target mask
share ``C`` and ``S``; the regime's summed log-density depends on the data only through sufficient
statistics (counts, first and second moments of ``x`` and ``v`` and their cross moments), computed
once: one evaluation costs ``O(R (D^2 d + D d^2))`` for R distinct masks, independent of N.

Model sample sites (public API): ``edge_weight`` (d(d-1)/2,) free entries of the position-space
lower-triangular ``L``; ``P`` (d, d) permutation (``P[p, i] = 1``: node i at position p);
``noise_scale`` (d,); ``decoder_weight`` (d, D); ``decoder_bias`` (D,); ``obs_scale`` ();
deterministic ``W`` (d, d); factor ``x`` (the collapsed log-likelihood). Horseshoe priors add
``edge_weight_global_scale`` and ``edge_weight_local_scale``.
"""

from __future__ import annotations

from typing import NamedTuple

import jax.numpy as jnp
import numpy as np
import numpyro

from .permutation import UniformPermutation
from .scm import LOG_2PI, tril_size, tril_to_matrix, weights_from_order


class SufficientStats(NamedTuple):
    """Per-regime sufficient statistics; R distinct target masks.

    masks (R, d); n (R,); sx (R, D); sxx (R, D, D); sv (R, d); svv (R, d, d); sxv (R, D, d);
    tr_sxx (R,) (kept separately for accuracy).
    """

    masks: np.ndarray
    n: np.ndarray
    sx: np.ndarray
    sxx: np.ndarray
    sv: np.ndarray
    svv: np.ndarray
    sxv: np.ndarray
    tr_sxx: np.ndarray

    @property
    def d(self):
        return self.masks.shape[-1]

    @property
    def D(self):
        return self.sx.shape[-1]


def group_rows(targets):
    """Distinct target masks (R, d) and each row's group index (N,)."""
    masks, index = np.unique(np.asarray(targets, dtype=np.int8), axis=0, return_inverse=True)
    return masks, index.reshape(-1)


def sufficient_stats(x, targets, values, dtype=np.float64):
    """Sufficient statistics of rows grouped by target mask (computed in float64 with numpy)."""
    x = np.asarray(x, np.float64)
    v = np.where(np.asarray(targets) > 0, np.asarray(values, np.float64), 0.0)
    masks, g = group_rows(targets)
    R = len(masks)
    n = np.bincount(g, minlength=R).astype(np.float64)
    onehot = np.zeros((R, len(x)))
    onehot[g, np.arange(len(x))] = 1.0
    sxx = np.stack([x[g == r].T @ x[g == r] for r in range(R)])
    stats = SufficientStats(
        masks.astype(dtype), n, onehot @ x, sxx, onehot @ v,
        np.einsum("rn,ni,nj->rij", onehot, v, v), np.einsum("rn,ni,nj->rij", onehot, x, v),
        np.einsum("rii->r", sxx),
    )
    return SufficientStats(*(np.asarray(a, dtype) for a in stats))


def regime_operators(W, sigma, tau, masks):
    """Per-regime propagator ``C = (I - W diag(1 - m))^{-1}`` (R, d, d) and variances ``S`` (R, d)."""
    d = W.shape[-1]
    B = W[None] * (1 - masks)[:, None, :]
    C = jnp.linalg.inv(jnp.eye(d) - B)
    S = jnp.where(masks > 0, tau**2, sigma**2)
    return C, S


def collapsed_log_likelihood(stats, W, sigma, A, b, obs_scale, tau):
    """Exact ``log p(x | targets, values, W, sigma, A, b, s)`` summed over all rows (scalar)."""
    C, S = regime_operators(W, sigma, tau, stats.masks)
    d, D = A.shape
    CA = C @ A  # (R, d, D)
    Ut = jnp.sqrt(S)[..., None] * CA  # U^T
    G = stats.masks[..., None] * CA  # mean of x is v G + b
    s2 = obs_scale**2
    K = s2 * jnp.eye(d) + Ut @ jnp.swapaxes(Ut, -1, -2)  # (R, d, d)
    n = stats.n
    # E = sum_n e_n^T e_n with e_n = x_n - b - v_n G: trace and projection U^T E U.
    sxv_b = stats.sxv - b[None, :, None] * stats.sv[:, None, :]  # sum (x - b)^T v  (R, D, d)
    tr_xx = stats.tr_sxx - 2 * stats.sx @ b + n * (b @ b)
    trE = (tr_xx - 2 * jnp.einsum("rDk,rkD->r", sxv_b, G)
           + jnp.einsum("rkD,rkl,rlD->r", G, stats.svv, G))
    Ub = Ut @ b  # (R, d)
    Usx = jnp.einsum("rkD,rD->rk", Ut, stats.sx)
    UxxU = (jnp.einsum("rkD,rDE,rlE->rkl", Ut, stats.sxx, Ut)
            - Usx[:, :, None] * Ub[:, None, :] - Ub[:, :, None] * Usx[:, None, :]
            + n[:, None, None] * Ub[:, :, None] * Ub[:, None, :])
    GU = G @ jnp.swapaxes(Ut, -1, -2)  # (R, d, d): v G U
    UxvG = Ut @ sxv_b @ GU  # U^T (sum (x-b)^T v) G U  (R, d, d)
    UEU = UxxU - UxvG - jnp.swapaxes(UxvG, -1, -2) + jnp.swapaxes(GU, -1, -2) @ stats.svv @ GU
    quad = (trE - jnp.einsum("rkl,rlk->r", jnp.linalg.inv(K), UEU)) / s2
    logdet = (D - d) * jnp.log(s2) + jnp.linalg.slogdet(K)[1]
    return jnp.sum(-0.5 * (n * D * LOG_2PI + n * logdet + quad))


def latent_posterior(x, targets, values, W, sigma, A, b, obs_scale, tau):
    """Exact Gaussian ``p(z_n | x_n, targets_n, values_n, params)``: mean (N, d), covariance (N, d, d).

    Prior precision ``(I - B) S^{-1} (I - B)^T`` (no inverse of the SCM needed); posterior precision
    adds ``A A^T / s^2``.
    """
    d = W.shape[-1]
    m = jnp.asarray(targets, W.dtype)
    v = jnp.where(m > 0, values, 0.0)
    IB = jnp.eye(d) - W[None] * (1 - m)[:, None, :]  # (N, d, d)
    S = jnp.where(m > 0, tau**2, sigma**2)
    prior_prec = (IB / S[:, None, :]) @ jnp.swapaxes(IB, -1, -2)
    prec = prior_prec + (A @ A.T)[None] / obs_scale**2
    cov = jnp.linalg.inv(prec)
    # prior mean mu solves mu (I - B) = m v  ->  prior_prec-weighted: mu Sigma^{-1} = (m v) S^{-1} (I-B)^T
    eta = jnp.einsum("nk,nlk->nl", v / S, IB) + (x - b) @ A.T / obs_scale**2
    return jnp.einsum("nk,nkl->nl", eta, cov), cov


def collapsed_model(stats, *, priors, tau=0.1, order=None):
    """NumPyro model of the collapsed latent SCM (see the module docstring for site names).

    stats: SufficientStats of the data; priors: PriorSpec; tau: intervention noise scale;
    order: optional known node order (d,), which replaces the ``P`` site by a constant.
    """
    d, D = stats.d, stats.D
    l_vec = priors["edge_weight"].sample("edge_weight", (tril_size(d),))
    sigma = priors["noise_scale"].sample("noise_scale", (d,))
    if order is None:
        P = numpyro.sample("P", UniformPermutation(d))
    else:
        P = jnp.eye(d)[jnp.asarray(order)]
    W = numpyro.deterministic("W", weights_from_order(tril_to_matrix(l_vec, d), P))
    A = priors["decoder_weight"].sample("decoder_weight", (d, D))
    b = priors["decoder_bias"].sample("decoder_bias", (D,))
    s = priors["obs_scale"].sample("obs_scale", ())
    numpyro.factor("x", collapsed_log_likelihood(stats, W, sigma, A, b, s, tau))


def row_log_likelihood(x, targets, values, W, sigma, A, b, obs_scale, tau):
    """Per-row ``log p(x_n | targets_n, values_n, params)`` (N,), z integrated out (Woodbury per row).

    The same density as :func:`collapsed_log_likelihood`, row by row: for held-out data and minibatches.
    """
    d, D = A.shape
    m = jnp.asarray(targets, A.dtype)
    v = jnp.where(m > 0, values, 0.0)
    C = jnp.linalg.inv(jnp.eye(d) - W[None] * (1 - m)[:, None, :])
    S = jnp.where(m > 0, tau**2, sigma**2)
    CA = C @ A  # (N, d, D)
    Ut = jnp.sqrt(S)[..., None] * CA
    e = x - b - jnp.einsum("nk,nkD->nD", m * v, CA)
    s2 = obs_scale**2
    K = s2 * jnp.eye(d) + Ut @ jnp.swapaxes(Ut, -1, -2)
    Ue = jnp.einsum("nkD,nD->nk", Ut, e)
    quad = (jnp.sum(e * e, -1) - jnp.einsum("nk,nk->n", Ue, jnp.linalg.solve(K, Ue[..., None])[..., 0])) / s2
    logdet = (D - d) * jnp.log(s2) + jnp.linalg.slogdet(K)[1]
    return -0.5 * (D * LOG_2PI + logdet + quad)
