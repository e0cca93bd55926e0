"""Evaluation metrics for posteriors over latent linear-Gaussian SCMs.

Modules: :mod:`.graph` (structure), :mod:`.targets` (inferred targets), :mod:`.latents` (MCC, signs, edge
RMSE); :func:`structure_metrics` combines them.

Convention (see ``docs/internal-contract.md``): ``W[i, j] != 0`` means the edge ``i -> j``.
A posterior draw ``W_s`` contains the edge ``i -> j`` when ``|W_s[i, j]| > threshold``
(default 0.3). The true graph contains ``i -> j`` when ``W_true[i, j] != 0``; the truth is never
thresholded. Diagonal entries of weighted matrices are ignored everywhere (no self-loops).

All functions take and return NumPy arrays or Python floats; nothing here depends on JAX.
"""

from __future__ import annotations

from ._checks import DEFAULT_THRESHOLD
from .graph import edge_auprc, edge_auroc, edge_probabilities, expected_shd, order_probabilities, shd
from .latents import edge_rmse, latent_signs, mcc
from .targets import regime_table, target_auprc, target_auroc

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
