"""Identification with unknown intervention targets: EM over the (regime, node) target indicators.

Given ``z = y1 H`` (see :mod:`latentscm.inference.identify`), the projected likelihood factorises over
nodes, and a regime's rows enter node j's factor either as free rows (``z_j`` regressed on its
predecessors) or as intervened rows with an unknown value (``z_j ~ N(0, tau^2 + value_scale^2 + s^2
|h_j|^2)``). So the indicator ``t_rj`` of "regime r targets node j" has an exact posterior given
``(H, order)`` and the free rows' regressions:

    logit p(t_rj = 1 | ...) = logit(rate) + log N(z_rj | intervened) - log N(z_rj | regression)

(sums over the regime's rows, from its second moments). EM alternates that E-step with the M-step of
:mod:`~latentscm.inference.identify` (L-BFGS on ``H`` and an order move, with each regime's moments
weighted by its target probabilities: the expected complete-data likelihood is linear in them). The
search runs from several starts (sink peeling; regimes grouped by their law, :func:`regime_clusters`, each group
one node's targets; every unknown entry targeted, or none, each with a data-driven and random ``H``) and keeps
the largest EM lower bound ``E_q log p(y, t) + H(q)``.

The collapsed fit's side is here too: the candidate target sets and statistics of the regimes with
unknown targets (:func:`open_target_stats`), each posterior draw's exact target probabilities
(:func:`target_draws`) and the most probable targets (:func:`hard_targets`).
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

import scipy.special

from .identify import (_closed_form_start, _fit_H, _peel_start, _polish, _random_start, Moments,
                       log_likelihood, pattern_moments, profile, split_direction)
from ..models.collapsed import group_rows, make_units, unit_stats
from ..models.target_sets import TargetStats, target_candidates, target_probabilities
from .initialise import propose_order
from ..metrics import mcc

_EM_ITERS = 30
_TOL = 1e-3
ALL_SETS = 64  # target_sets = "auto": every candidate set up to this many per regime (d <= 6)
MAX_SETS = 1024  # target_sets = "all": every set up to this many, else sets of at most max_targets entries
_DRAW_CHUNK = 16  # posterior draws per call of the jitted target probabilities
_NEAR = 2  # the last climb's moves pair nodes at most this far apart in the order
_MIN_GAIN = 1.0  # nats: the last climb keeps a move only when it raises the bound by more
_SAME_P = 1e-3  # regimes pooled while a likelihood-ratio test of equal distributions keeps p above this
RIVAL_NATS, RIVAL_MCC = 10.0, 0.97  # an EM end this close to the best, with latents this different: a warning


class TargetSearch(NamedTuple):
    bound: float  # EM lower bound of the best end
    H: np.ndarray  # (d + 1, d): z = y1 H
    order: np.ndarray  # (d,)
    q: np.ndarray  # (G, d): target probabilities of the regimes ``ids`` with unknown entries
    ids: np.ndarray  # (G,)
    rival: tuple | None  # (gap in nats, MCC with the best's latents, number of EM ends) of the most
    # different end within RIVAL_NATS of the best whose latents match it below RIVAL_MCC; None if none


class _Problem:
    """Per-pattern moments of the rows whose targets are known and per-regime moments of the others."""

    def __init__(self, y1, targets, values, unknown, group):
        t = np.asarray(targets) > 0
        unknown = np.asarray(unknown, bool)
        open_rows = unknown.any(1)
        v = np.where(open_rows[:, None], np.nan, np.asarray(values, np.float64))  # open regimes: values unknown
        known = t & np.isfinite(v)
        v0 = np.where(known, v, 0.0)
        patterns, gb = group_rows(np.concatenate([t, known], axis=1)[~open_rows])
        self.base = pattern_moments(y1[~open_rows], gb, len(patterns))
        d = t.shape[1]
        self.base_tp, self.base_kp = patterns[:, :d].astype(np.float64), patterns[:, d:].astype(np.float64)
        self.known_v, self.known_vv = v0.T @ y1, (v0**2).sum(0)
        ids, first, g = np.unique(np.asarray(group)[open_rows], return_index=True, return_inverse=True)
        self.ids = ids
        self.S, self.n = pattern_moments(y1[open_rows], g.reshape(-1), len(ids))
        rows = np.flatnonzero(open_rows)
        self.fixed = np.where(unknown[rows[first]], 0.0, t[rows[first]].astype(np.float64))  # (G, d)
        self.free = unknown[rows[first]]
        self.rows, self.g = rows, g.reshape(-1)
        self.targets, self.values = t.astype(np.int8), v
        self.N, self.d = len(y1), d

    def moments(self, q):
        """Moments with the open regimes' targets weighted by ``q`` (G, d) (their values unknown)."""
        tp = np.where(self.free, q, self.fixed)
        return Moments.from_patterns(np.concatenate([self.base[0], self.S]), np.concatenate([self.base[1], self.n]),
                                     np.concatenate([self.base_tp, tp]),
                                     np.concatenate([self.base_kp, np.zeros_like(tp)]),
                                     self.known_v, self.known_vv, self.N)

    def hard(self, q):
        """Row targets (N, d) with the open regimes' targets at ``q > 1/2``, and values (NaN there)."""
        t, v = self.targets.copy(), self.values.copy()
        tp = np.where(self.free, q > 0.5, self.fixed > 0)
        t[self.rows] = tp[self.g]
        v[self.rows] = np.where(t[self.rows] > 0, np.nan, 0.0)
        return t, v


