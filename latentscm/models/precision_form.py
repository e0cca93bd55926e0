"""The collapsed likelihood of single rows in precision form: no matrix inverse, one Cholesky per pattern.

For a row with target mask ``m`` (nodes with intervention noise), the exogenous vector ``u = z B`` with
``B = I - W diag(1 - m)`` (the targets' incoming edges cut; ``det B = 1`` for a DAG) is Gaussian with
independent entries: mean ``mu`` (the known values at targets, else 0) and variances ``Dv`` (``sigma_j^2``
off target, ``tau^2`` plus ``value_scale^2`` for an unknown value at a target). So ``z`` has precision
``Theta = B Dv^-1 B^T`` without any inverse, and with ``x = z A + b + s * noise`` integrating ``z`` out
gives, with ``K = Theta + A A^T / s^2`` and ``h_n = (x_n - b) A^T / s^2 + mu_n Dv^-1 B^T``::

    log p(x_n) = -1/2 [ D log(2 pi s^2) + sum_j log Dv_j + log det K
                        + |x_n - b|^2 / s^2 + mu_n Dv^-1 mu_n^T - h_n K^-1 h_n^T ]

Summed over a pattern's rows this needs only the projected moments ``A S A^T``, ``A sum (x - b)^T mu`` and
``sum mu^T mu`` (the same sufficient statistics as the factor form of
:func:`latentscm.models.collapsed.collapsed_log_likelihood`, which covers paired units: two rows sharing
their exogenous noise have a singular joint precision). Per pattern it costs a few ``d x d`` products, one
Cholesky factor and one triangular inverse; the gradient of ``log det K - tr(K^-1 H)`` is written by hand
(:func:`logdet_and_trace`) so that no triangular solve is differentiated. At d = 100 with 101 patterns
(the README's scaling problem) the likelihood with its gradient takes about a fifth of the factor form's
time (``benchmarks/results/scaling.md``).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from .scm import LOG_2PI


def projected_moments(stats, A, b):
    """Per pattern, the centred rows' ``A S A^T`` (R, kd, kd) with ``S = sum_n (X_n - b)^T (X_n - b)``
    (from the factor blocks of :class:`~latentscm.models.collapsed.SufficientStats`) and its trace before
    projection, ``tr S`` (R,)."""
    R, k, _ = stats.masks.shape
    D, kd = A.shape[-1], k * A.shape[0]
    n = stats.n
    Ab = jnp.tile(A @ b, k)
    M, B = stats.fx.shape[:2]
    Af = jnp.einsum("mbkD,dD->mbkd", stats.fx.reshape(M, B, k, D), A).reshape(M, B, kd)
    Q = jax.ops.segment_sum(jnp.einsum("mbp,mbq->mpq", Af, Af), stats.fg, num_segments=R)
    Ax = jnp.einsum("rkD,dD->rkd", stats.sx.reshape(R, k, D), A).reshape(R, kd)
    Qb = (Q - Ax[:, :, None] * Ab[None, None, :] - Ab[None, :, None] * Ax[:, None, :]
          + n[:, None, None] * Ab[None, :, None] * Ab[None, None, :])
    tr = stats.tr_sxx - 2 * stats.sx @ jnp.tile(b, k) + n * k * (b @ b)
    return Qb, tr


@jax.custom_vjp
def logdet_and_trace(K, H):
    """``(log det K, tr(K^-1 H))`` for symmetric positive definite ``K`` and symmetric ``H`` (..., d, d)."""
    return _logdet_and_trace(K, H)[0]


def _logdet_and_trace(K, H):
    L = jnp.linalg.cholesky(K)
    eye = jnp.broadcast_to(jnp.eye(K.shape[-1], dtype=K.dtype), K.shape)
    Li = jax.scipy.linalg.solve_triangular(L, eye, lower=True)
    Kinv = jnp.swapaxes(Li, -1, -2) @ Li
    logdet = 2 * jnp.sum(jnp.log(jnp.diagonal(L, axis1=-2, axis2=-1)), -1)
    # the barrier keeps XLA from fusing both products into the reduction (a slow fused dot on CPU)
    Kinv, H = jax.lax.optimization_barrier((Kinv, H))
    return (logdet, jnp.sum(Kinv * H, axis=(-2, -1))), (Kinv, H)


def _logdet_and_trace_bwd(res, g):
    Kinv, H = res
    g_logdet, g_trace = g[0][..., None, None], g[1][..., None, None]
    # d log det K = K^-T; d tr(K^-1 H) / dK = -(K^-1 H K^-1)^T, / dH = K^-T (Kinv is symmetric)
    dK = g_logdet * Kinv - g_trace * jnp.swapaxes(Kinv @ H @ Kinv, -1, -2)
    return dK, g_trace * Kinv


logdet_and_trace.defvjp(_logdet_and_trace, _logdet_and_trace_bwd)


@jax.custom_vjp
def dag_log_det(B):
    """``log |det B|`` (...,) of ``B = I - W diag(1 - m)`` for a DAG's ``W``: 0, with the gradient ``B^-T`` of
    the general function, so that derivatives in directions off the DAG (the order's straight-through
    gradient moves ``W`` off it) are those of the Gaussian density of ``z`` for any ``W``. The inverse is
    formed in the backward pass only."""
    # 0, computed from B: an output that does not depend on B would be unbatched under vmap, and its
    # cotangent (summed over the batch) would reach every batch member's backward pass
    return 0.0 * B[..., 0, 0]


def _dag_log_det_fwd(B):
    return dag_log_det(B), B


def _dag_log_det_bwd(B, g):
    return (g[..., None, None] * jnp.swapaxes(jnp.linalg.inv(B), -1, -2),)


dag_log_det.defvjp(_dag_log_det_fwd, _dag_log_det_bwd)


def _exogenous(W, sigma, masks, known, tau, value_scale):
    """For target masks ``masks`` and known-value masks ``known`` (..., d): the exogenous variances ``Dv``
    (..., d), ``B = I - W diag(1 - m)`` and ``B Dv^-1`` (..., d, d); z's precision is ``B Dv^-1 B^T``."""
    free = 1 - masks
    var = free * sigma**2 + masks * (tau**2 + value_scale**2 * (1 - known))
    B = jnp.eye(W.shape[-1], dtype=W.dtype) - W * free[..., None, :]
    return var, B, B / var[..., None, :]


