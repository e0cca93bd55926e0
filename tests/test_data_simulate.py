import math

import numpy as np
import pytest

from latentscm.data import SimulationConfig, simulate

SMALL = dict(d=4, D=12, n_regimes=6, rows_per_regime=10, n_pairs=60, n_rows=140, n_test_regimes=3)


def test_defaults_are_the_papers():
    c = SimulationConfig()
    assert (c.d, c.D, c.graph, c.edges_per_node, c.weight_range) == (5, 100, "er", 1.0, (0.5, 2.0))
    assert c.noise_log_range == (0.0, math.log(2)) and (c.n_pairs, c.n_regimes, c.rows_per_regime) == (2000, 20, 100)
    assert (c.values, c.value_scale, c.tau, c.obs_noise, c.projection) == ("gaussian", 2.0, 0.1, 0.1, "linear")


def test_paired_design_shares_exogenous_noise():
    train, test = simulate(SimulationConfig(**SMALL), 0)
    n, w, z = 60, train.weights, train.z
    assert train.N == 2 * n and np.all(train.targets[:n] == 0) and np.all(train.regime[:n] == 0)
    np.testing.assert_array_equal(train.pair, np.tile(np.arange(n), 2))
    assert np.all(train.targets[n:].sum(1) >= 1) and np.all(train.targets[n:].sum(1) <= 3)
    assert train.targets[n:].any(0).all()  # every node intervened somewhere
    eps = z - z @ w  # exogenous noise, valid on non-intervened nodes
    free = train.targets[n:] == 0
    np.testing.assert_allclose(eps[n:][free], eps[:n][free], atol=1e-9)
    # fresh observation noise per row: residuals of the twins differ
    resid = train.x - train.z @ train.projection
    assert not np.allclose(resid[:n], resid[n:])
    assert test.N == 30 and test.pair is None and test.meta["split"] == "test"
    assert train.meta["config"]["d"] == 4 and train.meta["seed"] == 0


def test_iid_design_single_targets():
    cfg = SimulationConfig(**SMALL, design="iid", targets="single", values="uniform")
    train, test = simulate(cfg, 1)
    assert train.N == 140 and train.pair is None and sorted(np.unique(train.regime)) == list(range(7))
    assert np.all(train.targets[train.regime == 0] == 0)
    assert set(train.targets.sum(1)) == {0, 1} and train.targets.any(0).all()
    assert np.all(np.abs(train.values) <= 2.0)
    assert set(test.targets.sum(1)) == {1}


@pytest.mark.parametrize("projection", ["mlp", "so"])
def test_projections(projection):
    cfg = SimulationConfig(**(SMALL | {"D": 4}), projection=projection, obs_noise=0.0)
    train, _ = simulate(cfg, 2)
    assert train.x.shape == (120, 4) and np.isfinite(train.x).all()
    if projection == "so":
        r = train.projection
        np.testing.assert_allclose(r @ r.T, np.eye(4), atol=1e-10)
        assert np.linalg.det(r) == pytest.approx(1.0) and np.abs(r - np.eye(4)).max() < 0.5
        np.testing.assert_allclose(train.x, train.z @ r, atol=1e-4)
    else:
        assert train.projection is None and 0.3 < train.x.std() < 100


def test_test_masks_are_new_and_seed_reproducible():
    train, test = simulate(SimulationConfig(**SMALL), 3)
    seen = {tuple(m) for m in train.targets}
    assert all(tuple(m) not in seen for m in test.targets)
    again, _ = simulate(SimulationConfig(**SMALL), 3)
    np.testing.assert_array_equal(train.x, again.x)


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(n_pairs=100), "n_pairs == n_regimes"),
        (dict(design="x"), "design must be 'paired' or 'iid'"),
        (dict(projection="so"), "D == d"),
        (dict(targets="single", n_regimes=3, n_pairs=30), "n_regimes >= 4"),
        (dict(d=1), "d must be an integer >= 2"),
        (dict(weight_range=(2.0, 1.0)), "weight_range"),
        (dict(tau=-1.0), "tau must be a finite number >= 0"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        SimulationConfig(**(SMALL | kwargs))
