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
    targets: np.ndarray  # (N, d): the targets used, inferred (probability > 1/2) where unknown
    problem: str | None = None  # a diagnostic sentence about the start (rival targets or orders), or None
    rival: "Initialisation | None" = None  # the closest rival order's start (identify.rival_orders), if any


class Estimate(NamedTuple):
    """:func:`estimate_latents`' result."""
    z: np.ndarray  # (N, d) latent estimate
    order: np.ndarray | None  # the likelihood search's order, None when it did not run
    targets: np.ndarray  # (N, d), unknown targets inferred
    problem: str | None  # a diagnostic sentence about the search, or None
    rival: tuple | None  # (z, order) of the closest rival order (identify.rival_orders), or None


def estimate_latents(x, targets, values, *, tau=0.1, value_scale=2.0, order=None, seed=0, unknown=None,
                     regime=None, target_rate=0.2):
    """An :class:`Estimate`: latent estimate ``z_hat`` (N, d), the order when the likelihood search ran
    (else None), the targets (N, d) with unknown ones inferred, a diagnostic sentence about the search
    (None when there is nothing to say; see :func:`latentscm.inference.targets.rival_problem` for
    inferred targets and :func:`latentscm.inference.identify.rival_orders` for a searched order) and the
    closest rival order's latents and order (None when there is none).

    Every node with known, varying intervention values in at least d + 2 rows is anchored by them:
    ``z_hat_j`` is the regression of ``v_j`` on the top-d principal coordinates of x (the seed paper's
    setting, closed form). Otherwise (knockouts, unknown values, nodes never intervened on) the
    moment-based search of :mod:`latentscm.inference.identify` finds the directions, scales and an
    order from the projected second moments. ``unknown`` (N, d) marks targets that are not known
    (``regime`` (N,) groups the rows that share them; ``target_rate`` is their prior probability): then
    the EM search of :mod:`latentscm.inference.targets` infers them too.
    """
    # identify builds on this module: imported here
    from .identify import anchored, project, rival_orders, rival_orders_problem, search
    from .targets import rival_problem, search_targets

    t = np.asarray(targets)
    v = np.where(t > 0, np.asarray(values, np.float64), 0.0)
    d = t.shape[1]
    y, _, _, s2 = project(x, d)
    y1 = np.c_[y, np.ones(len(y))]
    if unknown is not None and np.any(unknown):
        found = search_targets(y1, t, v, unknown, regime, rate=target_rate, tau=tau, value_scale=value_scale,
                               s2=s2, order=order, seed=seed)
        rows = np.asarray(unknown).any(1)
        g = np.searchsorted(found.ids, np.asarray(regime)[rows])
        t = t.copy()
        t[rows] = np.where(np.asarray(unknown)[rows], found.q[g] > 0.5, t[rows])
        return Estimate(y1 @ found.H, found.order, t, rival_problem(found.rival), None)
    H = anchored(y1, t, v)
    if H is not None:
        return Estimate(y1 @ H, None, t, None, None)
    searched = order is None
    _, H, order = search(y1, t, v, tau=tau, value_scale=value_scale, s2=s2, order=order, seed=seed)
    rival = rival_orders(y1, t, v, H, order, tau=tau, value_scale=value_scale, s2=s2) if searched else None
    return Estimate(y1 @ H, order, t, rival_orders_problem(rival),
                    None if rival is None else (y1 @ rival.H, rival.order))


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


def weights_in_order(z, targets, order):
    """``W`` (d, d) and ``sigma`` (d,) of latents ``z`` in ``order``: each node least-squares regressed on its
    predecessors over the rows that do not intervene on it (a node always intervened on: no edges, sigma 1)."""
    d = z.shape[1]
    W, sigma = np.zeros((d, d)), np.ones(d)
    for p, j in enumerate(order):
        _, coef, sigma[j] = _node_fit(z, targets, j, list(order[:p]))
        W[order[:p], j] = coef
    return W, sigma


def node_grams(z, targets):
    """Per-node Gram matrices of ``z`` over the rows where that node is not intervened on.

    Returns ``G`` (d, d, d) with ``G[j] = sum over rows with targets[:, j] == 0 of z_n z_n^T`` and the
    row counts ``n`` (d,). Rows are grouped by target mask first, so the cost is
    ``O(N d^2 + R d^3)`` for R distinct masks. Every regression of the order search is a function of
    these: the residual sum of squares of z_j on a set S is ``G[j]_jj - G[j]_jS G[j]_SS^-1 G[j]_Sj``.
    """
    z = np.asarray(z, np.float64)
    masks, index = np.unique(np.asarray(targets) > 0, axis=0, return_inverse=True)
    index = index.reshape(-1)
    d = z.shape[1]
    S = np.zeros((len(masks), d, d))
    for r in range(len(masks)):
        zr = z[index == r]
        S[r] = zr.T @ zr
    free = 1.0 - masks.astype(np.float64)  # (R, d)
    counts = np.bincount(index, minlength=len(masks)).astype(np.float64)
    return np.einsum("rj,rab->jab", free, S), free.T @ counts