def _order_move(problem, y1, q, H, order):
    """Insertion hill climbing of the order from ``order`` at the hard targets of ``q`` (``order`` itself
    while some node has fewer than two free rows: nothing to regress)."""
    t, v = problem.hard(q)
    if ((t == 0).sum(0) < 2).any():
        return np.asarray(order)
    return propose_order(y1 @ H, t, v, start=order)[0]


def _logits(problem, H, order, m, rate, tau, value_scale, s2):
    """``logit p(t_rj = 1 | y, H, order)`` (G, d) for the open regimes."""
    d = problem.d
    w, var_f = profile(m, H, order)
    c = H @ (np.eye(d) - w).T  # column j: H (e_j - w_j), the free residual of z_j
    rss = np.einsum("ak,gab,bk->gk", c, problem.S, c)
    q_t = np.einsum("ak,gab,bk->gk", H, problem.S, H)
    var_t = tau**2 + value_scale**2 + s2 * (H[:d] ** 2).sum(0)
    n = problem.n[:, None]
    ll_f = -0.5 * n * np.log(var_f) - 0.5 * rss / var_f
    ll_t = -0.5 * n * np.log(var_t) - 0.5 * q_t / var_t
    return np.log(rate) - np.log1p(-rate) + ll_t - ll_f


def _bound(problem, q, H, order, rate, tau, value_scale, s2):
    """EM lower bound ``E_q log p(y, t | H, order) + entropy(q)`` on the open entries."""
    ll = log_likelihood(problem.moments(q), H, order, tau, value_scale, s2)
    qc = np.clip(q, 1e-12, 1 - 1e-12)
    prior = qc * np.log(rate) + (1 - qc) * np.log1p(-rate) - qc * np.log(qc) - (1 - qc) * np.log1p(-qc)
    return ll + float(np.sum(np.where(problem.free, prior, 0.0)))


def _em(problem, y1, q, H, order, fixed_order, *, rate, tau, value_scale, s2):
    for _ in range(_EM_ITERS):
        m = problem.moments(q)
        H, _ = _fit_H(m, H, order, tau, value_scale, s2)
        new_order = order
        if not fixed_order:
            new_order = _order_move(problem, y1, q, H, order)
        logit = _logits(problem, H, new_order, problem.moments(q), rate, tau, value_scale, s2)
        q_new = np.where(problem.free, 1.0 / (1.0 + np.exp(-np.clip(logit, -50, 50))), 0.0)
        done = np.abs(q_new - q).max() < _TOL and np.array_equal(new_order, order)
        q, order = q_new, np.asarray(new_order)
        if done:
            break
    return _bound(problem, q, H, order, rate, tau, value_scale, s2), q, H, order


