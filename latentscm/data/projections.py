"""Projections (decoders) from latents ``z`` (N, d) to observations (N, D)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.linalg import expm

from .dags import Seed, as_rng

__all__ = ["MLPProjection", "linear_projection", "mlp_projection", "so_projection", "project"]


def linear_projection(d: int, D: int, *, low: float = -5.0, high: float = 5.0, seed: Seed) -> np.ndarray:
    """Random linear decoder ``A`` with ``U(low, high)`` entries; ``x = z @ A``.

    Returns
    -------
    A : (d, D) float64 array
    """
    return as_rng(seed).uniform(low, high, size=(int(d), int(D)))


@dataclass(frozen=True, eq=False)
class MLPProjection:
    """Fixed random MLP ``z (N, d) -> x (N, D)`` with leaky-ReLU hidden layers.

    Attributes
    ----------
    weights : tuple of arrays, shapes (d, h), (h, h), (h, D)
    biases : tuple of arrays, shapes (h,), (h,), (D,)
    negative_slope : float
        Slope of the leaky ReLU for negative inputs.
    """

    weights: tuple[np.ndarray, ...]
    biases: tuple[np.ndarray, ...]
    negative_slope: float = 0.2

    def __call__(self, z: np.ndarray) -> np.ndarray:
        h = np.asarray(z, dtype=float)
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            h = h @ w + b
            if i < len(self.weights) - 1:
                h = np.where(h > 0, h, self.negative_slope * h)
        return h


def mlp_projection(d: int, D: int, *, hidden: int = 64, seed: Seed) -> MLPProjection:
    """Random 3-layer MLP ``d -> hidden -> hidden -> D``.

    He-style initialisation (std ``sqrt(2 / fan_in)``) keeps the output scale comparable to that of
    ``z``: outputs are O(1)-O(10) for SCM latents.
    """
    rng = as_rng(seed)
    sizes = [int(d), int(hidden), int(hidden), int(D)]
    weights = tuple(rng.normal(0.0, np.sqrt(2.0 / a), size=(a, b)) for a, b in zip(sizes[:-1], sizes[1:]))
    biases = tuple(rng.normal(0.0, 0.1, size=b) for b in sizes[1:])
    return MLPProjection(weights, biases)


def so_projection(d: int, *, scale: float = 0.1, seed: Seed) -> np.ndarray:
    """Near-identity rotation in SO(d): ``expm(S)`` for a skew-symmetric ``S`` with ``N(0, scale²)`` entries.

    Returns
    -------
    R : (d, d) float64 array, orthogonal with determinant +1.
    """
    a = as_rng(seed).normal(0.0, scale, size=(int(d), int(d)))
    return expm(a - a.T)


def project(z: np.ndarray, kind: str, params) -> np.ndarray:
    """Apply a projection: ``z @ params`` for ``"linear"`` / ``"so"``, ``params(z)`` for ``"mlp"``.

    Parameters
    ----------
    z : (N, d) array
    kind : {"linear", "mlp", "so"}
    params : (d, D) array or MLPProjection

    Returns
    -------
    x : (N, D) float64 array
    """
    if kind in ("linear", "so"):
        return np.asarray(z, dtype=float) @ np.asarray(params)
    if kind == "mlp":
        return params(z)
    raise ValueError(f"kind must be 'linear', 'mlp' or 'so', got {kind!r}")