def _loglik(rss, n):
    """Profile Gaussian log-likelihood of a regression with residual sum of squares ``rss`` on n rows."""
    rss, n = np.asarray(rss, np.float64), np.asarray(n, np.float64)
    var = np.maximum(rss / np.maximum(n, 1.0), 1e-8)
    return np.where(n >= 2, -0.5 * n * (np.log(2 * np.pi * var) + 1.0), 0.0)


def _solve_psd(G, rhs):
    """Solve ``G x = rhs`` for a Gram matrix (tiny ridge for exactly collinear columns)."""
    jitter = 1e-12 * max(np.trace(G), 1e-300) / max(len(G), 1)
    return np.linalg.solve(G + jitter * np.eye(len(G)), rhs)


def _regress(G, j, parents):
    """Coefficients and residual sum of squares of z_j on ``parents`` from the node's Gram ``G``."""
    parents = np.asarray(parents, int)
    if len(parents) == 0:
        return np.zeros(0), G[j, j]
    coef = _solve_psd(G[np.ix_(parents, parents)], G[parents, j])
    return coef, G[j, j] - G[j, parents] @ coef


def order_score(z, targets, order, grams=None):
    """Profile log-likelihood of latents ``z`` (N, d) under a node order (each node on all predecessors).

    ``grams``: optional precomputed :func:`node_grams` of the same ``z`` and ``targets``.
    """
    G, n = node_grams(z, targets) if grams is None else grams
    order = np.asarray(order)
    return float(sum(_loglik(_regress(G[j], j, order[:p])[1], n[j]) for p, j in enumerate(order)))


def _move_tables(G, n, order):
    """Log-likelihood of every node with one node added to or removed from its predecessor set.

    Returns ``cur`` (d,) the current per-node terms and ``without``, ``with_`` (d, d):
    ``without[k, i]`` is node k's term with i removed from its predecessors (equal to ``cur[k]``
    when i is not one), ``with_[k, i]`` with i added (``cur[k]`` when i already is one).
    """
    d = len(order)
    cur, without, with_ = np.zeros(d), np.zeros((d, d)), np.zeros((d, d))
    for p, k in enumerate(order):
        Gk, S = G[k], order[:p]
        if p:
            Sigma = Gk - Gk[:, S] @ _solve_psd(Gk[np.ix_(S, S)], Gk[S, :])  # partial covariances given S
        else:
            Sigma = Gk
        rss = Sigma[k, k]
        # adding i (not in S): rss - Sigma_ki^2 / Sigma_ii
        add = rss - Sigma[k] ** 2 / np.maximum(np.diag(Sigma), 1e-300)
        # removing i (in S): 1 / rss = M_kk with M the inverse Gram of S + {k}
        drop = np.full(d, rss)
        if p:
            T = np.append(S, k)
            M = np.linalg.inv(Gk[np.ix_(T, T)] + 1e-12 * np.trace(Gk) / d * np.eye(len(T)))
            drop[S] = 1.0 / (M[-1, -1] - M[-1, :-1] ** 2 / np.diag(M)[:-1])
        add[S], add[k], drop[k] = rss, rss, rss
        cur[k] = _loglik(rss, n[k])
        with_[k], without[k] = _loglik(add, n[k]), _loglik(drop, n[k])
    return cur, without, with_


def _best_insertions(G, n, order):
    """For every node i, the best position to reinsert it (others keeping their relative order).

    Returns ``gain`` (d,) (score change of the best insertion of each node, >= 0 up to rounding) and
    ``target`` (d,) (the position in the order without i, 0..d-1). Cost ``O(d^4)``.
    """
    d = len(order)
    cur, without, with_ = _move_tables(G, n, order)
    total = cur.sum()
    gain, target = np.zeros(d), np.zeros(d, int)
    for pos_i, i in enumerate(order):
        rest = np.delete(order, pos_i)
        Gi = G[i]
        # z_i on every prefix of ``rest``: whitened coordinates of its covariances with them
        L = np.linalg.cholesky(Gi[np.ix_(rest, rest)] + 1e-12 * np.trace(Gi) / d * np.eye(d - 1))
        c = np.linalg.solve(L, Gi[rest, i])  # triangular system; numpy's solve is fine at this size
        own = _loglik(Gi[i, i] - np.concatenate([[0.0], np.cumsum(c**2)]), n[i])  # (d,): q predecessors
        a = np.concatenate([[0.0], np.cumsum(without[rest, i])])  # nodes before i: i removed
        b = np.concatenate([np.cumsum(with_[rest, i][::-1])[::-1], [0.0]])  # nodes after i: i added
        scores = a + own + b
        target[pos_i] = int(np.argmax(scores))
        gain[pos_i] = scores[target[pos_i]] - total
    return gain, target


