"""The latent factorisation of a unit pattern (k rows sharing their exogenous noise): ``Z = xi Gamma + V Gz``,
used by the factor form of the collapsed likelihood, the latent posterior and the target tables."""

from __future__ import annotations

import jax.numpy as jnp


def _block_rows(X):
    """(R, k, d, d) per-row blocks -> (R, k*d, k, d): row (i, a) touches only the latents of row i."""
    k = X.shape[1]
    out = jnp.einsum("ij,rjab->riajb", jnp.eye(k, dtype=X.dtype), X)
    return out.reshape(X.shape[0], k * X.shape[2], k, X.shape[3])


def unit_factors(W, sigma, tau, value_scale, masks, known):
    """Latent factorisation of a unit pattern: ``Z = xi Gamma + V Gz`` with ``xi ~ N(0, I)``.

    masks, known: (R, k, d). Returns Gamma (R, (k+1) d, k, d) (shared noise eps, then one
    intervention-noise block per row: tau, plus ``value_scale`` where the value is unknown; for k = 1
    the two blocks are added, (R, d, 1, d), as each node has one of them) and
    Gz (R, k d, k, d) mapping the known values V (k d) to the latent mean.
    """
    d = W.shape[-1]
    C = jnp.linalg.inv(jnp.eye(d) - W * (1 - masks)[..., None, :])  # (R, k, d, d): z_i = u_i C_i
    eps = jnp.swapaxes(sigma[:, None] * (1 - masks)[..., :, None] * C, 1, 2)  # (R, d, k, d)
    eta_scale = masks * jnp.sqrt(tau**2 + value_scale**2 * (1 - known))
    eta = _block_rows(eta_scale[..., None] * C)
    # single rows: node i has noise eps_i or eta_i, never both, so the two blocks share d rows (rank d)
    gamma = eps + eta if masks.shape[-2] == 1 else jnp.concatenate([eps, eta], axis=1)
    return gamma, _block_rows((masks * known)[..., None] * C)
