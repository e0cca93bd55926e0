"""Random DAGs, edge weights and noise scales for linear-Gaussian SCMs.

Convention: ``adjacency[i, j] == 1`` (``weights[i, j] != 0``) means an edge ``i -> j``.
"""

from __future__ import annotations

import math

import numpy as np

Seed = int | np.random.Generator

__all__ = ["random_dag", "random_weights", "random_noise_scales", "as_rng"]


def as_rng(seed: Seed) -> np.random.Generator:
    """Return a numpy Generator: ``seed`` itself if it is one, else ``default_rng(seed)``."""
    if isinstance(seed, np.random.Generator):
        return seed
    if isinstance(seed, (bool, np.bool_)) or not isinstance(seed, (int, np.integer)):
        raise TypeError(f"seed must be an int or a numpy.random.Generator, got {type(seed).__name__}")
    return np.random.default_rng(int(seed))


def random_dag(d: int, *, graph: str = "er", edges_per_node: float = 1.0, seed: Seed) -> np.ndarray:
    """Draw a random DAG whose topological order is a random permutation of the nodes.

    Parameters
    ----------
    d : int
        Number of nodes, ``d >= 1``.
    graph : {"er", "sf"}
        ``"er"``: Erdős–Rényi, each pair ``(order[a], order[b])``, ``a < b``, is an edge with probability
        ``min(1, 2 k / (d - 1))`` (``k d`` edges expected). ``"sf"``: scale-free, a Barabási–Albert graph
        with ``m = round(k)`` edges per new node, oriented along a random node order.
    edges_per_node : float
        ``k``, expected edges per node (``>= 0``).
    seed : int or numpy.random.Generator

    Returns
    -------
    adjacency : (d, d) int8 array
        0/1 adjacency, ``adjacency[i, j] == 1`` for an edge ``i -> j``.
    """
    if int(d) != d or d < 1:
        raise ValueError(f"d must be a positive integer, got {d!r}")
    if not edges_per_node >= 0:
        raise ValueError(f"edges_per_node must be >= 0, got {edges_per_node!r}")
    d, rng = int(d), as_rng(seed)
    order = rng.permutation(d)  # order[a] is the node at position a
    lower = np.zeros((d, d), dtype=bool)  # lower[a, b]: edge from position b to position a, b < a
    if graph == "er":
        if d > 1:
            p = min(1.0, 2.0 * edges_per_node / (d - 1))
            lower = np.tril(rng.random((d, d)) < p, k=-1)
    elif graph == "sf":
        m = min(int(round(edges_per_node)), d - 1)
        if m >= 1:
            import networkx as nx  # here: its import is a fifth of a second that other graphs do not need

            ug = nx.barabasi_albert_graph(d, m, seed=int(rng.integers(2**31)))
            for u, v in ug.edges():
                lower[max(u, v), min(u, v)] = True
    else:
        raise ValueError(f"graph must be 'er' or 'sf', got {graph!r}")
    adjacency = np.zeros((d, d), dtype=np.int8)
    # position b -> position a becomes node order[b] -> node order[a]
    adjacency[np.ix_(order, order)] = lower.T
    return adjacency


def random_weights(
    adjacency: np.ndarray, *, weight_range: tuple[float, float] = (0.5, 2.0), seed: Seed
) -> np.ndarray:
    """Draw edge weights ``±U(lo, hi)`` with a random sign on the edges of ``adjacency``.

    Parameters
    ----------
    adjacency : (d, d) array
        Nonzero entries mark edges.
    weight_range : (lo, hi)
        Range of the absolute weights, ``0 <= lo <= hi``.
    seed : int or numpy.random.Generator

    Returns
    -------
    weights : (d, d) float64 array, zero off the edges.
    """
    lo, hi = weight_range
    if not 0 <= lo <= hi:
        raise ValueError(f"weight_range must satisfy 0 <= lo <= hi, got {weight_range!r}")
    mask = np.asarray(adjacency) != 0
    rng = as_rng(seed)
    magnitude = rng.uniform(lo, hi, size=mask.shape)
    sign = rng.choice([-1.0, 1.0], size=mask.shape)
    return np.where(mask, sign * magnitude, 0.0)


def random_noise_scales(
    d: int, *, log_range: tuple[float, float] = (0.0, math.log(2.0)), seed: Seed
) -> np.ndarray:
    """Draw noise standard deviations ``exp(U(log_lo, log_hi))``.

    Returns
    -------
    noise_scales : (d,) float64 array
    """
    lo, hi = log_range
    if not lo <= hi:
        raise ValueError(f"log_range must satisfy lo <= hi, got {log_range!r}")
    return np.exp(as_rng(seed).uniform(lo, hi, size=int(d)))
