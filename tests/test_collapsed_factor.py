"""The factor form of the collapsed model's second moments (rows, or QR when a regime has more rows than D)."""

import jax
import jax.numpy as jnp
import numpy as np
from scipy.stats import multivariate_normal

from latentscm.models.collapsed import collapsed_log_likelihood, sufficient_stats


def test_factor_rows_and_qr_give_the_exact_likelihood():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        d, D, tau = 2, 6, 0.1
        T = np.zeros((23, d), np.int8)
        T[20:, 1] = 1  # regime of 3 rows (kept as rows), observational regime of 20 rows (> D: QR factor)
        V = np.where(T > 0, rng.normal(size=T.shape), 0.0)
        x = rng.normal(size=(23, D)) * 2
        stats = sufficient_stats(x, T, V)
        # the factor reproduces sum_n x_n x_n^T of each regime (regime 0: observational rows 0..19)
        fx = np.asarray(stats.fx).reshape(len(stats.fg), -1, D)
        for r, rows in ((0, slice(0, 20)), (1, slice(20, 23))):
            got = sum(f.T @ f for f, g in zip(fx, np.asarray(stats.fg)) if g == r)
            np.testing.assert_allclose(got, x[rows].T @ x[rows], rtol=1e-10, atol=1e-10)
        assert sum(np.any(f != 0, axis=1).sum() for f in fx) <= D + 3  # at most min(n_r, D) rows per regime
        W = jnp.array([[0.0, 0.8], [0.0, 0.0]])
        sigma = jnp.array([0.7, 1.3])
        A, b, s = jnp.asarray(rng.normal(size=(d, D))), jnp.asarray(rng.normal(size=D)), 0.4
        total = collapsed_log_likelihood(jax.tree.map(jnp.asarray, stats), W, sigma, A, b, s, tau)
        ref = 0.0
        for n in range(len(x)):  # z ~ N(mu, C^T S C) in row form, x = z A + b + s eps
            m = T[n]
            C = np.linalg.inv(np.eye(d) - np.asarray(W) * (1 - m)[None, :])
            mu = (m * V[n]) @ C
            S = np.diag((1 - m) * np.asarray(sigma) ** 2 + m * tau**2)
            cov = C.T @ S @ C
            ref += multivariate_normal(mu @ A + b, A.T @ cov @ A + s**2 * np.eye(D)).logpdf(x[n])
        np.testing.assert_allclose(total, ref, rtol=1e-9)