def _total_effect_order(z, targets, values):
    """Greedy order from interventional total effects: ``effect[j, k] = |corr(v_j, z_k)|`` over the rows
    where j is targeted (with a known value) and k is not; repeatedly take the node least explained by
    the remaining ones. Vectorised: ``O(N d^2)``."""
    z = np.asarray(z, np.float64)
    d = z.shape[1]
    effect = np.zeros((d, d))
    for j in range(d):
        rows = (targets[:, j] > 0) & np.isfinite(values[:, j])
        if rows.sum() <= 3:
            continue
        v, Z, w = values[rows, j].astype(np.float64), z[rows], (targets[rows] == 0).astype(np.float64)
        cnt = w.sum(0)
        safe = np.maximum(cnt, 1.0)
        mv, mz = (v @ w) / safe, (Z * w).sum(0) / safe
        cov = ((v[:, None] * Z) * w).sum(0) / safe - mv * mz
        var_v = ((v**2) @ w) / safe - mv**2
        var_z = ((Z**2) * w).sum(0) / safe - mz**2
        ok = (cnt > 3) & (var_v > 1e-12 * (1 + mv**2)) & (var_z > 0)
        effect[j] = np.where(ok, np.abs(cov) / np.sqrt(np.where(ok, var_v * var_z, 1.0)), 0.0)
        effect[j, j] = 0.0
    order, left = [], np.arange(d)
    while len(left):  # pick the node least explained by the remaining ones
        k = left[np.argmin(effect[np.ix_(left, left)].sum(0))]
        order.append(int(k))
        left = left[left != k]
    return np.array(order)


def propose_order(z, targets, values, max_moves=None, grams=None, start=None):
    """Order proposal (d,) and its score: insertion hill climbing from ``start`` (default: the greedy
    order of interventional total effects).

    Each round evaluates every insertion move (node i to any position) at once from the per-node
    Gram matrices (:func:`node_grams`, rank-one updates of partial covariances: ``O(d^4)`` per
    round instead of ``O(d^2)`` regressions on the rows) and applies the best one. It stops at a
    local optimum of the insertion neighbourhood or after ``max_moves`` moves (default ``4 d``).
    """
    G, n = node_grams(z, targets) if grams is None else grams
    order = _total_effect_order(z, targets, values) if start is None else np.asarray(start)
    d = len(order)
    for _ in range(4 * d if max_moves is None else max_moves):
        gain, target = _best_insertions(G, n, order)
        i = int(np.argmax(gain))
        if gain[i] <= 1e-6 * max(1.0, abs(float(n.sum()))):
            break
        rest = np.delete(order, i)
        order = np.insert(rest, target[i], order[i])
    return order, order_score(z, targets, order, grams=(G, n))


def initialise(x, targets, values, order=None, observed=False, *, tau=0.1, value_scale=2.0, seed=0,
               unknown=None, regime=None, target_rate=0.2):
    """Full data-driven initialisation (see the module docstring). ``order`` skips the order search;
    ``observed``: x is the latents themselves (identity decoder), no latent estimate; ``tau`` and
    ``value_scale`` (the model's intervention noise and unknown-value scale) fix the gauge of latents
    that no known value anchors; ``unknown``, ``regime``, ``target_rate``: targets to infer (see
    :func:`estimate_latents`); the result's ``targets`` hold them."""
    targets = np.asarray(targets)
    values = np.where(targets > 0, np.asarray(values, np.float64), 0.0)  # NaN: unknown value
    x = np.asarray(x, np.float64)
    found = problem = rival = None
    if observed:
        z = x
    else:
        z, found, inferred, problem, rival = estimate_latents(x, targets, values, tau=tau, value_scale=value_scale,
                                                              order=order, seed=seed, unknown=unknown,
                                                              regime=regime, target_rate=target_rate)
        if unknown is not None and np.any(unknown):  # inferred targets: their values are unknown
            values = np.where(inferred > targets, np.nan, values)
            targets = inferred
    ini = _start(x, z, targets, values, order if order is not None else found, problem)
    if rival is not None:
        ini = ini._replace(rival=_start(x, rival[0], targets, values, rival[1], None))
    return ini


def _start(x, z, targets, values, order, problem):
    """The start for latents ``z``: decoder by least squares, ``order`` (proposed when None), W and sigma."""
    Z1 = np.c_[z, np.ones(len(z))]
    coef, *_ = np.linalg.lstsq(Z1, x, rcond=None)
    A, b = coef[:-1], coef[-1]
    obs_scale = float(np.sqrt(np.mean((x - Z1 @ coef) ** 2)))
    grams = node_grams(z, targets)
    if order is None:
        order, score = propose_order(z, targets, values, grams=grams)
    else:
        order = np.asarray(order)
        score = order_score(z, targets, order, grams=grams)
    d = z.shape[1]
    W, sigma = np.zeros((d, d)), np.ones(d)
    G, n = grams
    for p, j in enumerate(order):
        if n[j] < 2:  # always intervened on: nothing to regress
            continue
        coef_j, rss = _regress(G[j], j, order[:p])
        sigma[j] = np.sqrt(max(rss / n[j], 1e-8))
        W[order[:p], j] = coef_j
    return Initialisation(z, A, b, max(obs_scale, 1e-3), np.asarray(order), W, sigma, float(score), targets,
                          problem)
