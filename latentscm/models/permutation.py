"""Distributions over node orders (permutation matrices).

Convention: a permutation matrix ``P`` has ``P[p, i] = 1`` when node ``i`` sits at position ``p`` of
the topological order; ``order = argmax(P, axis=1)`` lists the nodes from first to last.

The guide's order distribution is the Gumbel-matching distribution used by BCD Nets and BIOLS:
a hard sample is the maximum-weight assignment (Hungarian algorithm) of ``logits + Gumbel``;
gradients pass straight through the Gumbel-Sinkhorn relaxation of the same perturbed logits; its
log-mass is approximated by the Gibbs form ``<logits, P> - log perm(exp(logits))`` with the
permanent replaced by its Bethe approximation.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpyro.distributions as dist
from jax.scipy.special import logsumexp
from numpyro.distributions import constraints


def sinkhorn(log_alpha, n_iters=20):
    """Sinkhorn normalisation to a doubly stochastic matrix: ``n_iters`` rounds of row, then column
    normalisation of ``exp(log_alpha)``.

    log_alpha: (..., d, d) -> (..., d, d) probabilities (rows and columns sum to one); ``n_iters >= 1``. The
    first round runs in the log domain (any range of log-weights); after it every row and column holds an entry
    of at least ``1 / d^2``, so the others run in the linear domain (:func:`_normalise`): the same function and
    gradient, without an exp or log per entry and round.
    """
    la = log_alpha - logsumexp(log_alpha, axis=-1, keepdims=True)
    return _normalise(jnp.exp(la - logsumexp(la, axis=-2, keepdims=True)), n_iters - 1)


def _normalise(m, n_iters):
    """``n_iters`` Sinkhorn rounds (rows, then columns to sum one) of a nonnegative (..., d, d) matrix in the
    linear domain: divisions only, no exp or log. Every row and column must hold a non-negligible entry."""

    def body(m, _):
        m = m / jnp.sum(m, axis=-1, keepdims=True)
        return m / jnp.sum(m, axis=-2, keepdims=True), None

    return jax.lax.scan(body, m, None, length=n_iters)[0]


def _assignment(scores):
    """The maximum-weight assignment of a (d, d) matrix: ``cols`` (d,) with row ``p`` assigned column
    ``cols[p]``. Shortest augmenting paths with dual potentials (Jonker and Volgenant; Crouse 2016, the
    algorithm of scipy's ``linear_sum_assignment``): rows join one at a time, each by a Dijkstra search over
    the reduced costs ``-scores[i, j] - u[i] - v[j]`` for the nearest free column, then the path's
    assignments flip. O(d^3) in ``lax`` loops, compiled into the program (no host callback)."""
    d = scores.shape[-1]
    cost = -scores
    inf = jnp.array(jnp.inf, cost.dtype)
    idx = jnp.arange(d)

    def add_row(cur, carry):
        u, v, col4row, row4col = carry

        def search(c):  # one Dijkstra step from row i: relax its columns, settle the nearest unsettled one
            i, min_val, _, shortest, path, rows_seen, cols_done = c
            rows_seen = rows_seen | (idx == i)
            reduced = min_val + cost[i] - u[i] - v
            better = ~cols_done & (reduced < shortest)
            path = jnp.where(better, i, path)
            shortest = jnp.where(better, reduced, shortest)
            key = jnp.where(cols_done, inf, shortest)
            j = jnp.argmin(key)
            free = row4col[j] < 0
            return (jnp.where(free, i, row4col[j]), key[j], jnp.where(free, j, -1), shortest, path, rows_seen,
                    cols_done | (idx == j))

        start = (cur, jnp.zeros((), cost.dtype), jnp.array(-1), jnp.full(d, inf), jnp.full(d, -1),
                 jnp.zeros(d, bool), jnp.zeros(d, bool))
        _, min_val, sink, shortest, path, rows_seen, cols_done = jax.lax.while_loop(lambda c: c[2] < 0, search, start)
        u = u + jnp.where(idx == cur, min_val, jnp.where(rows_seen, min_val - shortest[col4row], 0.0))
        v = v - jnp.where(cols_done, min_val - shortest, 0.0)

        def augment(c):  # back along the path from the free column found to the new row
            j, col4row, row4col, _ = c
            i = path[j]
            return col4row[i], jnp.where(idx == i, j, col4row), jnp.where(idx == j, i, row4col), i == cur

        _, col4row, row4col, _ = jax.lax.while_loop(lambda c: ~c[3], augment, (sink, col4row, row4col, False))
        return u, v, col4row, row4col

    start = (jnp.zeros(d, cost.dtype), jnp.zeros(d, cost.dtype), jnp.full(d, -1), jnp.full(d, -1))
    return jax.lax.fori_loop(0, d, add_row, start)[2]


def hungarian(scores):
    """Maximum-weight assignment as a permutation matrix, (..., d, d) -> (..., d, d); no gradient.

    Computed inside the compiled program (:func:`_assignment`). It replaced a ``jax.pure_callback`` to
    scipy's ``linear_sum_assignment``, whose host round trip was a fifth of the default fit's SVI step
    (``benchmarks/results/step-overhead.md``); the assignment is the same up to ties of equal weight.
    """
    scores = jax.lax.stop_gradient(scores)
    d = scores.shape[-1]
    cols = jax.vmap(_assignment)(scores.reshape((-1, d, d)))
    return jax.nn.one_hot(cols, d, dtype=scores.dtype).reshape(scores.shape)


def log_bethe_permanent(log_m, n_iters=30, tol=1e-6):
    """Bethe approximation of ``log perm(exp(log_m))`` for a (..., d, d) matrix of log-weights.

    Fixed point of the Bethe free energy (Vontobel 2013): ``gamma = Sinkhorn(M / (1 - gamma))``;
    then ``log perm_B = sum gamma log M - gamma log gamma + (1 - gamma) log(1 - gamma)``.
    It is a lower bound: ``perm / sqrt(2)^d <= perm_B <= perm`` (Gurvits).
    The fixed point is iterated (the gradient does not flow through it) for at most ``n_iters`` rounds of 10
    Sinkhorn iterations, stopping once no entry moves by more than ``tol`` (peaked weights converge in a few
    rounds, flat ones early in a fit take all 30). The rounds run in the linear domain (:func:`_normalise`:
    divisions only) on ``M`` scaled per row, in the input's precision: the values of log-domain rounds, which
    spent an exp and a log per entry and iteration (``benchmarks/results/step-overhead.md``).
    """
    eps = 1e-12
    fixed = jax.lax.stop_gradient(log_m)  # gamma is a stationary point: the envelope theorem gives the gradient
    # M scaled per row (Sinkhorn's rounds begin with the rows, so its iterates do not change): every row holds a 1;
    # no entry below the smallest normal number, so that no column is all zeros even past exp's range
    m = jnp.maximum(jnp.exp(fixed - jnp.max(fixed, axis=-1, keepdims=True)), jnp.finfo(fixed.dtype).tiny)

    def body(carry):
        i, gamma, _ = carry
        new = _normalise(m / (1.0 - jnp.clip(gamma, 0.0, 1.0 - 1e-6)), n_iters=10)
        return i + 1, new, jnp.max(jnp.abs(new - gamma))

    start = (0, sinkhorn(fixed, n_iters=10), jnp.array(jnp.inf, log_m.dtype))
    _, gamma, _ = jax.lax.while_loop(lambda c: (c[0] < n_iters) & (c[2] > tol), body, start)
    g = jnp.clip(gamma, eps, 1.0 - 1e-6)
    return jnp.sum(gamma * log_m - g * jnp.log(g) + (1.0 - g) * jnp.log1p(-g), axis=(-2, -1))


def order_from_matrix(P):
    """(..., d, d) permutation matrices -> (..., d) node orders (first to last)."""
    return jnp.argmax(P, axis=-1)


def matrix_from_order(order):
    """(..., d) node orders -> (..., d, d) permutation matrices."""
    d = order.shape[-1]
    return jax.nn.one_hot(order, d)


class _PermutationMatrix(constraints.Constraint):
    event_dim = 2

    def __call__(self, x):
        binary = jnp.all((x == 0) | (x == 1), axis=(-2, -1))
        return binary & jnp.all(x.sum(-1) == 1, -1) & jnp.all(x.sum(-2) == 1, -1)

    def feasible_like(self, prototype):
        return jnp.broadcast_to(jnp.eye(prototype.shape[-1], dtype=prototype.dtype), prototype.shape)


permutation_matrix = _PermutationMatrix()


class UniformPermutation(dist.Distribution):
    """Uniform prior over the d! node orders, as permutation matrices (d, d)."""

    support = permutation_matrix

    def __init__(self, d, *, validate_args=None):
        self.d = int(d)
        super().__init__(batch_shape=(), event_shape=(self.d, self.d), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        keys = jax.random.split(key, math.prod(sample_shape) or 1)
        orders = jax.vmap(lambda k: jax.random.permutation(k, self.d))(keys)
        return matrix_from_order(orders).reshape(sample_shape + (self.d, self.d))

    def log_prob(self, value):
        return jnp.full(jnp.shape(value)[:-2], -math.lgamma(self.d + 1))


class GumbelSinkhornPermutation(dist.Distribution):
    """Gumbel-matching distribution over permutation matrices with a straight-through relaxation.

    logits: (..., d, d) with ``logits[p, i]`` favouring node ``i`` at position ``p``.
    ``rsample`` returns ``hard + soft - stop_gradient(soft)``: the Hungarian assignment of the
    Gumbel-perturbed logits in the forward pass, the gradient of the Gumbel-Sinkhorn matrix at
    ``temperature`` in the backward pass. ``log_prob`` is the Gibbs/Bethe approximation.
    """

    arg_constraints = {"logits": constraints.real}
    support = permutation_matrix
    has_rsample = True

    def __init__(self, logits, temperature=1.0, noise_scale=1.0, *, validate_args=None):
        self.logits = logits
        self.temperature = temperature
        self.noise_scale = noise_scale
        d = jnp.shape(logits)[-1]
        super().__init__(jnp.shape(logits)[:-2], (d, d), validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape + self.event_shape
        perturbed = self.logits + self.noise_scale * jax.random.gumbel(key, shape)
        soft = sinkhorn(perturbed / self.temperature)
        hard = hungarian(perturbed)
        return hard + soft - jax.lax.stop_gradient(soft)

    def sample(self, key, sample_shape=()):
        # NumPyro's sample sites call ``sample``: it must stay reparameterised (differentiable).
        return self.rsample(key, sample_shape)

    def log_prob(self, value):
        return jnp.sum(self.logits * value, axis=(-2, -1)) - log_bethe_permanent(self.logits)
