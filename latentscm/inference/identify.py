"""Moment-based identification: latent directions, scales and an order from per-pattern second moments.

The one start of every method with a linear (or identity) decoder. With ``x = z A + b + s * noise``,
the top-``d`` principal coordinates ``y`` of ``x`` are an invertible affine image of ``z``:
``z = y1 H`` with ``y1 = [y, 1]`` and ``H`` ((d + 1), d). For a node order, the Gaussian
log-likelihood of the projected data is

    N log|det H[:d]| + sum_j [ free_j + known_j + hidden_j ]

where, for each node j, ``free_j`` is the profile log-likelihood of the regression of ``z_j`` on its
predecessors over the rows where j is not intervened on (``sigma_j`` and the weights maximised out in
closed form), ``known_j = sum log N(z_nj; v_nj, tau^2 + s^2 |h_j|^2)`` over the rows where j was set to a
known value and ``hidden_j = sum log N(z_nj; 0, tau^2 + value_scale^2 + s^2 |h_j|^2)`` over the rows where
j was set to an unknown value (``s^2 |h_j|^2``: the observation noise seen through the projection).
Every term depends on the data only through per-pattern second moments of ``y1`` (and their cross
moments with the known values), so one evaluation costs ``O(P d^3)`` for P patterns, whatever N.

Each signal identifies ``H`` in its own way, and the same objective uses all of them:

* known values that vary (the seed paper's setting) pin ``z_j``'s scale, sign and location: the
  known term is a regression of ``v_j`` on ``y1``;
* knockouts (known constant values, e.g. 0) pin ``z_j`` to a direction of variance ``tau^2`` in the
  regimes that target it (the smallest generalised eigenvector of their second moments);
* unknown values make ``z_j`` independent of its parents with variance ``tau^2 + value_scale^2``;
  the Jacobian term forbids the collapse of any direction.

Gauge: a latent whose values are known takes the values' unit; one with unknown values takes the
unit the model assumes (intervened variance ``tau^2 + value_scale^2``), and one that is knocked out
the unit in which its knockout variance is ``tau^2``. Signs of latents without varying known values
are arbitrary (:func:`latentscm.metrics.edge_rmse` compares in the unit-noise gauge with signs
aligned, see there).

Search: closed-form starts (value regressions, knockout eigenvectors) and a few random ones; for
each, L-BFGS on ``H`` for the current order alternates with the insertion hill climbing of
:func:`~latentscm.inference.initialise.propose_order` on ``z = y1 H``; the best log-likelihood wins.
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np
import scipy.linalg

from ..models.collapsed import group_rows
from ..models.scm import LOG_2PI
from ..metrics import DEFAULT_THRESHOLD
from .initialise import _best_insertions, node_grams, propose_order, weights_in_order

_OUTER_ROUNDS = 6  # alternations of (H | order) and (order | H) per start
_LBFGS_ITERS = 300
_POLISH_ITERS = 100  # L-BFGS iterations to score one order move in the polish
RIVAL_ORDER_NATS = 2.0  # an order this close to the best (or above it) with another graph: weakly decided
_RIVAL_REACH = 3  # the rival orders move one node at most this many positions


class Moments:
    """Per-node second-moment statistics of ``y1 = [y, 1]`` (all (d, d + 1, d + 1) or (d,)).

    free[j], n_free[j]: rows where j is not intervened on; known[j], known_v[j] ((d, d + 1)), known_vv,
    n_known: rows where j was set to a known value; hidden[j], n_hidden: rows with an unknown value.
    """

    def __init__(self, y1, targets, values):
        t = np.asarray(targets) > 0
        v = np.asarray(values, np.float64)
        known = t & np.isfinite(v)
        v0 = np.where(known, v, 0.0)
        patterns, g = group_rows(np.concatenate([t, known], axis=1))
        S, cnt = pattern_moments(y1, g, len(patterns))
        d = t.shape[1]
        self._fill(S, cnt, patterns[:, :d].astype(np.float64), patterns[:, d:].astype(np.float64),
                   v0.T @ y1, (v0**2).sum(0), len(y1))

    @classmethod
    def from_patterns(cls, S, cnt, tp, kp, known_v, known_vv, N):
        """Moments from pattern second moments S (P, d+1, d+1), counts (P,), each pattern's targeted (tp)
        and known-value (kp) weights (P, d) (0/1, or probabilities for targets inferred), the known values'
        cross moments ``known_v`` (d, d+1) and ``known_vv`` (d,), and the row count N."""
        m = cls.__new__(cls)
        m._fill(S, cnt, tp, kp, known_v, known_vv, N)
        return m

    def _fill(self, S, cnt, tp, kp, known_v, known_vv, N):
        self.known_v, self.known_vv, self.N = known_v, known_vv, N  # rows without a known value add 0
        hp = tp - kp
        self.free = np.einsum("pj,pab->jab", 1 - tp, S)
        self.n_free = (1 - tp).T @ cnt
        self.known = np.einsum("pj,pab->jab", kp, S)
        self.n_known = kp.T @ cnt
        self.hidden = np.einsum("pj,pab->jab", hp, S)
        self.n_hidden = hp.T @ cnt


def pattern_moments(y1, g, P):
    """Second moments ``y1^T y1`` (P, d+1, d+1) and row counts (P,) of the rows of each group ``g``."""
    d1 = y1.shape[1]
    S = np.stack([y1[g == p].T @ y1[g == p] for p in range(P)]) if P else np.zeros((0, d1, d1))
    return S, np.bincount(g, minlength=P).astype(np.float64)


def profile(m, H, order):
    """The free rows' profiled regressions under ``order``: weights ``w`` (d, d) (row j: z_j on its
    predecessors, 0 elsewhere) and residual variances ``rss_j / n_free_j`` (d,)."""
    w, rss, *_ = _regressions(m, H, _predecessors(order))
    return w, rss / np.maximum(m.n_free, 1.0)


def _predecessors(order):
    d = len(order)
    pos = np.empty(d, int)
    pos[np.asarray(order)] = np.arange(d)
    return (pos[:, None] > pos[None, :]).astype(np.float64)  # pred[j, i] = 1: i precedes j


def _regressions(m, H, pred):
    """Weighted least squares of each z_j on its predecessors over its free rows: w (d, d), rss (d,),
    and the intermediate products the gradient reuses."""
    d = pred.shape[0]
    YH = m.free @ H  # (d, d+1, d): Y_j H
    Z = np.einsum("ak,jal->jkl", H, YH)  # (d, d, d): H^T Y_j H
    A = Z * pred[:, :, None] * pred[:, None, :] + (1 - pred + 1e-12)[:, :, None] * np.eye(d)  # ridge: no free rows
    bvec = Z[np.arange(d), :, np.arange(d)] * pred  # (d, d): Z_j[:, j] on the predecessors
    w = np.linalg.solve(A, bvec[..., None])[..., 0]  # (d, d), 0 off the predecessors
    rss = np.maximum(Z[np.arange(d), np.arange(d), np.arange(d)] - np.sum(bvec * w, 1), 1e-300)
    return w, rss, YH


def _objective(moments, order, tau, value_scale, s2):
    """Negative projected log-likelihood and its gradient, as a function of flat H (vectorised over nodes)."""
    m = moments
    d = len(order)
    pred = _predecessors(order)
    eye = np.eye(d)
    nf = np.maximum(m.n_free, 1.0)
    use = (m.n_free >= 2).astype(np.float64)
    # intervened rows: known values (variance tau^2) and unknown ones (tau^2 + value_scale^2, no cross terms)
    intervened = ((m.known, m.n_known, tau**2, m.known_v, m.known_vv),
                  (m.hidden, m.n_hidden, tau**2 + value_scale**2, np.zeros_like(m.known_v), np.zeros(d)))

    def f(hflat):
        H = hflat.reshape(d + 1, d)
        Hd = H[:d]
        sign, logdet = np.linalg.slogdet(Hd)
        if sign == 0:
            return 1e30, np.zeros_like(hflat)
        val = m.N * logdet
        grad = np.zeros_like(H)
        grad[:d] = m.N * np.linalg.inv(Hd).T
        # free rows: z_j on its predecessors, weights and sigma_j profiled out
        w, rss, YH = _regressions(m, H, pred)
        val += np.sum(use * -0.5 * m.n_free * (np.log(rss / nf) + 1.0 + LOG_2PI))
        coef = eye - w  # (d, d): row j holds e_j - w_j
        Yr = np.einsum("jak,jk->ja", YH, coef)  # Y_j H (e_j - w_j)
        grad -= np.einsum("j,ja,jk->ak", use * m.n_free / rss, Yr, coef)
        noise = s2 * (Hd**2).sum(0)
        for Y, n, extra, cross, vv in intervened:
            var = extra + noise
            Yh = np.einsum("jab,bj->ja", Y, H)  # (d, d+1)
            q = np.einsum("ja,aj->j", Yh, H) - 2 * np.einsum("ja,aj->j", cross, H) + vv
            val += np.sum(-0.5 * n * (np.log(var) + LOG_2PI) - 0.5 * q / var)
            grad -= ((Yh - cross) / var[:, None]).T
            dvar = -0.5 * n / var + 0.5 * q / var**2
            grad[:d] += dvar * 2 * s2 * Hd
        return -val, -grad.reshape(-1)

    return f


def log_likelihood(moments, H, order, tau, value_scale, s2):
    """Projected log-likelihood (see the module docstring) of ``H`` ((d + 1), d) under ``order``."""
    return -_objective(moments, order, tau, value_scale, s2)(np.asarray(H, np.float64).reshape(-1))[0]


def _fit_H(moments, H, order, tau, value_scale, s2, iters=_LBFGS_ITERS):
    f = _objective(moments, order, tau, value_scale, s2)
    import scipy.optimize  # here: its import is a fifth of a second that fits anchored by known values do not need

    res = scipy.optimize.minimize(f, H.reshape(-1), jac=True, method="L-BFGS-B", options={"maxiter": iters})
    return res.x.reshape(H.shape), -res.fun


def project(x, d):
    """Top-``d`` principal coordinates ``y`` (N, d), the map (mean (D,), basis (d, D)) and the
    observation-noise variance per dimension estimated from the remaining spectrum."""
    x = np.asarray(x, np.float64)
    mean = x.mean(0)
    xc = x - mean
    sub = xc[:: max(1, len(x) // 5000)]
    _, sv, vt = np.linalg.svd(sub, full_matrices=False)
    basis = vt[:d]
    rest = max(1, min(sub.shape) - d)
    s2 = float((sv[d:] ** 2).sum() / (len(sub) * rest)) if len(sv) > d else 0.0
    return xc @ basis.T, mean, basis, s2


def anchored(y1, targets, values):
    """H ((d + 1), d) by regressing each node's known values on ``y1``, or None unless every node has
    known values that vary in at least d + 2 rows (then they fix each latent's scale, sign and location)."""
    d = y1.shape[1] - 1
    H = np.zeros((d + 1, d))
    for j in range(d):
        rows = _known_rows(targets, values, j)
        column = _value_regression(y1, rows, values[:, j]) if rows.sum() >= d + 2 else None
        if column is None:
            return None
        H[:, j] = column
    return H


def _known_rows(targets, values, j):
    """Rows that set node j to a known value."""
    return (np.asarray(targets)[:, j] > 0) & np.isfinite(values[:, j])


def _value_regression(y1, rows, v):
    """The column of H that regresses node j's known values ``v[rows]`` on ``y1`` (z_j = v_j + eta there),
    or None when the values do not vary (a constant value pins no scale)."""
    v = v[rows]
    if not np.ptp(v) > 1e-9 * (1 + np.abs(v).max()):
        return None
    return np.linalg.lstsq(y1[rows], v, rcond=None)[0]


def _closed_form_start(y1, targets, values, tau, value_scale, rng):
    """H from each node's own signal: value regressions, knockout eigenvectors, else random directions."""
    d1 = y1.shape[1]
    d = d1 - 1
    y = y1[:, :d]
    C = np.cov(y.T) + 1e-12 * np.eye(d)
    H = np.zeros((d1, d))
    done = np.zeros(d, bool)
    t = np.asarray(targets) > 0
    for j in range(d):
        rows = _known_rows(t, values, j)
        if rows.sum() < d + 2:
            continue
        column = _value_regression(y1, rows, values[:, j])
        if column is not None:
            H[:, j] = column
        else:  # constant value: the direction of least variance in the rows that set it
            v = values[rows, j]
            yk = y[rows] - y[rows].mean(0)
            evals, evecs = _geigh(yk.T @ yk / rows.sum(), C)
            h = evecs[:, 0] * np.sqrt(max(tau**2, 1e-6) / max(evals[0] * (evecs[:, 0] @ C @ evecs[:, 0]), 1e-300))
            H[:d, j] = h
            H[d, j] = v.mean() - y[rows].mean(0) @ h
        done[j] = True
    for j in np.flatnonzero(~done):  # random direction, whitened, unit-ish variance
        g = np.linalg.solve(np.linalg.cholesky(C).T, rng.normal(size=d))
        hidden = t[:, j] & ~np.isfinite(values[:, j])
        scale = np.sqrt(tau**2 + value_scale**2) if hidden.any() else 1.0
        H[:d, j] = g / np.linalg.norm(g) * scale
        H[d, j] = -y.mean(0) @ H[:d, j]
    return H


def _peel_start(y1, targets, values, tau, value_scale):
    """Order and H by peeling sinks off the per-regime precision matrices (closed form).

    For a sink j (last in a topological order) of the latent DAG, ``z_j`` enters only its own factor,
    so with ``f_j`` its mixing direction (``y = sum_k z_k f_k^T``) the vector ``Theta_r f_j`` of the
    projected precision of regime r takes one value in all regimes that target j (``g_j / omega_j``,
    with ``g_j = H e_j`` its unmixing direction and ``omega_j`` its intervened variance) and one in all that
    do not. The node whose best direction comes closest to that is the sink; projecting y on the
    complement of ``f_j`` marginalises it out (the rest of the DAG and the regimes are unchanged), and the
    next sink follows. Returns ``order`` (d,) and ``H`` ((d + 1), d), or None when some node is never both
    targeted in a regime with enough rows and free in another.
    """
    d = y1.shape[1] - 1
    y = y1[:, :d]
    t = np.asarray(targets) > 0
    masks, g = group_rows(t)
    masks = masks > 0
    keep = [r for r in range(len(masks)) if (g == r).sum() > 2 * d]
    if not keep:
        return None
    masks = masks[keep]
    n = np.array([(g == r).sum() for r in keep], np.float64)
    covs = np.stack([np.cov(y[g == r].T) for r in keep])  # (R, d, d)
    known = t & np.isfinite(values)
    # intervened variance (the gauge): tau^2 plus the known values' variance, or the unknown values' prior
    omega = np.array([tau**2 + (np.var(values[known[:, j], j]) if known[:, j].any() else value_scale**2)
                      for j in range(d)])
    P = np.eye(d)  # current coordinates: y P
    remaining = list(range(d))
    H = np.zeros((d + 1, d))
    sinks = []
    while remaining:
        m = P.shape[1]
        C = np.einsum("da,rde,eb->rab", P, covs, P)
        K = np.einsum("r,rab->ab", n, C) / n.sum()
        Linv = np.linalg.inv(np.linalg.cholesky(K))
        Cu = Linv @ C @ Linv.T  # whitened (pooled identity)
        Theta = np.linalg.inv(Cu)
        best = None
        for j in remaining:
            on = masks[:, j]
            if not on.any() or on.all():
                continue
            lam, f = split_direction(Theta, n, on)
            if best is None or lam < best[0]:
                best = (lam, j, f, on)
        if best is None:
            return None
        _, j, f, on = best
        gu = np.einsum("r,rab->ab", n[on], Theta[on]) @ f / n[on].sum()  # Theta f = g / omega (up to scale)
        var = np.einsum("r,a,rab,b->", n[on], gu, Cu[on], gu) / n[on].sum()
        gu = gu * np.sqrt(omega[j] / max(var, 1e-300))
        H[:d, j] = P @ Linv.T @ gu
        # mean: regimes that target j with known values; else the model's 0
        rows = known[:, j]
        H[d, j] = (values[rows, j].mean() - y[rows].mean(0) @ H[:d, j]) if rows.any() else -y.mean(0) @ H[:d, j]
        sinks.append(j)
        remaining.remove(j)
        if m > 1:  # marginalise z_j out: coordinates orthogonal to f (whitened)
            basis = np.linalg.svd(f[None, :])[2][1:].T  # (m, m - 1)
            P = P @ Linv.T @ basis
    return np.array(sinks[::-1]), H


def split_direction(Theta, n, on):
    """The direction ``f`` under which ``Theta_r f`` is most nearly constant within the regimes ``on`` and
    within the others (smallest generalised eigenvector of the within-group scatter against the group
    means' size), and that ratio: (ratio, f). Theta (R, m, m) per-regime precisions, n (R,) rows."""
    m = Theta.shape[1]
    Q, Q0 = np.zeros((m, m)), np.zeros((m, m))
    for sel in (on, ~on):
        Tm = np.einsum("r,rab->ab", n[sel], Theta[sel]) / n[sel].sum()
        Dlt = Theta[sel] - Tm
        Q += np.einsum("r,rca,rcb->ab", n[sel], Dlt, Dlt)
        Q0 += n[sel].sum() * Tm.T @ Tm
    lam, vec = _geigh(Q, Q0)
    return lam[0], vec[:, 0]


def _random_start(y1, rng):
    """A random H under which ``y1 H`` has identity covariance."""
    d = y1.shape[1] - 1
    y = y1[:, :d]
    C = np.cov(y.T) + 1e-12 * np.eye(d)
    Lc = np.linalg.cholesky(C)
    Q, _ = np.linalg.qr(rng.normal(size=(d, d)))
    H = np.zeros((d + 1, d))
    H[:d] = np.linalg.solve(Lc.T, Q)  # y H has identity covariance
    H[d] = -y.mean(0) @ H[:d]
    return H


def _geigh(Amat, Bmat):
    """Generalised symmetric eigenproblem A v = lambda B v (ascending)."""
    return scipy.linalg.eigh(Amat, Bmat)


def search(y1, targets, values, *, tau, value_scale, s2, order=None, num_random=None, seed=0):
    """Best (log-likelihood, H, order) of the local searches from the starts: the peeled order and H
    (:func:`_peel_start`), the closed-form H (:func:`_closed_form_start`) and ``num_random`` random H,
    each with its own order proposal and with the peeled order (with ``order`` given: that order
    only, not searched), then :func:`_polish`. ``num_random`` defaults to 0 when every node has known
    values (their closed form pins each direction), else 8 (with 4, unknown values at d = 10 ended in a
    worse optimum on 1 of 3 seeds)."""
    rng = np.random.default_rng(seed)
    t = np.asarray(targets)
    v = np.asarray(values, np.float64)
    moments = Moments(y1, t, v)
    if num_random is None:
        num_random = 0 if (moments.n_known > 0).all() else 8
    peel = _peel_start(y1, t, v, tau, value_scale)
    Hs = ([peel[1]] if peel is not None else []) + [_closed_form_start(y1, t, v, tau, value_scale, rng)]
    Hs += [_random_start(y1, rng) for _ in range(num_random)]
    starts = []
    for H in Hs:  # each start H with the peeled order and with its own order proposal
        if order is not None:
            starts.append((np.asarray(order), H))
            continue
        own, _ = propose_order(y1 @ H, t, np.where(np.isfinite(v), v, np.nan))
        starts += [(own, H)] + ([(peel[0], H)] if peel is not None and not np.array_equal(own, peel[0]) else [])
    best = (-np.inf, None, None)
    for cur, H in starts:
        for _ in range(_OUTER_ROUNDS):
            H, ll = _fit_H(moments, H, cur, tau, value_scale, s2)
            if order is not None:
                break
            new, _ = propose_order(y1 @ H, t, v, start=cur)
            if np.array_equal(new, cur):
                break
            cur = new
        if ll > best[0]:
            best = (ll, H, np.asarray(cur))
    if order is None:
        best = _polish(moments, y1, t, *best, tau=tau, value_scale=value_scale, s2=s2)
    return best


def _polish(moments, y1, targets, ll, H, order, *, tau, value_scale, s2):
    """Order moves scored with H re-fitted: each node to its best insertion position for the current
    ``z = y1 H`` and every adjacent swap; the best that raises the likelihood is applied, until none does.
    The alternation scores orders at a fixed H, which is fitted to the current order, so it can stop one
    move short of a better optimum (seen with unknown values)."""
    d = len(order)
    for _ in range(2 * d):
        G, n = node_grams(y1 @ H, targets)
        _, target = _best_insertions(G, n, order)
        cands = [np.insert(np.delete(order, i), target[i], order[i]) for i in range(d)]
        cands += [np.concatenate([order[:i], order[i + 1:i + 2], order[i:i + 1], order[i + 2:]]) for i in range(d - 1)]
        tried = {tuple(order)}
        found = None
        for cand in cands:
            if tuple(cand) in tried:
                continue
            tried.add(tuple(cand))
            Hc, llc = _fit_H(moments, H, cand, tau, value_scale, s2, iters=_POLISH_ITERS)
            if llc > ll + 1e-6 * abs(ll) and (found is None or llc > found[0]):
                found = (llc, Hc, cand)
        if found is None:
            break
        ll, H, order = found
        H, ll = _fit_H(moments, H, order, tau, value_scale, s2)
    return ll, H, np.asarray(order)


class Rivals(NamedTuple):
    """:func:`rival_orders`' result."""
    gap: float  # the best's log-likelihood minus the closest rival's (negative: the rival is above it)
    edges: list  # (i, j) edges on which some rival's graph differs from the best's
    count: int  # rivals
    order: np.ndarray  # the closest rival's order
    H: np.ndarray  # and its latents' map (z = y1 H)


def rival_orders(y1, targets, values, H, order, *, tau, value_scale, s2, threshold=DEFAULT_THRESHOLD):
    """Orders one move from the search's best that the data barely tell from it, with another graph.

    Every order that moves one node of ``order`` by at most :data:`_RIVAL_REACH` positions is scored with
    ``H`` re-fitted (:data:`_POLISH_ITERS` L-BFGS iterations from the best's ``H``: the latents may mix
    again). Those within :data:`RIVAL_ORDER_NATS` of the best's log-likelihood (or above it) whose graph
    (``|W| > threshold`` of :func:`~latentscm.inference.initialise.weights_in_order`) differs are rivals.
    Returns a :class:`Rivals`: the smallest gap (best minus rival; negative for a rival above it), the
    sorted ``(i, j)`` edges on which any rival's graph differs from the best's, the number of rivals
    and the order and ``H`` of the closest; None when there is none. On hidden-value data at d = 10 the fits whose graphs were wrong had
    such rivals (gaps -0.4 to 1.3 nats), the knockout and known-value fits none within 10 nats."""
    t = np.asarray(targets)
    v = np.asarray(values, np.float64)
    moments = Moments(y1, t, v)
    ll = log_likelihood(moments, H, order, tau, value_scale, s2)

    def graph(Hc, o):
        return np.abs(weights_in_order(y1 @ Hc, t, o)[0]) > threshold

    best, d = graph(H, order), len(order)
    gaps, changed, closest = [], np.zeros((d, d), bool), None
    tried = {tuple(order)}
    for i in range(d):
        for p in range(max(0, i - _RIVAL_REACH), min(d, i + _RIVAL_REACH + 1)):
            cand = np.insert(np.delete(order, i), p, order[i])
            if tuple(cand) in tried:
                continue
            tried.add(tuple(cand))
            Hc, llc = _fit_H(moments, H, cand, tau, value_scale, s2, iters=_POLISH_ITERS)
            diff = graph(Hc, cand) != best
            if ll - llc <= RIVAL_ORDER_NATS and diff.any():
                if not gaps or ll - llc < min(gaps):
                    closest = (cand, Hc)
                gaps.append(ll - llc)
                changed |= diff
    if not gaps:
        return None
    return Rivals(float(min(gaps)), [(int(i), int(j)) for i, j in zip(*np.nonzero(changed))], len(gaps), *closest)


def rival_orders_problem(rival):
    """The diagnostic sentence for :func:`rival_orders` (None when there is none)."""
    if rival is None:
        return None
    gap, edges, n = rival.gap, rival.edges, rival.count
    shown = ", ".join(f"{i}->{j}" for i, j in edges[:8]) + (f" and {len(edges) - 8} more" if len(edges) > 8 else "")
    side = "below" if gap >= 0 else "above"
    return (f"the start's node order is weakly decided: {n} order{'s' if n > 1 else ''} one move away "
            f"score{'' if n > 1 else 's'} within "
            f"{RIVAL_ORDER_NATS:g} nats of it (the closest {abs(gap):.1f} nats {side}) with another graph, "
            f"differing in the edges {shown}; these data weakly identify those edges (and the latents' mixing), "
            "and the posterior's confidence in them may overstate what the data say")

