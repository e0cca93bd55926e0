"""Metrics of inferred intervention targets: per-regime truth, target AUROC and AUPRC."""

from __future__ import annotations


import numpy as np

from ._checks import _finite_float
from .graph import _auprc, _auroc, _one_class

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
