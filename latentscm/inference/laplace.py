"""Laplace approximations: damped Newton steps to a mode and the Gaussian there. One function, used by the ``mcmc``
kernel (its mass matrix and start, :mod:`.mcmc_kernel`) and by ``collapsed``'s order mixture (each candidate
order's importance-sampling proposal, :mod:`.order_mixture`)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

_STEP_LENGTHS = (1.0, 0.5, 0.25, 0.1, 0.01, 0.0)  # Newton line search: the best of these fractions


def laplace(potential, q, max_steps=10, tol=1e-4):
    """Damped Newton steps from the flat point ``q`` (n,) towards a mode of ``potential``, and the Gaussian
    there: returns the mode (n,), the eigenvectors V (n, n) and eigenvalues w (n,) of the Hessian with each
    eigenvalue replaced by ``max(|w|, 1e-12 max|w|)``, so ``V diag(1/w) V^T`` is a valid covariance.

    Each step goes along ``-V diag(1/w) V^T grad`` by the best of a few fractions (including 0, so the
    potential never rises); it stops when the Newton decrement (twice the predicted decrease) falls below
    ``tol``, when no fraction lowers the potential, or after ``max_steps``; the Hessian returned is that of
    the point the last (negligible) step started from. The Hessian is
    reverse-over-reverse (the collapsed density has custom VJPs), formed once per step."""
    grad = jax.grad(potential)
    hess = jax.jacrev(grad)
    lengths = jnp.asarray(_STEP_LENGTHS, q.dtype)
    n = q.shape[0]

    def step(carry):
        i, q, _, _, _ = carry
        H = hess(q)
        w, V = jnp.linalg.eigh(0.5 * (H + H.T))
        w = jnp.abs(w)
        w = jnp.maximum(w, 1e-12 * w.max())
        g = grad(q)
        direction = V @ ((V.T @ g) / w)
        cands = q[None] - lengths[:, None] * direction[None]
        U = jax.vmap(potential)(cands)
        best = jnp.argmin(jnp.where(jnp.isfinite(U), U, jnp.inf))
        decrement = jnp.where(best == len(_STEP_LENGTHS) - 1, 0.0, g @ direction)
        return i + 1, cands[best], decrement, V, w

    def more(carry):
        i, _, decrement, _, _ = carry
        return (i < max_steps) & (decrement > tol)

    init = (0, q, jnp.asarray(jnp.inf, q.dtype), jnp.eye(n, dtype=q.dtype), jnp.ones(n, q.dtype))
    _, q, _, V, w = jax.lax.while_loop(more, step, init)
    return q, V, w