def single_row_log_likelihood(stats, W, sigma, A, b, obs_scale, tau, value_scale=1.0):
    """Exact ``log p(x | targets, values, W, sigma, A, b, s)`` (scalar) for statistics of single rows
    (``stats.k == 1``; ``W`` a DAG): the density of :func:`~latentscm.models.collapsed.collapsed_log_likelihood` in
    precision form (module docstring)."""
    masks, known = stats.masks[:, 0], stats.known[:, 0]  # (R, d)
    D = A.shape[-1]
    s2, n = obs_scale**2, stats.n
    var, B, P = _exogenous(W, sigma, masks, known, tau, value_scale)  # (R, d), (R, d, d), (R, d, d)
    K = P @ jnp.swapaxes(B, -1, -2) + (A @ A.T)[None] / s2
    mk = masks * known  # nodes whose value is known: mu = v there, else 0
    svv = stats.svv * mk[:, :, None] * mk[:, None, :]  # sum mu^T mu
    Qb, trS = projected_moments(stats, A, b)
    # A sum (x - b)^T mu: (R, d latent rows of A, d value columns)
    Xv = (A @ stats.sxv - (A @ b)[None, :, None] * stats.sv[:, None, :]) * mk[:, None, :]
    cross = Xv @ jnp.swapaxes(P, -1, -2) / s2
    H = Qb / s2**2 + cross + jnp.swapaxes(cross, -1, -2) + P @ svv @ jnp.swapaxes(P, -1, -2)
    logdet, trace = logdet_and_trace(K, H)
    quad = trS / s2 + jnp.sum(jnp.diagonal(svv, axis1=-2, axis2=-1) / var, -1) - trace
    per_row = D * (LOG_2PI + jnp.log(s2)) + jnp.sum(jnp.log(var), -1) + logdet
    return jnp.sum(n * (dag_log_det(B) - 0.5 * per_row) - 0.5 * quad)


def _pattern_rows(masks, known, X, V, W, sigma, A, b, obs_scale, tau, value_scale):
    """What every single row of one pattern needs (module docstring): the exogenous variances ``var`` (d,), the
    Cholesky factor ``L`` of ``K``, the residuals ``e = X - b`` (n, D), the exogenous means ``mu`` (n, d) and
    ``h`` (n, d)."""
    s2 = obs_scale**2
    var, B, P = _exogenous(W, sigma, masks, known, tau, value_scale)
    L = jnp.linalg.cholesky(P @ B.T + A @ A.T / s2)
    e = X - b
    mu = V * (masks * known)
    return var, L, e, mu, e @ A.T / s2 + mu @ P.T


def pattern_row_log_likelihood(masks, known, X, V, W, sigma, A, b, obs_scale, tau, value_scale=1.0):
    """Per-row ``log p(x_n | ...)`` (n,) of single rows that share one pattern: target mask ``masks`` (d,)
    and known-value mask ``known`` (d,); X (n, D), V (n, d) (values, read where targeted and known).
    One ``d x d`` Cholesky factor per call, then ``O(D d + d^2)`` per row (no per-row ``d x d`` matrix),
    for held-out scoring; the density of :func:`single_row_log_likelihood` row by row."""
    D = A.shape[-1]
    s2 = obs_scale**2
    var, L, e, mu, h = _pattern_rows(masks, known, X, V, W, sigma, A, b, obs_scale, tau, value_scale)
    y = jax.scipy.linalg.solve_triangular(L, h.T, lower=True)  # (d, n): |y_n|^2 = h_n K^-1 h_n^T
    quad = jnp.sum(e**2, -1) / s2 + jnp.sum(mu**2 / var, -1) - jnp.sum(y**2, 0)
    logdet = jnp.sum(jnp.log(var)) + 2 * jnp.sum(jnp.log(jnp.diagonal(L)))
    return -0.5 * (D * (LOG_2PI + jnp.log(s2)) + logdet + quad)


def pattern_row_moments(masks, known, X, V, W, sigma, A, b, obs_scale, tau, value_scale=1.0):
    """First and second moments of each row's exact ``p(z_n | x_n, ...)`` for single rows that share one
    pattern (arguments as :func:`pattern_row_log_likelihood`): mean (n, d) and mean^2 + var (n, d).

    In precision form: the posterior precision is ``K`` of the module docstring and the mean ``h_n K^-1``, so one
    Cholesky factor and one triangular inverse per call, ``O(d^2)`` per row, where the factor form goes through two
    inverses (``(I - W)^-1`` and the Woodbury matrix); the d = 100 scaling problem's summaries took 24 s instead of 33."""
    _, L, _, _, h = _pattern_rows(masks, known, X, V, W, sigma, A, b, obs_scale, tau, value_scale)
    Li = jax.scipy.linalg.solve_triangular(L, jnp.eye(L.shape[-1], dtype=L.dtype), lower=True)
    mean = (h @ Li.T) @ Li  # h K^-1, K^-1 = Li^T Li
    return mean, mean**2 + jnp.sum(Li**2, 0)
