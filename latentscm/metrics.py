"""Evaluation metrics for posteriors over latent linear-Gaussian SCMs.

Convention (see ``docs/internal-contract.md``): ``W[i, j] != 0`` means the edge ``i -> j``.
A posterior draw ``W_s`` contains the edge ``i -> j`` when ``|W_s[i, j]| > threshold``
(default 0.3). The true graph contains ``i -> j`` when ``W_true[i, j] != 0``; the truth is never
thresholded. Diagonal entries of weighted matrices are ignored everywhere (no self-loops).

All functions take and return NumPy arrays or Python floats; nothing here depends on JAX.
"""

from __future__ import annotations

import numbers
import warnings

import numpy as np
from scipy.optimize import linear_sum_assignment
from scipy.stats import rankdata

__all__ = [
    "shd",
    "expected_shd",
    "edge_probabilities",
    "order_probabilities",
    "edge_auroc",
    "edge_auprc",
    "target_auroc",
    "target_auprc",
    "regime_table",
    "mcc",
    "edge_rmse",
    "latent_signs",
    "structure_metrics",
]

DEFAULT_THRESHOLD = 0.3


# --------------------------------------------------------------------------------------------
# validation helpers
# --------------------------------------------------------------------------------------------


def _as_square(a, name: str) -> np.ndarray:
    """Return ``a`` as a finite float array of shape ``(d, d)``, else raise ValueError."""
    arr = np.asarray(a)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(
            f"{name} must be a square matrix of shape (d, d); got shape {arr.shape}."
        )
    return _finite_float(arr, name)


def _finite_float(arr: np.ndarray, name: str) -> np.ndarray:
    """``arr`` as float, else ValueError when it is not numeric or holds NaN/inf."""
    if not np.issubdtype(arr.dtype, np.number) and arr.dtype != np.bool_:
        raise ValueError(f"{name} must be numeric; got dtype {arr.dtype}.")
    arr = arr.astype(float)
    if not np.all(np.isfinite(arr)):
        raise ValueError(f"{name} contains NaN or infinite values; pass finite numbers only.")
    return arr


def _as_draws(a, name: str) -> np.ndarray:
    """Return ``a`` as a finite float array of shape ``(S, d, d)`` with ``S >= 1``."""
    arr = np.asarray(a)
    if arr.ndim != 3 or arr.shape[1] != arr.shape[2]:
        hint = " For a single matrix pass W[None]." if arr.ndim == 2 else ""
        raise ValueError(
            f"{name} must have shape (S, d, d) (posterior draws of the weighted adjacency); "
            f"got shape {arr.shape}.{hint}"
        )
    if arr.shape[0] == 0:
        raise ValueError(f"{name} holds no draws (S == 0); pass at least one draw.")
    return _finite_float(arr, name)


def _as_binary_adjacency(a, name: str) -> np.ndarray:
    """Return a 0/1 adjacency matrix ``(d, d)`` as bool, checking entries and diagonal."""
    arr = _as_square(a, name)
    if not np.all((arr == 0) | (arr == 1)):
        raise ValueError(
            f"{name} must be a 0/1 adjacency matrix; it has entries other than 0 and 1. "
            "For weighted matrices use (np.abs(W) > threshold) or expected_shd."
        )
    if np.any(np.diag(arr) != 0):
        raise ValueError(f"{name} has self-loops (non-zero diagonal); a DAG adjacency has none.")
    return arr.astype(bool)


def _check_threshold(threshold) -> float:
    if not isinstance(threshold, numbers.Real) or not np.isfinite(threshold) or threshold < 0:
        raise ValueError(f"threshold must be a finite number >= 0; got {threshold!r}.")
    return float(threshold)


def _check_reversal_cost(reversal_cost):
    if (
        isinstance(reversal_cost, bool)
        or not isinstance(reversal_cost, numbers.Real)
        or not np.isfinite(reversal_cost)
        or reversal_cost < 0
    ):
        raise ValueError(
            "reversal_cost must be a finite number >= 0 (1: a reversed edge counts once, "
            f"2: twice); got {reversal_cost!r}."
        )
    return reversal_cost


def _same_d(d_a: int, d_b: int, name_a: str, name_b: str) -> None:
    if d_a != d_b:
        raise ValueError(
            f"{name_a} and {name_b} must have the same number of nodes d; got {d_a} and {d_b}."
        )