def _two_values(Theta, n, f0_on):
    """Best split of regimes into targeted / free for a sink: alternate the direction ``f`` under which
    ``Theta_r f`` is most nearly constant within each group (:func:`~latentscm.inference.identify.split_direction`)
    and the groups (each regime to the nearer group
    mean of ``Theta_r f``). Returns (scatter ratio, f, on) or None."""
    on = f0_on.copy()
    best = None
    for _ in range(10):
        if not on.any() or on.all():
            return best
        lam, f = split_direction(Theta, n, on)
        if best is not None and lam >= best[0] - 1e-12:
            return best
        best = (lam, f, on)
        a = Theta @ f  # (R, m)
        c_on, c_off = (np.average(a[sel], axis=0, weights=n[sel]) for sel in (on, ~on))
        new = ((a - c_on) ** 2).sum(1) < ((a - c_off) ** 2).sum(1)
        if np.array_equal(new, on):
            return best
        on = new
    return best


def _peel_unknown(y1, g, observational, tau, value_scale):
    """Order, H and initial target indicators by peeling sinks (:func:`~latentscm.inference.identify._peel_start`)
    when the targets are unknown: each sink's regimes split in two groups by :func:`_two_values`, seeded
    from every single regime; the group of a regime known to be observational is free, without one the
    larger group. Nodes are labelled in peeling order. Returns (order, H, on (G, d) bool over the
    regimes ``0..G-1`` of ``g``) or None when fewer than two regimes have enough rows."""
    d = y1.shape[1] - 1
    y = y1[:, :d]
    G = g.max() + 1
    keep = np.array([(g == r).sum() > 2 * d for r in range(G)])
    if keep.sum() < 2:
        return None
    n = np.array([(g == r).sum() for r in range(G)], np.float64)[keep]
    covs = np.stack([np.cov(y[g == r].T) for r in np.flatnonzero(keep)])
    off_only = np.asarray(observational, bool)[keep]
    P, H, order, on_all = np.eye(d), np.zeros((d + 1, d)), [], np.zeros((G, d), bool)
    omega = tau**2 + value_scale**2
    for node in range(d):
        m = P.shape[1]
        C = np.einsum("da,rde,eb->rab", P, covs, P)
        Linv = np.linalg.inv(np.linalg.cholesky(np.einsum("r,rab->ab", n, C) / n.sum()))
        Cu = Linv @ C @ Linv.T
        Theta = np.linalg.inv(Cu)
        cands = [_two_values(Theta, n, np.eye(len(n), dtype=bool)[r]) for r in range(len(n))]
        cands = [c for c in cands if c is not None]
        if not cands:
            return None
        _, f, on = min(cands, key=lambda c: c[0])
        if (off_only & on).any() if off_only.any() else on.sum() > (~on).sum():
            on = ~on  # the group of a known observational regime is free; without one, the larger group
        gu = np.einsum("r,rab->ab", n[on], Theta[on]) @ f / n[on].sum()
        var = np.einsum("r,a,rab,b->", n[on], gu, Cu[on], gu) / n[on].sum()
        gu = gu * np.sqrt(omega / max(var, 1e-300))
        j = d - 1 - node  # sinks take the last labels
        H[:d, j] = P @ Linv.T @ gu
        H[d, j] = -y.mean(0) @ H[:d, j]
        on_all[np.flatnonzero(keep), j] = on
        order.append(j)
        if m > 1:
            P = P @ Linv.T @ np.linalg.svd(f[None, :])[2][1:].T
    return np.array(order[::-1]), H, on_all


