"""Vectorised sampling of latents from a linear-Gaussian SCM under hard interventions."""

from __future__ import annotations

import numpy as np
from scipy.linalg import solve_triangular

from .dags import Seed, as_rng
from .dataset import DataError, topological_order

__all__ = ["topological_order", "sample_latents"]


def sample_latents(
    rng: Seed,
    weights: np.ndarray,
    noise_scales: np.ndarray,
    targets: np.ndarray,
    values: np.ndarray,
    *,
    tau: float = 0.1,
    eps: np.ndarray | None = None,
) -> np.ndarray:
    """Sample latents of a linear-Gaussian SCM under per-row hard interventions.

    Row ``n`` with mask ``m`` solves ``z = z (W diag(1 - m)) + (1 - m) eps + m (v + eta)``, i.e.
    ``z_j = sum_i W[i, j] z_i + eps_j`` for non-intervened ``j`` and ``z_j = v_j + eta_j`` otherwise,
    ``eps_j ~ N(0, sigma_j^2)``, ``eta_j ~ N(0, tau^2)``. One unit-triangular solve (in the topological
    order) per distinct target mask; no loop over nodes.

    Parameters
    ----------
    rng : int or numpy.random.Generator
    weights : (d, d) array
        Weighted adjacency of a DAG, ``weights[i, j] != 0`` for an edge ``i -> j``.
    noise_scales : (d,) array
        ``sigma``, standard deviations of the exogenous noise.
    targets : (N, d) array of 0/1
        Intervention masks.
    values : (N, d) array
        Intervention values (ignored where ``targets == 0``).
    tau : float
        Standard deviation of the intervention noise ``eta`` (``tau = 0`` allowed).
    eps : (N, d) array, optional
        Exogenous noise to use instead of fresh ``sigma * N(0, 1)`` draws (already scaled by ``sigma``);
        pass the same ``eps`` to share it between the two halves of a pair.

    Returns
    -------
    z : (N, d) float64 array
    """
    rng = as_rng(rng)
    w = np.asarray(weights, dtype=float)
    d = w.shape[0]
    m = np.asarray(targets) != 0
    n = m.shape[0]
    if w.shape != (d, d) or m.shape != (n, d) or np.shape(values) != (n, d) or np.shape(noise_scales) != (d,):
        raise DataError(f"shape mismatch: weights {w.shape}, noise_scales {np.shape(noise_scales)}, targets "
                        f"{m.shape}, values {np.shape(values)}; expected (d, d), (d,), (N, d), (N, d)")
    if eps is None:
        eps = rng.normal(size=(n, d)) * np.asarray(noise_scales, dtype=float)
    elif np.shape(eps) != (n, d):
        raise DataError(f"eps must have shape (N, d) = {(n, d)}, got {np.shape(eps)}")
    eta = tau * rng.normal(size=(n, d))
    rhs = np.where(m, np.where(m, values, 0.0) + eta, eps)
    order = topological_order(w)
    eye = np.eye(d)
    z = np.empty((n, d))
    masks, inverse = np.unique(m, axis=0, return_inverse=True)
    for k, mask in enumerate(masks):
        rows = np.flatnonzero(inverse.ravel() == k)
        # in topological order W is strictly upper triangular; z_p U = r_p with U unit upper triangular
        u = eye - (w * (~mask)[None, :])[np.ix_(order, order)]
        zp = solve_triangular(u, rhs[np.ix_(rows, order)].T, trans="T", lower=False, unit_diagonal=True)
        z[np.ix_(rows, order)] = zp.T
    return z
