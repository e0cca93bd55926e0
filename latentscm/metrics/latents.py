"""Metrics of the latents and weights: MCC (with the matching), latent signs, edge RMSE in the latents' gauge."""

from __future__ import annotations


import numpy as np

from ._checks import _as_draws, _as_square, _off_diagonal, _same_d

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
    from scipy.optimize import linear_sum_assignment  # here: scipy.optimize's import costs a fifth of a second

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