def _gaussian_ll(n, s1, s2):
    """Maximised Gaussian log-likelihood (up to a constant) of rows with count ``n``, sum ``s1``, ``y^T y`` ``s2``
    (leading axes broadcast)."""
    mu = s1 / n[..., None]
    cov = s2 / n[..., None, None] - mu[..., :, None] * mu[..., None, :]
    return -0.5 * n * np.linalg.slogdet(cov)[1]


def regime_clusters(y1, g, p_same=_SAME_P):
    """Regimes ``0..G-1`` of ``g`` grouped by the distribution of their rows of ``y`` (``y1 = [y, 1]``):
    agglomerative, the two groups whose likelihood-ratio statistic for one Gaussian (mean and covariance) against
    two is smallest merged while its chi-square p-value exceeds ``p_same``. Regimes with the same targets and
    unknown values share their law, so the groups are candidates for "the same targets". Returns the group label
    of each regime (G,)."""
    G, d = int(g.max()) + 1, y1.shape[1] - 1
    S, n = pattern_moments(y1, g, G)  # y1^T y1 per regime: y^T y, and the sum of y in its last column
    s1, s2 = S[:, :d, d].copy(), S[:, :d, :d].copy()
    label = np.arange(G)
    alive = n > d + 1  # fewer rows: a singular covariance, left alone
    own = np.where(alive, _gaussian_ll(np.maximum(n, 1), s1, s2 + np.eye(d) * (~alive)[:, None, None]), 0.0)

    def lr(a, b):  # the likelihood-ratio statistic of merging a with each of b
        return 2 * (own[a] + own[b] - _gaussian_ll(n[a] + n[b], s1[a] + s1[b], s2[a] + s2[b]))

    stat = np.full((G, G), np.inf)
    for a in np.flatnonzero(alive):
        b = np.flatnonzero(alive[a + 1:]) + a + 1
        stat[a, b] = stat[b, a] = lr(a, b)
    df = d + d * (d + 1) / 2
    while alive.sum() > 1:
        a, b = np.unravel_index(np.argmin(stat), stat.shape)
        if scipy.special.chdtrc(df, stat[a, b]) < p_same:
            break
        n[a], s1[a], s2[a] = n[a] + n[b], s1[a] + s1[b], s2[a] + s2[b]
        own[a] = _gaussian_ll(n[a], s1[a], s2[a])
        alive[b] = False
        label[label == b] = a
        stat[b, :] = stat[:, b] = np.inf
        others = np.flatnonzero(alive & (np.arange(G) != a))
        stat[a, others] = stat[others, a] = lr(a, others)
    return np.unique(label, return_inverse=True)[1]


def _cluster_start(problem, y1, g_all, fixed_all, free_all, all_ids):
    """Target probabilities from :func:`regime_clusters` of every regime: an open regime grouped with a regime whose
    targets are all known takes its targets; each remaining group (when at most d) one node of its own. None
    when no group is left or more than d are."""
    label = regime_clusters(y1, g_all)
    open_g = np.searchsorted(all_ids, problem.ids)
    known = ~free_all.any(1)
    q = np.zeros((len(open_g), problem.d))
    groups = []
    for i, r in enumerate(open_g):
        mates = np.flatnonzero((label == label[r]) & known)
        if len(mates):
            q[i] = fixed_all[mates[0]]
        elif label[r] not in groups:
            groups.append(label[r])
    if not groups or len(groups) > problem.d:
        return None
    for i, r in enumerate(open_g):
        if label[r] in groups:
            q[i, groups.index(label[r])] = 1.0
    return np.where(problem.free, np.clip(q, 0.02, 0.98), 0.0)