def _off_diagonal(a: np.ndarray) -> np.ndarray:
    """Entries of ``a[..., d, d]`` off the diagonal, flattened over the last two axes."""
    d = a.shape[-1]
    mask = ~np.eye(d, dtype=bool)
    return a[..., mask]


# --------------------------------------------------------------------------------------------
# structural Hamming distance
# --------------------------------------------------------------------------------------------


def _shd_batch(pred: np.ndarray, true: np.ndarray, reversal_cost) -> np.ndarray:
    """SHD of each bool adjacency ``pred[s]`` (S, d, d) against bool ``true`` (d, d) -> (S,)."""
    iu, ju = np.triu_indices(true.shape[0], k=1)
    a, b = pred[:, iu, ju], pred[:, ju, iu]  # predicted i->j, j->i per unordered pair
    c, e = true[iu, ju], true[ju, iu]
    differ = (a != c) | (b != e)
    reversed_ = (a & ~b & ~c & e) | (~a & b & c & ~e)
    n_other = np.sum(differ & ~reversed_, axis=-1)
    n_rev = np.sum(reversed_, axis=-1)
    return n_other + reversal_cost * n_rev


def shd(pred, true, *, reversal_cost=1):
    """Structural Hamming distance between two directed graphs.

    Each unordered pair of nodes ``{i, j}`` (``i != j``) is in one of four states: no edge,
    ``i -> j``, ``j -> i``, or both directions. A pair whose state differs between ``pred`` and
    ``true`` costs 1, except a *reversal* (``i -> j`` in one graph, ``j -> i`` in the other),
    which costs ``reversal_cost``. The distance is the sum over pairs.

    With ``reversal_cost=1`` (the default) this is the standard SHD: missing edges + extra
    edges + reversed edges. With ``reversal_cost=2`` it equals the number of differing
    off-diagonal entries of the two matrices (what comparing adjacency matrices entrywise
    gives, as the reference code of the seed paper did) for every pair where neither graph has
    both directions; a pair with both directions in one graph and none in the other costs 1
    here but 2 entrywise.

    Parameters
    ----------
    pred : array_like, shape (d, d)
        Predicted 0/1 (or bool) adjacency matrix; ``pred[i, j] == 1`` means ``i -> j``.
    true : array_like, shape (d, d)
        True 0/1 (or bool) adjacency matrix.
    reversal_cost : int or float, default 1
        Cost of one reversed edge; must be >= 0.

    Returns
    -------
    int or float
        The distance; an ``int`` when ``reversal_cost`` is an integer.

    Raises
    ------
    ValueError
        If the matrices are not square, differ in size, hold values other than 0/1, or have a
        non-zero diagonal.

    Examples
    --------
    >>> chain = [[0, 1, 0], [0, 0, 1], [0, 0, 0]]        # 0 -> 1 -> 2
    >>> reverse = [[0, 0, 0], [1, 0, 0], [0, 1, 0]]      # 2 -> 1 -> 0
    >>> shd(reverse, chain), shd(reverse, chain, reversal_cost=2)
    (2, 4)
    """
    reversal_cost = _check_reversal_cost(reversal_cost)
    p = _as_binary_adjacency(pred, "pred")
    t = _as_binary_adjacency(true, "true")
    _same_d(p.shape[0], t.shape[0], "pred", "true")
    value = _shd_batch(p[None], t, reversal_cost)[0]
    if isinstance(reversal_cost, numbers.Integral):
        return int(value)
    return float(value)


def expected_shd(W_draws, W_true, *, threshold=DEFAULT_THRESHOLD, reversal_cost=1) -> float:
    """Posterior-expected structural Hamming distance (E-SHD).

    Each draw is turned into a graph by ``|W_draws[s, i, j]| > threshold`` (diagonal ignored);
    the true graph is ``W_true != 0`` (off the diagonal, never thresholded). Returns the mean of
    :func:`shd` over draws.

    Parameters
    ----------
    W_draws : array_like, shape (S, d, d)
        Posterior draws of the weighted adjacency matrix.
    W_true : array_like, shape (d, d)
        True weighted (or 0/1) adjacency matrix.
    threshold : float, default 0.3
        A draw has edge ``i -> j`` when ``|W_ij| > threshold``.
    reversal_cost : int or float, default 1
        Cost of one reversed edge (see :func:`shd`); 2 gives the "reversal counts twice" variant.

    Returns
    -------
    float
        Mean SHD over the ``S`` draws.
    """
    reversal_cost = _check_reversal_cost(reversal_cost)
    threshold = _check_threshold(threshold)
    draws = _as_draws(W_draws, "W_draws")
    truth = _as_square(W_true, "W_true")
    _same_d(draws.shape[1], truth.shape[0], "W_draws", "W_true")
    off = ~np.eye(truth.shape[0], dtype=bool)
    pred_adj = (np.abs(draws) > threshold) & off
    true_adj = (truth != 0) & off
    return float(np.mean(_shd_batch(pred_adj, true_adj, reversal_cost)))


