"""The float32 form of the collapsed likelihood (centred statistics, squared-norm quadratic forms)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentscm.data import SimulationConfig, simulate
from latentscm.inference import fit
from latentscm.inference.collapsed import CollapsedConfig
from latentscm.inference.initialise import initialise
from latentscm.models.collapsed import (centered_log_likelihood, centered_stats, collapsed_log_likelihood, make_units,
                                        unit_stats)

NAMES = ("W", "sigma", "A", "b", "obs_scale")


def _loglik(fn, stats, p):
    return fn(stats, p["W"], p["sigma"], p["A"], p["b"], p["obs_scale"], 0.1, 2.0)


def _problem(d, n_regimes, rows, pairs=False, seed=0):
    """Data, a guide-like parameter point near the start (perturbed: gradients far from zero) and units."""
    cfg = SimulationConfig(d=d, D=40, n_pairs=n_regimes * rows, n_regimes=n_regimes, rows_per_regime=rows)
    data = simulate(cfg, seed)[0]
    rng = np.random.default_rng(seed)
    with jax.enable_x64(True):
        ini = initialise(data.x, data.targets, data.values)
    W = ini.W + 0.05 * rng.normal(size=ini.W.shape) * (ini.W != 0)
    p = {"W": W, "sigma": ini.sigma * 1.2, "A": ini.A + 0.01 * rng.normal(size=ini.A.shape), "b": ini.b,
         "obs_scale": np.asarray(ini.obs_scale)}
    return p, make_units(data.x, data.targets, data.values, data.pair if pairs else None)


@pytest.mark.parametrize("d, n_regimes, rows, pairs", [(5, 20, 100, False), (5, 10, 30, True), (20, 30, 30, False)])
def test_float32_matches_float64(d, n_regimes, rows, pairs):
    p, units = _problem(d, n_regimes, rows, pairs)
    ref, grads = 0.0, None
    with jax.enable_x64(True):
        p64 = {k: jnp.asarray(v, jnp.float64) for k, v in p.items()}
        old_f = jax.jit(jax.value_and_grad(lambda q, st: _loglik(collapsed_log_likelihood, st, q)))
        new_f = jax.jit(lambda q, st: _loglik(centered_log_likelihood, st, q))
        for u in units:
            old = jax.tree.map(jnp.asarray, unit_stats(u))
            new = jax.tree.map(jnp.asarray, centered_stats(u, np.float64))
            ll, g = old_f(p64, old)
            # the centred form is the same density (float64: to rounding)
            np.testing.assert_allclose(new_f(p64, new), ll, rtol=1e-9)
            ref += float(ll)
            grads = g if grads is None else jax.tree.map(jnp.add, grads, g)
    p32 = {k: jnp.asarray(v, jnp.float32) for k, v in p.items()}
    f = jax.jit(jax.value_and_grad(lambda q, st: _loglik(centered_log_likelihood, st, q)))
    ll32, g32 = 0.0, None
    for u in units:
        st = jax.tree.map(jnp.asarray, centered_stats(u, np.float32))
        assert st.fx.dtype == jnp.float32
        ll, g = f(p32, st)
        assert ll.dtype == jnp.float32
        ll32 += float(ll)
        g32 = g if g32 is None else jax.tree.map(jnp.add, g32, g)
    np.testing.assert_allclose(ll32, ref, rtol=1e-5)
    for k in NAMES:
        a, b = np.asarray(grads[k], np.float64), np.asarray(g32[k], np.float64)
        assert np.linalg.norm(b - a) <= 1e-2 * np.linalg.norm(a), k


def test_precision_setting():
    assert CollapsedConfig().precision == "float64"  # the documented default
    with pytest.raises(ValueError, match="precision"):
        CollapsedConfig(precision="float16")


@pytest.mark.slow
def test_float32_fit_runs_and_returns_float64_draws():
    data = simulate(SimulationConfig(d=3, D=12, n_pairs=200, n_regimes=4, rows_per_regime=50), 0)[0]
    post = fit(data, "collapsed", config={"steps": 20, "num_draws": 4, "precision": "float32", "chunk": 10},
               seed=0, progress=False)
    assert post.W.dtype == np.float64 and np.all(np.isfinite(post.W)) and np.all(np.isfinite(post.elbo))
    assert post.latent_mean.shape == data.targets.shape