def _match_labels(on, fixed, free):
    """Permutation of the peeled nodes onto the labels that best agrees with the known target entries."""
    agree = np.einsum("gi,gk->ik", on.astype(float), np.where(free, 0.0, fixed)) \
        + np.einsum("gi,gk->ik", (~on).astype(float), np.where(free, 0.0, 1 - fixed))
    import scipy.optimize  # here: its import is a fifth of a second that most fits do not need

    rows, cols = scipy.optimize.linear_sum_assignment(-agree)
    perm = np.empty(on.shape[1], int)
    perm[cols] = rows  # label k takes peeled node perm[k]
    return perm


def _flip(q, free, j):
    out = q.copy()
    out[:, j] = np.where(free[:, j], 1 - q[:, j], q[:, j])
    return out


def _swap(q, free, j, k):
    out = q.copy()
    both = free[:, j] & free[:, k]
    out[both, j], out[both, k] = q[both, k], q[both, j]
    return out


def _move(q, free, j, k):
    """``q`` with the regimes that target node j (q > 1/2) targeting node k instead, softly (0.02 / 0.98:
    EM from saturated probabilities tends to stay where it starts)."""
    out = q.copy()
    rows = (q[:, j] > 0.5) & free[:, j] & free[:, k]
    out[rows, j], out[rows, k] = 0.02, 0.98
    return out


def _near_moves(q, free, order):
    """For every two nodes at most :data:`_NEAR` apart in ``order``: their targets swapped, and the regimes
    that target one of them moved to the other (both directions)."""
    out = []
    for a, j in enumerate(order):
        for k in order[a + 1:a + 1 + _NEAR]:
            out += [_swap(q, free, j, k), _move(q, free, j, k), _move(q, free, k, j)]
    return [m for m in out if not np.array_equal(m, q)]


def _climb(problem, y1, best, moves, fixed_order, kw, ends, min_gain=None):
    """Repeat: EM from each perturbed ``q`` of ``moves(q, order)``; keep the best while the bound rises (by
    more than ``min_gain`` nats; default a relative 1e-6). Every EM end is appended to ``ends``."""
    for _ in range(problem.d):
        bound, q, H, cur = best
        tries = [_em(problem, y1, q2, H, cur, fixed_order, **kw) for q2 in moves(q, cur)]
        ends += tries
        top = max(tries, key=lambda r: r[0], default=None)
        if top is None or top[0] <= bound + (1e-6 * abs(bound) if min_gain is None else min_gain):
            break
        best = top
    return best