# --------------------------------------------------------------------------------------------
# edge probabilities, AUROC, AUPRC
# --------------------------------------------------------------------------------------------


def edge_probabilities(W_draws, threshold=DEFAULT_THRESHOLD) -> np.ndarray:
    """Posterior edge probabilities ``P(|W_ij| > threshold)``.

    Parameters
    ----------
    W_draws : array_like, shape (S, d, d)
        Posterior draws of the weighted adjacency matrix.
    threshold : float, default 0.3
        Magnitude above which a weight counts as an edge.

    Returns
    -------
    numpy.ndarray, shape (d, d)
        Fraction of draws with ``|W_ij| > threshold``; the diagonal is 0.
    """
    threshold = _check_threshold(threshold)
    draws = _as_draws(W_draws, "W_draws")
    probs = np.mean(np.abs(draws) > threshold, axis=0)
    np.fill_diagonal(probs, 0.0)
    return probs


def order_probabilities(orders) -> np.ndarray:
    """Posterior probability that each node sits at each position of the topological order.

    Parameters
    ----------
    orders : array_like of int, shape (S, d)
        ``orders[s]`` lists the nodes of draw ``s`` in topological order (a permutation of
        ``0..d-1``), as in ``Posterior.orders``.

    Returns
    -------
    numpy.ndarray, shape (d, d)
        ``P[node, position]``: fraction of draws in which ``node`` is at ``position``. Rows and
        columns each sum to 1.
    """
    arr = np.asarray(orders)
    if arr.ndim != 2 or arr.shape[0] == 0:
        raise ValueError(
            f"orders must have shape (S, d) with S >= 1 (one permutation per draw); got {arr.shape}."
        )
    if not np.issubdtype(arr.dtype, np.integer):
        raise ValueError(f"orders must hold integer node indices; got dtype {arr.dtype}.")
    S, d = arr.shape
    if not np.all(np.sort(arr, axis=1) == np.arange(d)):
        raise ValueError("each row of orders must be a permutation of 0..d-1.")
    probs = np.zeros((d, d))
    positions = np.broadcast_to(np.arange(d), (S, d))
    np.add.at(probs, (arr, positions), 1.0)
    return probs / S


def _one_class(labels: np.ndarray, what: str, none: str, every: str) -> bool:
    """True (after a RuntimeWarning) when the bool ``labels`` are all equal: ranking is undefined."""
    n_pos = int(labels.sum())
    if 0 < n_pos < labels.size:
        return False
    warnings.warn(
        f"{none if n_pos == 0 else every}, so the {what} ranking metric is undefined; returning nan.",
        RuntimeWarning,
        stacklevel=4,
    )
    return True


def _scores_and_labels(probs, true_adj) -> tuple[np.ndarray, np.ndarray] | None:
    """Off-diagonal scores and 0/1 labels; None (after warning) if labels are all equal."""
    p = _as_square(probs, "probs")
    t = _as_square(true_adj, "true_adj")
    _same_d(p.shape[0], t.shape[0], "probs", "true_adj")
    scores = _off_diagonal(p)
    labels = _off_diagonal(t) != 0
    none, every = "the true graph has no edges", "the true graph has every possible edge"
    if _one_class(labels, "edge", none, every):
        return None
    return scores, labels


