"""Pareto-smoothed importance sampling (Vehtari, Simpson, Gelman, Yao, Gabry 2024), vectorised over sets of weights.

The algorithm of ``arviz_stats`` (ArviZ 1.x: right tail of ``M = floor(3 sqrt(S / r_eff))`` draws when
``S r_eff > 225``, else ``floor(S / 5)``; the generalised Pareto fit of Zhang and Stephens with the weakly
informative prior on k centred at 0.5; the tail replaced by the fitted quantiles), computed for K sets of S
log ratios at once instead of one Python call per set: ArviZ's ``loo`` spends about 0.35 ms per unit in such
calls (0.85 s for 2000 units of 256 draws), this module 0.2 s (0.26 s for the d = 100 fit's 10 000 pairs of 100
draws). The tests check it against ``arviz_stats`` draw for draw.

Used by :func:`latentscm.criticism.loo_metrics` (LOO) and the order mixture's importance weights
(:mod:`latentscm.inference.order_mixture`): one implementation for both.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp

__all__ = ["psislw", "loo"]

_PRIOR_BS, _PRIOR_K = 3.0, 10.0


def _tail_length(S, r_eff):
    return int(np.floor(3 * (S / r_eff) ** 0.5)) if S * r_eff > 225 else int(np.floor(S / 5))


def _gpdfit(x):
    """Zhang-Stephens fit (with ArviZ's prior on k) of sorted exceedances ``x`` (K, M): (k (K,), sigma (K,))."""
    K, n = x.shape
    m = 30 + int(n**0.5)
    xstar = x[:, int((n / 4 + 0.5) - 1)]  # first quartile
    degenerate = xstar <= x[:, 0]  # far from a generalised Pareto distribution: NaN, NaN (as ArviZ)
    xstar = np.where(degenerate, 1.0, xstar)
    with np.errstate(invalid="ignore", divide="ignore", over="ignore"):  # exceedances near 0: inf, then k = inf
        b = (1 - np.sqrt(m / (np.arange(1, m + 1, dtype=float) - 0.5)))[None] / (_PRIOR_BS * xstar[:, None])
        b = b + 1 / x[:, -1:]
        k = np.mean(np.log1p(-b[:, :, None] * x[:, None, :]), axis=2)  # (K, m)
        scale = n * (np.log(-b / k) - k - 1)
        w = np.exp(scale - logsumexp(scale, axis=1, keepdims=True))
        w = np.where(w >= 10 * np.finfo(float).eps, w, 0.0)  # negligible weights dropped
        b_post = np.sum(b * w, 1) / np.sum(w, 1)
        kappa = np.mean(np.log1p(-b_post[:, None] * x), 1)
        sigma = -kappa / b_post
    kappa = (n * kappa + _PRIOR_K * 0.5) / (n + _PRIOR_K)
    kappa = np.where(np.isnan(kappa), np.inf, kappa)
    return np.where(degenerate, np.nan, kappa), np.where(degenerate, np.nan, sigma)


def _gpinv(p, k, sigma, mu):
    """Generalised Pareto quantiles at ``p`` (M,) for each row's ``k, sigma, mu`` (K,): (K, M)."""
    k, sigma, mu = k[:, None], sigma[:, None], mu[:, None]
    with np.errstate(invalid="ignore", divide="ignore"):
        general = mu + sigma * np.expm1(-k * np.log1p(-p)) / np.where(k == 0, 1.0, k)
    q = np.where(k == 0, mu - sigma * np.log1p(-p), general)
    return np.where(sigma > 0, q, np.nan)


_CHUNK = 1024  # sets smoothed at once: the Pareto fit's (sets, m, M) array stays near 10 MB


def psislw(log_ratios, r_eff=1.0):
    """PSIS-smoothed, normalised log weights of K sets of S log importance ratios ``log_ratios`` (K, S) and each
    set's Pareto shape k (K,) (``arviz_stats``' ``psislw`` takes the negated ratios, as LOO's ``-log p(y_i | θ)``).
    A set whose tail cannot be fitted keeps its raw (normalised) weights; its k is NaN when the tail is far from a
    generalised Pareto distribution, inf when the fit fails. ValueError (as ArviZ) when a set's tail values are
    all alike, or S is too small for a tail of 5 draws.
    """
    x = np.array(log_ratios, np.float64, ndmin=2)
    K, S = x.shape
    M = _tail_length(S, r_eff)
    if M < 5:
        raise ValueError(f"psislw: {S} draws give a tail of {M} draws; PSIS needs at least 5 (about 25 draws)")
    parts = [_smooth(x[a:a + _CHUNK], M) for a in range(0, K, _CHUNK)]
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _smooth(x, M):
    """:func:`psislw` of the sets ``x`` (K, S) (modified in place) with a tail of ``M`` draws."""
    S = x.shape[1]
    x -= np.max(x, 1, keepdims=True)
    order = np.argsort(x, 1, kind="stable")
    tail_idx = order[:, S - M:]
    tail = np.take_along_axis(x, tail_idx, 1)  # ascending
    cutoff = np.take_along_axis(x, order[:, S - M - 1:S - M], 1)[:, 0]  # the largest value below the tail
    flat = np.abs(tail[:, -1] - tail[:, 0]) < np.finfo(float).tiny
    if flat.any():
        raise ValueError(f"psislw: the largest {M} log ratios of {int(flat.sum())} set(s) are all alike: no tail to fit")
    k, sigma = _gpdfit(np.exp(tail) - np.exp(cutoff)[:, None])
    smooth = np.isfinite(k)
    if smooth.any():
        p = np.arange(0.5, M) / M
        with np.errstate(invalid="ignore", divide="ignore"):
            smoothed = np.log(_gpinv(p, np.where(smooth, k, 0.0), sigma, np.exp(cutoff)))
        smoothed = np.minimum(smoothed, tail[:, -1:])  # not beyond the largest raw ratio
        rows = np.nonzero(smooth)[0][:, None]
        x[rows, tail_idx[smooth]] = smoothed[smooth]
    return x - logsumexp(x, axis=1, keepdims=True), k


def loo(log_lik, r_eff=1.0):
    """PSIS-LOO of a log-likelihood (S draws, n units): ``(elpd, se, p_loo, k (n,))`` as ``arviz_stats.loo``
    computes them (``elpd = Σ_i log Σ_s w_is p(y_i | θ_s)``, ``se = sqrt(n var(elpd_i))``, ``p_loo = lppd -
    elpd``)."""
    ll = np.asarray(log_lik, np.float64)
    S, n = ll.shape
    lw, k = psislw(-ll.T, r_eff)
    elpd_i = logsumexp(lw + ll.T, axis=1)
    lppd_i = logsumexp(ll.T, axis=1) - np.log(S)
    se = float(np.sqrt(n * np.var(elpd_i, ddof=1))) if n > 1 else 0.0
    return float(np.sum(elpd_i)), se, float(np.sum(lppd_i - elpd_i)), k