def search_targets(y1, targets, values, unknown, group, *, rate, tau, value_scale, s2, order=None,
                   num_random=4, seed=0):
    """Best (bound, H, order, q) of EM runs over the unknown targets, with ``q`` (G, d) the target
    probabilities of the regimes (sorted ``group`` ids) that have unknown entries; ``order`` fixes the
    order. Targets known in ``targets`` (where ``unknown`` is False) stay fixed."""
    rng = np.random.default_rng(seed)
    problem = _Problem(y1, targets, values, unknown, group)
    kw = dict(rate=rate, tau=tau, value_scale=value_scale, s2=s2)
    starts = []
    # the peel sees every regime: those with known targets fix the labels (an observational one, which
    all_ids, first, g_all = np.unique(np.asarray(group), return_index=True, return_inverse=True)
    free_all = np.asarray(unknown, bool)[first]
    fixed_all = np.where(free_all, 0.0, np.asarray(targets)[first] > 0)
    # group is free); a second peel sees only the regimes with unknown targets
    peels = [(y1, g_all.reshape(-1), ((fixed_all == 0) & ~free_all).all(1), np.arange(len(all_ids))),
             (y1[problem.rows], problem.g, np.zeros(len(problem.ids), bool), np.searchsorted(all_ids, problem.ids))]
    for y_p, g_p, observational, where in peels:
        peel = _peel_unknown(y_p, g_p, observational, tau, value_scale)
        if peel is None:
            continue
        p_order, p_H, on_p = peel
        on = np.zeros((len(all_ids), problem.d), bool)
        on[where] = on_p
        perm = _match_labels(on[where], fixed_all[where], free_all[where])
        inv = np.argsort(perm)
        on = on[np.searchsorted(all_ids, problem.ids)]
        q0 = np.where(problem.free, np.clip(on[:, perm], 0.02, 0.98), 0.0)
        starts.append((q0, p_H[:, perm], inv[p_order] if order is None else np.asarray(order)))
    clustered = _cluster_start(problem, y1, g_all.reshape(-1), fixed_all, free_all, all_ids)
    if clustered is not None:  # regimes grouped by their law, each group one node's targets
        t, v = problem.hard(clustered)
        peel = _peel_start(y1, t, v, tau, value_scale)
        if peel is not None:
            starts.append((clustered, peel[1], peel[0] if order is None else np.asarray(order)))
    for q0 in (problem.free.astype(np.float64), np.where(problem.free, rate, 0.0)):
        t, v = problem.hard(q0)
        Hs = [_closed_form_start(y1, t, v, tau, value_scale, rng)]
        peel = _peel_start(y1, t, v, tau, value_scale)
        if peel is not None:
            Hs.append(peel[1])
        Hs += [_random_start(y1, rng) for _ in range(num_random)]
        for H in Hs:
            own = np.asarray(order) if order is not None else _order_move(problem, y1, q0, H, rng.permutation(problem.d))
            starts.append((q0, H, own))
    ends = [_em(problem, y1, q0, H, own, order is not None, **kw) for q0, H, own in starts]
    best = max(ends, key=lambda r: r[0])
    free, fixed_order = problem.free, order is not None

    def flips(q, cur):  # a node's targeted and free regimes swapped
        return [_flip(q, free, j) for j in range(problem.d) if free[:, j].any()]

    best = _climb(problem, y1, best, flips, fixed_order, kw, ends)
    if not fixed_order:  # order moves with H re-fitted, at the final target probabilities
        _, q, H, cur = best
        m = problem.moments(q)
        _, H, cur = _polish(m, y1, problem.hard(q)[0], log_likelihood(m, H, cur, tau, value_scale, s2), H, cur,
                            tau=tau, value_scale=value_scale, s2=s2)
        best = _em(problem, y1, q, H, cur, False, **kw)
        ends.append(best)
    # EM can stall at a state that a swap leaves for a better one (at d = 10, 864 nats higher, with every
    # target right where two nodes' targets had been exchanged), or that moving the regimes of one node's
    # targets to a node near it in the order leaves (d = 5, Gaussian values, single targets: 22-70 nats
    # higher, every target right, where a neighbour had been marked as targeted too)
    best = _climb(problem, y1, best, lambda q, cur: _near_moves(q, free, cur), fixed_order, kw, ends,
                  min_gain=_MIN_GAIN)
    bound, q, H, cur = best
    return TargetSearch(bound, H, cur, q, problem.ids, _rival(ends, best, y1))


def _rival(ends, best, y1):
    """The EM end that most disagrees with ``best`` on the latents among those within :data:`RIVAL_NATS`
    of its bound (or above it), as (gap, MCC, number of ends) when its MCC is below :data:`RIVAL_MCC`,
    else None; ``gap`` is the best's bound minus the end's (negative for an end above it)."""
    z = y1 @ best[2]
    close = [(best[0] - e[0], mcc(y1 @ e[2], z)) for e in ends if best[0] - e[0] <= RIVAL_NATS]
    gap, m = min(close, key=lambda c: c[1], default=(0.0, 1.0))
    return (float(gap), float(m), len(ends)) if m < RIVAL_MCC else None


def rival_problem(rival):
    """The diagnostic sentence for :attr:`TargetSearch.rival` (None when there is none)."""
    if rival is None:
        return None
    gap, m, n = rival
    side = "below" if gap >= 0 else "above"
    return (f"the targets' start barely separates different latents: of {n} EM runs, one ended {abs(gap):.1f} "
            f"nats {side} the best with latents that match the kept start's only to MCC {m:.3f}; these data "
            "weakly identify the latents and so the graph, and the posterior's confidence overstates what they say")


