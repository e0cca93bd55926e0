"""Input checks shared by the metrics (NumPy only)."""

from __future__ import annotations

import numbers

import numpy as np

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
