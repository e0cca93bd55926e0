"""Multi-device: the collapsed likelihood and fit split over forced CPU devices equal one device.

JAX fixes its device count when it starts, so the checks run in a subprocess started with
``XLA_FLAGS=--xla_force_host_platform_device_count=4``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

from latentscm.inference.collapsed import CollapsedConfig
from latentscm.inference.sharding import pad_leading, resolve_devices

CHILD = textwrap.dedent(r"""
    import json, sys
    import jax, jax.numpy as jnp, numpy as np
    from latentscm.data import SimulationConfig, simulate
    from latentscm.inference import fit
    from latentscm.inference.sharding import resolve_devices, shard_stats
    from latentscm.models.collapsed import collapsed_log_likelihood, make_units, unit_stats

    out = {"n_devices": len(jax.devices())}
    if "--mcmc" in sys.argv:
        train, _ = simulate(SimulationConfig(d=3, D=6, n_pairs=80, n_regimes=4, rows_per_regime=20), seed=2)
        cfg = {"num_warmup": 15, "num_samples": 10, "num_chains": 4, "max_tree_depth": 4}
        runs = {m: fit(train, "mcmc", config={**cfg, "chain_method": m}, seed=0, progress=False)
                for m in ("vectorized", "parallel")}
        v, p = runs["vectorized"], runs["parallel"]
        out["W_diff"] = float(np.abs(v.W - p.W).max())
        out["W_scale"] = float(np.abs(v.W).max())
        out["orders_equal"] = bool((v.orders == p.orders).all())
        print(json.dumps(out)); sys.exit(0)
    train, _ = simulate(SimulationConfig(d=3, D=8, n_pairs=120, n_regimes=4, rows_per_regime=30), seed=1)
    rng = np.random.default_rng(0)
    with jax.enable_x64(True):
        stats = jax.tree.map(jnp.asarray, unit_stats(make_units(train.x, train.targets, train.values)[0]))
        sharded = shard_stats(stats, resolve_devices(4))
        out["fx_devices"] = len(sharded.fx.sharding.device_set)
        out["fx_rows"] = [int(stats.fx.shape[0]), int(sharded.fx.shape[0])]
        W = jnp.asarray(np.triu(rng.normal(size=(3, 3)), 1))
        args = (W, jnp.asarray([1.0, 0.7, 1.3]), jnp.asarray(rng.normal(size=(3, 8))),
                jnp.asarray(rng.normal(size=8)), 0.2, 0.1, 2.0)
        ll = jax.jit(collapsed_log_likelihood)
        grad = jax.jit(jax.grad(collapsed_log_likelihood, argnums=3))
        out["ll"] = [float(ll(stats, *args)), float(ll(sharded, *args))]
        g1, g4 = np.asarray(grad(stats, *args)), np.asarray(grad(sharded, *args))
        out["grad_rel"] = float(np.abs(g1 - g4).max() / np.abs(g1).max())
    if "--fit" not in sys.argv:
        print(json.dumps(out)); sys.exit(0)
    cfg = {"steps": 40, "chunk": 20, "num_draws": 16, "num_restarts": 1, "num_particles": 2}
    p1 = fit(train, "collapsed", config=cfg, seed=0, progress=False)
    p4 = fit(train, "collapsed", config={**cfg, "devices": "all"}, seed=0, progress=False)
    out["elbo_rel"] = float(np.abs(p1.elbo - p4.elbo).max() / np.abs(p1.elbo).max())
    out["W_diff"] = float(np.abs(p1.W - p4.W).max())
    out["orders_equal"] = bool((p1.orders == p4.orders).all())
    out["latent_diff"] = float(np.abs(p1.latent_mean - p4.latent_mean).max())
    out["latent_scale"] = float(np.abs(p1.latent_mean).max())
    print(json.dumps(out))
""")


def _run_forced(*args):
    env = {**os.environ, "XLA_FLAGS": "--xla_force_host_platform_device_count=4", "JAX_PLATFORMS": "cpu"}
    proc = subprocess.run([sys.executable, "-c", CHILD, *args], env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="module")
def forced():
    """Likelihood and gradient on 4 forced CPU devices (a few seconds)."""
    return _run_forced()


@pytest.fixture(scope="module")
def forced_mcmc():
    """mcmc with chain_method 'vectorized' and 'parallel' (4 chains on 4 devices)."""
    return _run_forced("--mcmc")


@pytest.fixture(scope="module")
def forced_fit():
    """Two short fits, one device and 4 devices (several minutes on a loaded 2-core machine)."""
    return _run_forced("--fit")


def test_forced_devices_split_the_factor_rows(forced):
    assert forced["n_devices"] == 4
    assert forced["fx_devices"] == 4
    rows, padded = forced["fx_rows"]
    assert padded % 4 == 0 and rows <= padded < rows + 4


def test_sharded_likelihood_equals_one_device(forced):
    one, four = forced["ll"]
    assert abs(one - four) <= 1e-10 * abs(one)
    assert forced["grad_rel"] < 1e-10


@pytest.mark.slow
def test_sharded_fit_equals_one_device(forced_fit):
    f = forced_fit
    assert f["n_devices"] == 4
    assert f["elbo_rel"] < 1e-8
    assert f["orders_equal"]
    assert f["W_diff"] < 1e-6
    assert f["latent_diff"] < 1e-6 * max(1.0, f["latent_scale"])


@pytest.mark.slow
def test_parallel_chains_equal_vectorized(forced_mcmc):
    f = forced_mcmc
    assert f["n_devices"] == 4
    assert f["orders_equal"]
    assert f["W_diff"] <= 1e-6 * max(1.0, f["W_scale"])


def test_parallel_chain_method_is_accepted():
    from latentscm.inference.mcmc import MCMCConfig

    MCMCConfig(chain_method="parallel")  # accepted: no error
    with pytest.raises(ValueError, match="'parallel'"):
        MCMCConfig(chain_method="pmap")


def test_devices_setting_is_validated():
    for bad in (0, -1, "some", 1.5, True):
        with pytest.raises(ValueError, match="devices must be an integer >= 1 or 'all'"):
            CollapsedConfig(devices=bad)
    assert CollapsedConfig(devices="all").devices == "all"


def test_asking_for_more_devices_than_jax_sees_names_the_flag():
    with pytest.raises(ValueError, match="xla_force_host_platform_device_count"):
        resolve_devices(10_000)


def test_padding_adds_zero_rows_to_a_multiple():
    import numpy as np

    out = pad_leading({"a": np.ones((5, 2)), "b": np.arange(5)}, 4)
    assert out["a"].shape == (8, 2) and np.all(out["a"][5:] == 0) and np.all(out["b"][5:] == 0)