# ---------------------------------------------------------------------- the collapsed fit's side
def has_observational_regime(dataset):
    """Whether some row is known to be observational (every target known and 0)."""
    known_zero = dataset.targets == 0
    if dataset.target_unknown is not None:
        known_zero &= ~dataset.target_unknown
    return bool(known_zero.all(1).any())


def open_target_stats(dataset, config, start=None):
    """:class:`TargetStats` of the rows whose targets are (partly) unknown, grouped by regime, with the
    candidate target sets of :func:`target_candidates`. ``target_sets = "all"``: every set while there
    are at most :data:`MAX_SETS`, else those that set at most ``max_targets`` unknown entries (by default
    the most that keep that many). ``"near_start"``: each regime's set in ``start`` (N, d), the start's row
    targets, and every set one entry away, pooled over regimes. ``"auto"``: all while a regime has at
    most :data:`ALL_SETS` sets, else near the start."""
    rows = dataset.target_unknown.any(1)
    ids, first = np.unique(dataset.regime[rows], return_index=True)
    unknown = dataset.target_unknown[rows][first]
    known = dataset.targets[rows][first]
    free = int(unknown.sum(1).max())
    mode = config.target_sets
    if mode == "auto":
        mode = "all" if 2**free <= ALL_SETS or start is None else "near_start"
    limit = config.max_targets
    if mode == "near_start" and start is None:
        raise ValueError('target_sets = "near_start" needs the start\'s row targets (start=...)')
    if mode == "near_start":
        cands, log_prior = target_candidates(known, unknown, config.target_rate, limit, near=start[rows][first])
    else:
        if limit is None:
            sets = np.cumsum([math.comb(free, i) for i in range(free + 1)])  # sets of at most k entries
            limit = max(k for k in range(free + 1) if sets[k] <= MAX_SETS or k == 1)
        cands, log_prior = target_candidates(known, unknown, config.target_rate, limit)
    units = make_units(dataset.x[rows], np.where(dataset.target_unknown[rows], 0, dataset.targets[rows]),
                       np.full((rows.sum(), dataset.d), np.nan))[0]
    return TargetStats(unit_stats(units, group=dataset.regime[rows]), cands, log_prior)


def target_draws(tstats, draws, config, dataset):
    """Per draw, ``p(t_rj = 1 | x, theta_s)`` (S, R, d) for every regime (sorted ids; known targets 0/1)."""
    keys = ("W", "noise_scale", "decoder_weight", "decoder_bias", "obs_scale")
    probs = np.concatenate([np.asarray(_target_probs(tstats, *(jnp.asarray(draws[k][i:i + _DRAW_CHUNK], jnp.float64)
                                                             for k in keys), config.tau, config.value_scale))
                            for i in range(0, len(draws["W"]), _DRAW_CHUNK)])
    ids = np.unique(dataset.regime)
    _, first = np.unique(dataset.regime, return_index=True)
    out = np.broadcast_to(dataset.targets[first].astype(np.float64), (len(probs),) + (len(ids), dataset.d)).copy()
    open_ids = np.unique(dataset.regime[dataset.target_unknown.any(1)])
    out[:, np.searchsorted(ids, open_ids)] = probs
    return out


@jax.jit
def _target_probs(tstats, W, sigma, A, b, obs_scale, tau, value_scale):
    """:func:`target_probabilities` of a chunk of draws (leading axis); the statistics are an argument (one
    program per shape, whatever the data)."""
    return jax.vmap(lambda *draw: target_probabilities(tstats, *draw, tau, value_scale))(W, sigma, A, b, obs_scale)


def hard_targets(dataset, regimes, probs):
    """Row targets (N, d) with the unknown ones at their posterior probability > 1/2."""
    inferred = (probs > 0.5).astype(np.int8)[np.searchsorted(regimes, dataset.regime)]
    return np.where(dataset.target_unknown, inferred, dataset.targets)
