"""The interventional linear Gaussian SCM as a NumPyro distribution, and weight assembly.

Convention: ``W[i, j] != 0`` means an edge ``i -> j``. Row form: ``z`` is (N, d). For a row with
target mask ``m`` (1 = intervened) and values ``v``::

    z_j = sum_i W[i, j] z_i + eps_j,  eps_j ~ N(0, sigma_j^2)      (m_j = 0)
    z_j = v_j + eta_j,                eta_j ~ N(0, tau^2)          (m_j = 1)

so ``z = u (I - W diag(1 - m))^{-1}`` with ``u = (1 - m) eps + m (v + eta)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from jax.scipy.linalg import solve_triangular
from numpyro.distributions import constraints
from numpyro.distributions.util import promote_shapes

from .permutation import UniformPermutation

LOG_2PI = math.log(2.0 * math.pi)  # a Python float: exact in float64 code


def tril_size(d):
    """Number of free entries of a strictly lower-triangular (d, d) matrix."""
    return d * (d - 1) // 2


def tril_to_matrix(l_vec, d):
    """(..., d(d-1)/2) -> (..., d, d) strictly lower-triangular ``L`` (``L[b, a]``: position a -> b)."""
    rows, cols = jnp.tril_indices(d, k=-1)
    out = jnp.zeros(l_vec.shape[:-1] + (d, d), l_vec.dtype)
    return out.at[..., rows, cols].set(l_vec)


def sample_graph(d, edge_prior, noise_prior, order=None):
    """The SCM sites every model shares: ``edge_weight`` (free entries of ``L``), ``noise_scale``,
    ``P`` (uniform over orders, or a constant for a known ``order``) and deterministic ``W``.

    edge_prior, noise_prior: objects with ``sample(site, shape)`` (e.g. a PriorSpec's entries).
    Returns (W (d, d), sigma (d,), P (d, d)).
    """
    l_vec = edge_prior.sample("edge_weight", (tril_size(d),))
    sigma = noise_prior.sample("noise_scale", (d,))
    P = numpyro.sample("P", UniformPermutation(d)) if order is None else jnp.eye(d)[jnp.asarray(order)]
    W = numpyro.deterministic("W", weights_from_order(tril_to_matrix(l_vec, d), P))
    return W, sigma, P


def position_tril(matrix, order):
    """The free entries of ``L`` (d(d-1)/2,) that a node-space (d, d) ``matrix`` has in ``order``'s positions
    (numpy): ``L[b, a] = matrix[order[a], order[b]]`` for b > a; pairs the order does not allow are dropped.
    The inverse of :func:`weights_from_order` for weights the order allows."""
    order = np.asarray(order)
    rows, cols = np.tril_indices(len(order), -1)
    return np.asarray(matrix)[order[cols], order[rows]]


def weights_from_order(L, P):
    """Weighted adjacency ``W = P^T L^T P`` (..., d, d) from position-space ``L`` and permutation ``P``.

    ``L[b, a]`` (b > a) is the weight of the edge from the node at position ``a`` to the node at
    position ``b``; ``P[p, i] = 1`` places node ``i`` at position ``p``. Acyclic by construction.
    """
    return jnp.swapaxes(P, -1, -2) @ jnp.swapaxes(L, -1, -2) @ P


def _conditional_means(z, weights, targets, values):
    """Per-node conditional means (..., d): parents' contribution, or the value where intervened."""
    return jnp.where(targets > 0, values, z @ weights)


def _scales(noise_scales, targets, tau):
    return jnp.where(targets > 0, tau, noise_scales)


class InterventionalLinearGaussian(dist.Distribution):
    """Distribution of the latent vector ``z`` (event shape (d,)) of a linear Gaussian SCM under a
    hard intervention.

    weights: (d, d) weighted DAG adjacency (any node order); noise_scales: (d,);
    targets: (..., d) 0/1 mask; values: (..., d) intervention values (ignored where targets is 0);
    tau: intervention noise scale (>= 0; 0 makes intervened coordinates deterministic and
    ``log_prob`` undefined there). ``order`` (d,) optional topological order: sampling then uses a
    unit triangular solve; without it, a general solve.

    ``log_prob`` factorises over nodes (no inverse); ``rsample`` is one linear solve per row.
    """

    arg_constraints = {
        "weights": constraints.real,
        "noise_scales": constraints.positive,
        "values": constraints.real,
    }
    support = constraints.real_vector
    reparametrized_params = ["weights", "noise_scales", "values"]
    has_rsample = True

    def __init__(self, weights, noise_scales, targets, values, tau=0.1, order=None, *, validate_args=None):
        d = jnp.shape(weights)[-1]
        targets, values = promote_shapes(jnp.asarray(targets), jnp.asarray(values))
        batch_shape = jax.lax.broadcast_shapes(jnp.shape(targets)[:-1], jnp.shape(values)[:-1])
        self.weights, self.noise_scales = weights, noise_scales
        self.targets = jnp.broadcast_to(targets, batch_shape + (d,))
        self.values = jnp.broadcast_to(values, batch_shape + (d,))
        self.tau, self.order = tau, order
        super().__init__(batch_shape=batch_shape, event_shape=(d,), validate_args=validate_args)

    def rsample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape + self.event_shape
        k_eps, k_eta = jax.random.split(key)
        m = self.targets
        u = (1 - m) * self.noise_scales * jax.random.normal(k_eps, shape) + m * (
            self.values + self.tau * jax.random.normal(k_eta, shape)
        )
        return solve_scm(self.weights, m, u, self.order)

    def sample(self, key, sample_shape=()):
        # NumPyro's sample sites call ``sample``: it must stay reparameterised (differentiable).
        return self.rsample(key, sample_shape)

    def log_prob(self, value):
        mean = _conditional_means(value, self.weights, self.targets, self.values)
        scale = _scales(self.noise_scales, self.targets, self.tau)
        return jnp.sum(dist.Normal(mean, scale).log_prob(value), axis=-1)

    @property
    def mean(self):
        m = self.targets
        return solve_scm(self.weights, m, m * self.values, self.order)

    def covariance(self):
        """(..., d, d) covariance ``C^T S C`` with ``C = (I - W diag(1 - m))^{-1}``."""
        C = _propagator(self.weights, self.targets)
        S = _scales(self.noise_scales, self.targets, self.tau) ** 2
        return jnp.swapaxes(C, -1, -2) @ (S[..., :, None] * C)


def _propagator(weights, targets):
    """``C = (I - W diag(1 - m))^{-1}`` (..., d, d), so that ``z = u C``."""
    d = weights.shape[-1]
    B = weights * (1 - targets)[..., None, :]
    return jnp.linalg.inv(jnp.eye(d) - B)


def solve_scm(weights, targets, u, order=None):
    """Solve ``z = z W diag(1 - m) + u`` for ``z`` (..., d), vectorised over rows.

    With ``order`` (topological, first to last) the system is unit triangular in that order and is
    solved by one triangular solve; otherwise by a general solve.
    """
    d = weights.shape[-1]
    B = weights * (1 - targets)[..., None, :]
    Mt = jnp.swapaxes(jnp.eye(d) - B, -1, -2)  # z^T = Mt^{-1} u^T, Mt = (I - B)^T
    if order is None:
        batch = jnp.broadcast_shapes(Mt.shape[:-2], u.shape[:-1])
        return jnp.linalg.solve(jnp.broadcast_to(Mt, batch + (d, d)), u[..., None])[..., 0]
    inv = jnp.argsort(order)
    Mt_o = Mt[..., order, :][..., :, order]  # unit lower triangular in the topological order
    batch = jnp.broadcast_shapes(Mt_o.shape[:-2], u.shape[:-1])
    Mt_o = jnp.broadcast_to(Mt_o, batch + (d, d))
    u_o = jnp.broadcast_to(u[..., order], batch + (d,))
    z_o = solve_triangular(Mt_o, u_o[..., None], lower=True, unit_diagonal=True)[..., 0]
    return z_o[..., inv]
