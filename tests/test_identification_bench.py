"""The independent generator of benchmarks/identification.py (fast: numpy only, small data)."""

import sys
from pathlib import Path

import networkx as nx
import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

from independent_generator import generate, generate_arrays, main  # noqa: E402

from latentscm.data import Dataset  # noqa: E402

TAU = 0.1


@pytest.mark.parametrize("design", ["iid", "paired"])
@pytest.mark.parametrize("targets", ["multi", "single"])
def test_shapes_and_knockouts(design, targets):
    d, D, regimes, rows = 5, 12, 6, 20
    ds = generate(d, D, design, targets, "zero", regimes, rows, seed=3)
    n = (regimes + 1) * rows if design == "iid" else 2 * regimes * rows
    assert (ds.N, ds.d, ds.D) == (n, d, D)
    assert ds.z.shape == (n, d) and ds.weights.shape == (d, d) and ds.noise_scales.shape == (d,)
    assert set(np.unique(ds.regime)) == set(range(regimes + 1))
    assert ds.targets[ds.regime == 0].sum() == 0 and ds.targets.max(axis=0).min() == 1  # every node targeted
    if targets == "single":
        assert (ds.targets[ds.regime > 0].sum(axis=1) == 1).all()
    hit = ds.targets == 1
    assert np.all(np.abs(ds.z[hit]) < 5 * TAU)  # knockouts: z_j = 0 + N(0, tau^2)
    assert np.all(ds.values[hit] == 0) and ds.num_unknown_values == 0
    assert (ds.pair is not None) == (design == "paired")
    assert ds.meta["design"] == design and ds.meta["values"] == "zero"
    # weights: acyclic, in the generator's law
    assert nx.is_directed_acyclic_graph(nx.from_numpy_array((ds.weights != 0).astype(int), create_using=nx.DiGraph))
    w = np.abs(ds.weights[ds.weights != 0])
    assert np.all((w >= 0.4) & (w <= 1.5)) and np.all((ds.noise_scales >= 0.5) & (ds.noise_scales <= 1.5))


def test_hidden_values_are_nan_where_targeted():
    ds = generate(5, 10, "iid", "multi", "hidden", 6, 20, seed=1)
    hit = ds.targets == 1
    assert np.isnan(ds.values[hit]).all() and np.isfinite(ds.values[~hit]).all()
    assert ds.num_unknown_values == hit.sum()
    assert np.abs(ds.z[hit]).std() > 0.5  # the hidden values were drawn (2 N(0, 1)), not zero


def test_paired_twins_share_noise():
    arrays, _ = generate_arrays(5, 10, "paired", "multi", "gaussian", 8, 25, seed=2)
    W, T, z, pair = arrays["weights"], arrays["targets"], arrays["z"], arrays["pair"]
    n = len(z) // 2
    assert (pair[:n] == pair[n:]).all() and (pair[:n] == np.arange(n)).all()
    assert (T[:n] == 0).all()
    sources = np.flatnonzero((W != 0).sum(axis=0) == 0)
    checked = 0
    for j in sources:
        free = T[n:, j] == 0  # twins where the source j was not intervened on
        assert np.allclose(z[:n][free, j], z[n:][free, j])
        checked += free.sum()
        hit = ~free
        assert not np.allclose(z[:n][hit, j], z[n:][hit, j])
    assert checked > 0


def test_cli_file_loads(tmp_path, capsys):
    out = tmp_path / "f.npz"
    assert main(["--out", str(out), "--d", "4", "--D", "8", "--values", "zero", "--design", "paired",
                 "--n-regimes", "4", "--rows-per-regime", "10", "--seed", "0"]) == 0
    assert "N = 80" in capsys.readouterr().out
    ds = Dataset.load(out)
    with np.load(out) as f:
        assert {"x", "targets", "values", "regime", "pair", "z", "weights", "noise_scales", "meta"} <= set(f.files)
    assert ds.pair is not None and ds.N == 80 and ds.meta["generator"].endswith("independent_generator.py")


def test_iid_n_rows_and_seeds():
    a = generate(5, 10, "iid", "multi", "gaussian", 20, 100, seed=0, n_rows=4000)
    b = generate(5, 10, "iid", "multi", "gaussian", 20, 100, seed=0, n_rows=4000)
    c = generate(5, 10, "iid", "multi", "gaussian", 20, 100, seed=1, n_rows=4000)
    assert a.N == 4000 and np.array_equal(a.x, b.x) and not np.array_equal(a.x, c.x)
    with pytest.raises(ValueError):
        generate(5, 10, "iid", "single", "zero", 3, 10, seed=0)  # single-target needs n_regimes >= d
