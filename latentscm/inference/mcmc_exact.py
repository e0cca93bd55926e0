"""The exact order posterior of observed latents by enumeration of all d! orders (identity decoder, Normal
edge prior, known noise scales), and the total variation of order draws from it: the reference the
samplers are checked against (tests, ``benchmarks/mcmc_exact.py``, ``benchmarks/observed.py``)."""

from __future__ import annotations

import itertools
import math

import numpy as np

from ..models.scm import LOG_2PI


def _log_evidence_node(y, X, prior_scale, sigma):
    """log N(y; 0, sigma^2 I + s^2 X X^T) (Bayesian linear regression evidence), via Woodbury."""
    n, k = len(y), X.shape[1]
    out = -0.5 * n * (LOG_2PI + 2 * math.log(sigma)) - 0.5 * (y @ y) / sigma**2
    if k:
        A = np.eye(k) / prior_scale**2 + X.T @ X / sigma**2
        c = np.linalg.cholesky(A)
        u = np.linalg.solve(c, X.T @ y / sigma**2)
        out += 0.5 * (u @ u) - np.sum(np.log(np.diag(c))) - k * math.log(prior_scale)
    return out


def exact_order_posterior(z, targets, values, prior_scale, noise_scales, tau):
    """Exact posterior over node orders for observed latents, by enumeration of all d! orders.

    Model: uniform order prior; in position space i.i.d. ``Normal(0, prior_scale)`` weights on all
    pairs (earlier -> later), the ``edge_weight`` prior of :func:`identity_model`; noise scales known.
    Then ``p(z | order)`` factorises over nodes into Bayesian linear regressions of ``z_j`` on all its
    predecessors over the rows where j is not intervened (intervened rows contribute a factor that does
    not depend on the order; ``values`` and ``tau`` enter only there and cancel).

    z: (N, d); targets, values: (N, d); noise_scales: (d,).
    Returns ``orders`` (d!, d) int (lexicographic) and ``probs`` (d!,).
    """
    z = np.asarray(z, np.float64)
    m = np.asarray(targets) > 0
    d = z.shape[1]
    sigma = np.broadcast_to(np.asarray(noise_scales, np.float64), (d,))
    del values, tau  # order-independent factors
    orders = np.array(list(itertools.permutations(range(d))), dtype=np.int64)
    cache = {}
    logp = np.zeros(len(orders))
    for o, order in enumerate(orders):
        for p, j in enumerate(order):
            key = (int(j), frozenset(int(i) for i in order[:p]))
            if key not in cache:
                rows = ~m[:, j]
                cache[key] = _log_evidence_node(z[rows, j], z[rows][:, sorted(key[1])], prior_scale, sigma[j])
            logp[o] += cache[key]
    probs = np.exp(logp - logp.max())
    return orders, probs / probs.sum()


def order_total_variation(order_draws, orders, probs):
    """Total variation distance between the empirical distribution of ``order_draws`` (S, d) and the
    distribution ``probs`` over ``orders`` (K, d) (e.g. from :func:`exact_order_posterior`)."""
    d = orders.shape[1]
    base = d ** np.arange(d)[::-1]
    index = {int(k): i for i, k in enumerate(orders @ base)}
    counts = np.zeros(len(orders))
    for key in np.asarray(order_draws) @ base:
        counts[index[int(key)]] += 1
    return 0.5 * float(np.abs(counts / counts.sum() - probs).sum())
