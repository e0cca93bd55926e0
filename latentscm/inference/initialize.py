"""Data-driven initialisation for linear decoders: a latent estimate, a decoder and an order proposal.

Steps (all closed form or cheap local search, numpy):

1. ``estimate_latents``: project centred ``x`` on its top-d principal subspace; for each node j,
   regress the known intervention value ``v_j`` on those coordinates over the rows where j is
   targeted (there ``z_j = v_j + eta``). The fitted map gives ``z_hat_j`` for every row. This
   identifies each latent's scale and sign, because interventions pin them.
2. ``A, b`` by least squares of ``x`` on ``z_hat``.
3. ``propose_order``: start from a greedy order of interventional total effects (how much
   intervening on j moves ``z_hat_k``), then hill-climb with insertion moves on the exact Gaussian
   profile log-likelihood of ``z_hat`` given the order (each node regressed on all its predecessors,
   on the rows where it is not intervened). Interventions make this score order-sensitive.
4. ``L`` and ``sigma`` from those regressions.

The SVI guide starts from these values; it then learns the order distribution itself.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np


class Initialisation(NamedTuple):
    z: np.ndarray  # (N, d)
    A: np.ndarray  # (d, D)
    b: np.ndarray  # (D,)
    obs_scale: float
    order: np.ndarray  # (d,)
    W: np.ndarray  # (d, d)
    sigma: np.ndarray  # (d,)
    score: float  # profile log-likelihood of the proposed order


def estimate_latents(x, targets, values):
    """Linear latent estimate ``z_hat`` (N, d) from intervention values; see the module docstring."""
    x = np.asarray(x, np.float64)
    d = targets.shape[1]
    mean = x.mean(0)
    xc = x - mean
    _, _, vt = np.linalg.svd(xc[:: max(1, len(x) // 5000)], full_matrices=False)
    y = np.c_[xc @ vt[:d].T, np.ones(len(x))]
    z = np.zeros((len(x), d))
    for j in range(d):
        rows = (targets[:, j] > 0) & np.isfinite(values[:, j])
        if rows.sum() < d + 2 or np.ptp(values[rows, j]) == 0:
            # No usable intervention values for node j: fall back to a standardised component.
            z[:, j] = y[:, j] / (y[:, j].std() + 1e-12)
            continue
        coef, *_ = np.linalg.lstsq(y[rows], values[rows, j], rcond=None)
        z[:, j] = y @ coef
    return z


def _node_fit(z, targets, j, parents):
    """Gaussian log-likelihood, coefficients and residual scale of z_j on parents (non-intervened rows)."""
    rows = targets[:, j] == 0
    if rows.sum() < 2:
        return 0.0, np.zeros(len(parents)), 1.0
    y = z[rows, j]
    if len(parents):
        X = z[rows][:, parents]
        coef, *_ = np.linalg.lstsq(X, y, rcond=None)
        r = y - X @ coef
    else:
        coef, r = np.zeros(0), y
    var = max(r @ r / len(r), 1e-8)
    return -0.5 * len(r) * (np.log(2 * np.pi * var) + 1.0), coef, np.sqrt(var)


def order_score(z, targets, order):
    """Profile log-likelihood of latents ``z`` (N, d) under a node order (each node on all predecessors)."""
    return sum(_node_fit(z, targets, j, list(order[:p]))[0] for p, j in enumerate(order))


def _total_effect_order(z, targets, values):
    d = z.shape[1]
    effect = np.zeros((d, d))  # effect[j, k]: |corr(v_j, z_k)| where j targeted, k not
    for j in range(d):
        for k in range(d):
            rows = (targets[:, j] > 0) & (targets[:, k] == 0) & np.isfinite(values[:, j])
            if j != k and rows.sum() > 3 and np.ptp(values[rows, j]) > 0:
                effect[j, k] = abs(np.corrcoef(values[rows, j], z[rows, k])[0, 1])
    order, left = [], list(range(d))
    while left:  # pick the node least explained by the remaining ones
        k = min(left, key=lambda c: sum(effect[j, c] for j in left if j != c))
        order.append(k)
        left.remove(k)
    return np.array(order)


def propose_order(z, targets, values, max_sweeps=20):
    """Order proposal (d,) and its score: total-effect greedy start, then insertion hill climbing."""
    order = list(_total_effect_order(z, targets, values))
    best = order_score(z, targets, order)
    d = len(order)
    for _ in range(max_sweeps):
        improved = False
        for i in range(d):
            for p in range(d):
                if p == i:
                    continue
                cand = order.copy()
                cand.insert(p, cand.pop(i))
                s = order_score(z, targets, cand)
                if s > best + 1e-9:
                    order, best, improved = cand, s, True
        if not improved:
            break
    return np.array(order), best


def initialise(x, targets, values, order=None):
    """Full data-driven initialisation (see the module docstring). ``order`` skips the order search."""
    targets = np.asarray(targets)
    values = np.where(targets > 0, np.asarray(values, np.float64), 0.0)  # NaN: unknown value
    x = np.asarray(x, np.float64)
    z = estimate_latents(x, targets, values)
    Z1 = np.c_[z, np.ones(len(z))]
    coef, *_ = np.linalg.lstsq(Z1, x, rcond=None)
    A, b = coef[:-1], coef[-1]
    obs_scale = float(np.sqrt(np.mean((x - Z1 @ coef) ** 2)))
    if order is None:
        order, score = propose_order(z, targets, values)
    else:
        order = np.asarray(order)
        score = order_score(z, targets, order)
    d = z.shape[1]
    W, sigma = np.zeros((d, d)), np.ones(d)
    for p, j in enumerate(order):
        _, coef_j, sigma[j] = _node_fit(z, targets, j, list(order[:p]))
        W[order[:p], j] = coef_j
    return Initialisation(z, A, b, max(obs_scale, 1e-3), np.asarray(order), W, sigma, float(score))
