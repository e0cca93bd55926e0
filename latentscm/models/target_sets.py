"""Regimes whose intervention targets are unknown: candidate target sets, each regime's exact collapsed
likelihood under every candidate (:func:`target_table`), the candidates summed out
(:func:`target_log_likelihood`) and the per-node target probabilities (:func:`target_probabilities`)."""

from __future__ import annotations

import itertools
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from .factors import unit_factors
from .precision_form import projected_moments
from .scm import LOG_2PI

if TYPE_CHECKING:
    from .collapsed import SufficientStats


class TargetStats(NamedTuple):
    """Regimes whose target sets are (partly) unknown: single rows grouped by regime.

    stats: :class:`SufficientStats` with one pattern per regime (its ``masks`` hold the known targets;
    no values are known); candidates (C, d) 0/1: the target sets enumerated; log_prior (R, C): the
    Bernoulli prior of each candidate for each regime over its unknown entries, ``-inf`` where the
    candidate contradicts a known entry or exceeds the size limit.
    """

    stats: SufficientStats
    candidates: np.ndarray
    log_prior: np.ndarray


def target_candidates(known, unknown, rate, max_size=None, near=None):
    """Candidate target sets for regimes with known entries ``known`` (R, d) 0/1 and unknown entries
    ``unknown`` (R, d) bool: every set that agrees with a regime's known entries and sets at most
    ``max_size`` (default: all) of its unknown entries, or with ``near`` (R, d) 0/1 (say, a start's
    target sets) the union over regimes of ``near[r]`` and the sets one unknown entry away from it; each
    regime's log prior ``sum_unknown t log(rate) + (1 - t) log(1 - rate)`` (``-inf`` where a set
    contradicts its known entries; unnormalised when truncated). Returns candidates (C, d) int8 and
    log_prior (R, C)."""
    known, unknown = np.asarray(known, np.int8), np.asarray(unknown, bool)
    R, d = known.shape
    out = {}
    for r in range(R):
        free = np.flatnonzero(unknown[r])
        base = known[r] * ~unknown[r]
        if near is not None:
            centre = np.where(unknown[r], np.asarray(near[r], np.int8), base)
            subsets = [centre] + [np.where(np.arange(d) == j, 1 - centre, centre) for j in free]
        else:
            limit = len(free) if max_size is None else min(max_size, len(free))
            subsets = []
            for size in range(limit + 1):
                for subset in itertools.combinations(free, size):
                    c = base.copy()
                    c[list(subset)] = 1
                    subsets.append(c)
        for c in subsets:
            c = np.asarray(c, np.int8)
            out.setdefault(c.tobytes(), c)
    cands = np.stack(list(out.values())).astype(np.int8)
    agree = ((cands[None] == known[:, None]) | unknown[:, None]).all(-1)  # (R, C)
    size = (cands[None] * unknown[:, None]).sum(-1)
    ok = agree & (size <= (d if max_size is None else max_size))
    lp = size * np.log(rate) + (unknown.sum(-1)[:, None] - size) * np.log1p(-rate)
    return cands, np.where(ok, lp, -np.inf)


def target_table(tstats, W, sigma, A, b, obs_scale, tau, value_scale):
    """``log p(x_r | T = c, ...)`` (R, C) of each regime's rows under each candidate target set
    (all their intervened values unknown): the collapsed density of :func:`collapsed_log_likelihood`
    with the regime's projected moments formed once and each candidate's factors once, so the table
    costs ``O(C d^3 + R C d^2)`` beyond the projection."""
    st, cands = tstats.stats, jnp.asarray(tstats.candidates, W.dtype)
    D = A.shape[-1]
    zeros = jnp.zeros_like(cands)[:, None]
    gamma, _ = unit_factors(W, sigma, tau, value_scale, cands[:, None], zeros)  # (C, d, 1, d)
    gam = gamma[:, :, 0]
    s2 = obs_scale**2
    K = s2 * jnp.eye(gam.shape[1], dtype=A.dtype) + gam @ (A @ A.T) @ jnp.swapaxes(gam, -1, -2)
    L = jnp.linalg.cholesky(K)
    LG = jax.scipy.linalg.solve_triangular(L, gam, lower=True)
    Mc = jnp.swapaxes(LG, -1, -2) @ LG  # (C, d, d): Gamma^T K^-1 Gamma
    logdet = (D - gam.shape[1]) * jnp.log(s2) + 2 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), -1)
    Qb, tr = projected_moments(st, A, b)
    quad = (tr[:, None] - jnp.einsum("cpq,rpq->rc", Mc, Qb)) / s2
    return -0.5 * (st.n[:, None] * (D * LOG_2PI + logdet[None]) + quad)


def target_log_likelihood(tstats, W, sigma, A, b, obs_scale, tau, value_scale):
    """``log p(x_unknown | ...)``: each regime's candidate target sets summed out exactly (scalar)."""
    table = target_table(tstats, W, sigma, A, b, obs_scale, tau, value_scale) + tstats.log_prior
    return jnp.sum(jax.scipy.special.logsumexp(table, axis=-1))


def target_probabilities(tstats, W, sigma, A, b, obs_scale, tau, value_scale):
    """``p(node j is a target of regime r | x, ...)`` (R, d) under one parameter draw."""
    table = target_table(tstats, W, sigma, A, b, obs_scale, tau, value_scale) + tstats.log_prior
    return jax.nn.softmax(table, axis=-1) @ jnp.asarray(tstats.candidates, table.dtype)