def _auroc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Mann–Whitney AUROC of ``scores`` for bool ``labels`` holding both classes (ties count 1/2)."""
    ranks = rankdata(scores)  # average ranks: ties count 1/2
    n_pos = int(labels.sum())
    n_neg = labels.size - n_pos
    u = ranks[labels].sum() - n_pos * (n_pos + 1) / 2.0
    return float(u / (n_pos * n_neg))


def _auprc(scores: np.ndarray, labels: np.ndarray) -> float:
    """Step-wise average precision of ``scores`` for bool ``labels`` (tied scores enter together)."""
    order = np.argsort(-scores, kind="mergesort")
    s, y = scores[order], labels[order]
    # last index of each block of tied scores
    block_end = np.r_[np.flatnonzero(np.diff(s) != 0), s.size - 1]
    tp = np.cumsum(y)[block_end]
    n_pred = block_end + 1
    precision = tp / n_pred
    recall = tp / y.sum()
    return float(np.sum(np.diff(np.r_[0.0, recall]) * precision))


def edge_auroc(probs, true_adj) -> float:
    """Area under the ROC curve of posterior edge probabilities against the true graph.

    Computed over the ``d (d - 1)`` off-diagonal entries as the Mann–Whitney statistic: the
    fraction of (true edge, non-edge) pairs in which the true edge has the higher score, with
    ties counted 1/2.

    Parameters
    ----------
    probs : array_like, shape (d, d)
        Edge scores, e.g. from :func:`edge_probabilities`.
    true_adj : array_like, shape (d, d)
        True adjacency; an entry is an edge when non-zero (weighted matrices are fine).

    Returns
    -------
    float
        AUROC in [0, 1]; ``nan`` (with a ``RuntimeWarning``) when the true graph has no edges
        or every possible edge.
    """
    out = _scores_and_labels(probs, true_adj)
    return float("nan") if out is None else _auroc(*out)


def edge_auprc(probs, true_adj) -> float:
    """Area under the precision–recall curve, as average precision.

    ``AP = sum_k (R_k - R_{k-1}) P_k`` over the distinct score thresholds in decreasing order,
    where ``P_k`` and ``R_k`` are precision and recall when predicting an edge for every score
    ``>= t_k`` (tied scores enter together) and ``R_0 = 0``. This is the step-wise definition of
    scikit-learn's ``average_precision_score`` (no interpolation). Over the off-diagonal entries.

    Parameters
    ----------
    probs : array_like, shape (d, d)
        Edge scores, e.g. from :func:`edge_probabilities`.
    true_adj : array_like, shape (d, d)
        True adjacency; an entry is an edge when non-zero.

    Returns
    -------
    float
        Average precision in [0, 1]; ``nan`` (with a ``RuntimeWarning``) when the true graph has
        no edges or every possible edge.
    """
    out = _scores_and_labels(probs, true_adj)
    return float("nan") if out is None else _auprc(*out)


# --------------------------------------------------------------------------------------------
# intervention targets
# --------------------------------------------------------------------------------------------


def regime_table(regime, rows) -> tuple[np.ndarray, np.ndarray]:
    """One row per regime from per-row data.

    Parameters
    ----------
    regime : array_like of int, shape (N,)
        Regime id of each row.
    rows : array_like, shape (N, ...)
        Per-row values that are equal within a regime (e.g. targets (N, d)); the first row of each
        regime is taken.

    Returns
    -------
    ids : numpy.ndarray of int, shape (R,)
        The distinct regime ids, sorted.
    table : numpy.ndarray, shape (R, ...)
        ``table[r]`` is the value of the rows of regime ``ids[r]``.
    """
    r = np.asarray(regime)
    a = np.asarray(rows)
    if r.ndim != 1 or not np.issubdtype(r.dtype, np.integer):
        raise ValueError(f"regime must be a 1-D integer array (N,); got {r.dtype} {r.shape}.")
    if a.ndim < 1 or a.shape[0] != r.size:
        raise ValueError(f"rows must have one entry per row of regime ({r.size}); got shape {a.shape}.")
    ids, first = np.unique(r, return_index=True)
    return ids, a[first]


def _target_scores_and_labels(probs, true) -> tuple[np.ndarray, np.ndarray] | None:
    """Flattened (R, d) scores and bool labels; None (after warning) if labels are all equal."""
    p, t = np.asarray(probs), np.asarray(true)
    if p.ndim != 2 or p.shape != t.shape:
        raise ValueError(
            f"probs and true must both have shape (R, d) (regimes x nodes); got {p.shape} and {t.shape}."
        )
    p, t = _finite_float(p, "probs"), _finite_float(t, "true")
    if not np.all((t == 0) | (t == 1)):
        raise ValueError("true must hold the true targets as 0/1 (1 = the regime intervenes on the node).")
    labels = t.ravel() == 1
    none, every = "no node is a true target", "every node is a true target in every regime"
    if _one_class(labels, "target", none, every):
        return None
    return p.ravel(), labels


def target_auroc(probs, true) -> float:
    """AUROC of posterior target probabilities against the true targets, over all (regime, node) entries.

    Parameters
    ----------
    probs : array_like, shape (R, d)
        ``probs[r, j]``: posterior probability that regime ``r`` intervenes on node ``j``.
    true : array_like, shape (R, d)
        True targets, 0/1 (e.g. from :func:`regime_table` of ``Dataset.true_targets``).

    Returns
    -------
    float
        As :func:`edge_auroc`: ties count 1/2; ``nan`` (with a ``RuntimeWarning``) when ``true`` is all
        0 or all 1.
    """
    out = _target_scores_and_labels(probs, true)
    return float("nan") if out is None else _auroc(*out)


def target_auprc(probs, true) -> float:
    """Average precision of posterior target probabilities against the true targets (see
    :func:`edge_auprc` for the definition and :func:`target_auroc` for the arguments); ``nan`` (with a
    ``RuntimeWarning``) when ``true`` is all 0 or all 1."""
    out = _target_scores_and_labels(probs, true)
    return float("nan") if out is None else _auprc(*out)


# --------------------------------------------------------------------------------------------
# latents and weights
# --------------------------------------------------------------------------------------------


def _correlation_matrix(z_pred: np.ndarray, z_true: np.ndarray) -> np.ndarray:
    """Pearson correlations ``C[k, j] = corr(z_pred[:, k], z_true[:, j])``, shape (d, d)."""

    def standardise(z, name):
        centred = z - z.mean(axis=0)
        sd = np.sqrt(np.mean(centred**2, axis=0))
        constant = np.flatnonzero(sd <= 1e-12 * (1.0 + np.abs(z).max(axis=0)))
        if constant.size:
            raise ValueError(
                f"{name} has constant column(s) {constant.tolist()}; correlation is undefined. "
                "Drop or perturb those latents."
            )
        return centred / sd

    zp = standardise(z_pred, "z_pred")
    zt = standardise(z_true, "z_true")
    return np.clip(zp.T @ zt / zp.shape[0], -1.0, 1.0)


def mcc(z_pred, z_true, *, return_matching=False):
    """Mean correlation coefficient between inferred and true latents.

    Latents are identified only up to permutation and scaling (including sign), so each true
    latent is matched to one inferred latent by the Hungarian algorithm maximising the total
    absolute Pearson correlation; the MCC is the mean absolute correlation over matched pairs.

    Parameters
    ----------
    z_pred : array_like, shape (N, d)
        Inferred latents (e.g. ``Posterior.latent_mean``).
    z_true : array_like, shape (N, d)
        True latents.
    return_matching : bool, default False
        Also return the matching.

    Returns
    -------
    float
        MCC in [0, 1].
    matching : numpy.ndarray of int, shape (d,)
        Only when ``return_matching``: ``matching[j]`` is the column of ``z_pred`` matched to
        true latent ``j``, so ``z_pred[:, matching]`` is aligned with ``z_true``.

    Raises
    ------
    ValueError
        On shape mismatch, fewer than 2 rows, non-finite values or a constant column.
    """
    zp = np.asarray(z_pred, dtype=float)
    zt = np.asarray(z_true, dtype=float)
    if zp.ndim != 2 or zt.ndim != 2:
        raise ValueError(
            f"z_pred and z_true must have shape (N, d); got {zp.shape} and {zt.shape}."
        )
    if zp.shape != zt.shape:
        raise ValueError(
            f"z_pred and z_true must have the same shape (N, d); got {zp.shape} and {zt.shape}."
        )
    if zp.shape[0] < 2 or zp.shape[1] < 1:
        raise ValueError(f"need at least 2 rows and 1 latent to correlate; got shape {zp.shape}.")
    if not (np.all(np.isfinite(zp)) and np.all(np.isfinite(zt))):
        raise ValueError("z_pred and z_true must be finite (no NaN or inf).")
    corr = np.abs(_correlation_matrix(zp, zt))
    rows, cols = linear_sum_assignment(-corr)
    value = float(corr[rows, cols].mean())
    if not return_matching:
        return value
    matching = np.empty(zt.shape[1], dtype=np.int64)
    matching[cols] = rows
    return value, matching


def latent_signs(z_pred, z_true) -> np.ndarray:
    """(d,) +1 or -1: the sign of ``corr(z_pred[:, j], z_true[:, j])``. Latents are identified by their
    index (the intervention targets name them); a latent that no varying known value anchors (knockouts,
    unknown values) has an arbitrary sign, which flips the signs of its edges."""
    zp, zt = np.asarray(z_pred, np.float64), np.asarray(z_true, np.float64)
    if zp.shape != zt.shape or zp.ndim != 2:
        raise ValueError(f"z_pred and z_true must both have shape (N, d); got {zp.shape} and {zt.shape}")
    cov = np.sum((zp - zp.mean(0)) * (zt - zt.mean(0)), axis=0)
    return np.where(cov < 0, -1.0, 1.0)


def edge_rmse(W_draws, W_true, signs=None) -> float:
    """Root posterior-expected mean squared error of the edge weights.

    ``sqrt( mean_s mean_{i != j} (W_draws[s, i, j] - W_true[i, j])^2 )`` over the ``d (d - 1)``
    off-diagonal entries (absent edges have weight 0 in both). ``signs`` (d,) of +-1
    (:func:`latent_signs`) first puts the draws in the truth's sign gauge:
    ``W[i, j] -> signs[i] * signs[j] * W[i, j]``.

    Parameters
    ----------
    W_draws : array_like, shape (S, d, d)
        Posterior draws of the weighted adjacency matrix.
    W_true : array_like, shape (d, d)
        True weighted adjacency matrix.

    Returns
    -------
    float
        The RMSE.
    """
    draws = _as_draws(W_draws, "W_draws")
    truth = _as_square(W_true, "W_true")
    _same_d(draws.shape[1], truth.shape[0], "W_draws", "W_true")
    if truth.shape[0] < 2:
        raise ValueError("edge_rmse needs d >= 2 nodes (there are no off-diagonal entries).")
    if signs is not None:
        signs = np.asarray(signs, np.float64)
        if signs.shape != (truth.shape[0],) or not np.isin(signs, (-1.0, 1.0)).all():
            raise ValueError(f"signs must be {truth.shape[0]} values of +1 or -1; got {signs!r}")
        draws = draws * signs[:, None] * signs[None, :]
    err = _off_diagonal(draws - truth)
    return float(np.sqrt(np.mean(err**2)))


def structure_metrics(
    W_draws, W_true, *, z_pred=None, z_true=None, threshold=DEFAULT_THRESHOLD
) -> dict[str, float]:
    """All structure metrics of a posterior at once.

    Parameters
    ----------
    W_draws : array_like, shape (S, d, d)
        Posterior draws of the weighted adjacency matrix.
    W_true : array_like, shape (d, d)
        True weighted adjacency matrix (edge where non-zero).
    z_pred, z_true : array_like, shape (N, d), optional
        Inferred and true latents; give both or neither.
    threshold : float, default 0.3
        Edge threshold on ``|W|`` for the draws.

    Returns
    -------
    dict of str to float
        ``e_shd`` (reversal counts once), ``e_shd_double`` (reversal counts twice), ``auroc``,
        ``auprc`` (from :func:`edge_probabilities`), ``edge_rmse`` (in the truth's sign gauge,
        :func:`latent_signs`, when latents are given), and ``mcc`` when latents are given. ``auroc`` / ``auprc`` are nan when the true graph is empty or complete.
    """
    if (z_pred is None) != (z_true is None):
        raise ValueError("pass both z_pred and z_true to compute mcc, or neither.")
    probs = edge_probabilities(W_draws, threshold)
    out = {
        "e_shd": expected_shd(W_draws, W_true, threshold=threshold, reversal_cost=1),
        "e_shd_double": expected_shd(W_draws, W_true, threshold=threshold, reversal_cost=2),
        "auroc": edge_auroc(probs, W_true),
        "auprc": edge_auprc(probs, W_true),
        "edge_rmse": edge_rmse(W_draws, W_true,
                               None if z_pred is None else latent_signs(z_pred, z_true)),
    }
    if z_pred is not None:
        out["mcc"] = mcc(z_pred, z_true)
    return out
