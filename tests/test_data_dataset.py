from pathlib import Path

import networkx as nx
import numpy as np
import pytest

from latentscm.data import DataError, Dataset, SimulationConfig, simulate

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def _arrays(n=6, d=3, big_d=4, seed=0):
    rng = np.random.default_rng(seed)
    targets = np.zeros((n, d), dtype=np.int8)
    targets[n // 2:, 0] = 1
    values = np.where(targets == 1, 1.5, 0.0)
    return rng.normal(size=(n, big_d)), targets, values


@pytest.fixture(scope="module")
def small():
    cfg = SimulationConfig(d=3, D=7, n_regimes=4, rows_per_regime=5, n_pairs=20, n_test_regimes=2)
    return simulate(cfg, 0)[0]


def test_from_arrays_defaults_and_dtypes():
    x, t, v = _arrays()
    ds = Dataset.from_arrays(x, t, v)
    assert (ds.N, ds.D, ds.d) == (6, 4, 3)
    assert ds.x.dtype == np.float32 and ds.targets.dtype == np.int8 and ds.values.dtype == np.float32
    assert ds.regime.tolist() == [0, 0, 0, 1, 1, 1] and not ds.has_truth
    obs = Dataset.from_arrays(x, np.zeros_like(t))  # values may be omitted when nothing is targeted
    assert np.all(obs.values == 0)


def test_values_nan_off_target_is_zeroed():
    x, t, v = _arrays()
    v = np.where(t == 1, v, np.nan)
    assert np.all(Dataset.from_arrays(x, t, v).values[t == 0] == 0)


def test_roundtrip(tmp_path, small):
    path = small.save(tmp_path / "d.npz")
    assert [p.name for p in tmp_path.iterdir()] == ["d.npz"]  # no temp file left behind
    back = Dataset.load(path)
    for k in ("x", "targets", "values", "regime", "pair", "z", "weights", "noise_scales", "projection"):
        np.testing.assert_array_equal(getattr(back, k), getattr(small, k))
    assert back.meta == small.meta and back.image_shape is None


def test_roundtrip_image_shape(tmp_path):
    x, t, v = _arrays(big_d=6)
    ds = Dataset.from_arrays(x, t, v, image_shape=(2, 3), meta={"a": 1})
    back = Dataset.load(ds.save(tmp_path / "img.npz"))
    assert back.image_shape == (2, 3) and back.meta == {"a": 1}


def test_true_graph_subset_dataframe(small):
    g = small.true_graph()
    assert isinstance(g, nx.DiGraph) and set(g.nodes) == set(range(3))
    for i, j, w in g.edges(data="weight"):
        assert w == small.weights[i, j]
    assert g.number_of_edges() == np.count_nonzero(small.weights)
    sub = small.subset(np.arange(5))
    assert sub.N == 5 and np.array_equal(sub.z, small.z[:5]) and sub.weights is small.weights
    df = small.to_dataframe()
    assert df.shape == (20 * 2, 7 + 3 + 3 + 3 + 2) and {"x_0", "z_2", "target_1", "value_0", "regime", "pair"} <= set(df)


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.update(x=np.where(np.arange(24).reshape(6, 4) % 7 == 5, np.nan, a["x"])), r"x has 3 non-finite.*row 1"),
        (lambda a: a.update(x=a["x"][:, 0]), "x must be 2-D"),
        (lambda a: a.update(x=a["x"][:0], targets=a["targets"][:0], values=a["values"][:0]), "empty"),
        (lambda a: a.update(targets=a["targets"] * 2), "only 0 and 1"),
        (lambda a: a.update(targets=a["targets"][:5]), r"N = 6 rows"),
        (lambda a: a.update(values=np.where(a["targets"] == 1, np.inf, 0.0)), r"values has 3 infinite.*row 3"),
        (lambda a: a.update(values=a["values"][:, :2]), "shape of targets"),
        (lambda a: a.update(z=np.zeros((6, 2))), r"z must have shape \(6, 3\)"),
        (lambda a: a.update(weights=np.zeros((2, 2))), r"weights must have shape \(3, 3\)"),
        (lambda a: a.update(weights=np.array([[0, 1.0, 0], [0, 0, 1], [1, 0, 0]])), "cycle"),
        (lambda a: a.update(pair=np.arange(5)), "pair must be a 1-D integer array of length N = 6"),
        (lambda a: a.update(pair=np.zeros(6)), "pair must be a 1-D integer"),
        (lambda a: a.update(noise_scales=np.ones(4)), "noise_scales must have shape"),
        (lambda a: a.update(image_shape=(3, 3)), "image_shape"),
        (lambda a: a.update(meta={"f": object()}), "JSON"),
    ],
)
def test_validation_errors(change, match):
    x, t, v = _arrays()
    a = dict(x=x, targets=t, values=v)
    change(a)
    with pytest.raises(DataError, match=match):
        Dataset.from_arrays(**a)


def test_load_errors(tmp_path):
    with pytest.raises(DataError, match="no such file.*external format"):
        Dataset.load(tmp_path / "missing.npz")
    (tmp_path / "empty.npz").write_bytes(b"")
    with pytest.raises(DataError, match="empty"):
        Dataset.load(tmp_path / "empty.npz")
    (tmp_path / "text.npz").write_text("hello")
    with pytest.raises(DataError, match="not a readable .npz"):
        Dataset.load(tmp_path / "text.npz")
    np.save(tmp_path / "arr.npy", np.zeros(3))
    with pytest.raises(DataError, match="not a readable .npz"):
        Dataset.load(tmp_path / "arr.npy")
    x, t, v = _arrays()
    np.savez(tmp_path / "nox.npz", targets=t, values=v)
    with pytest.raises(DataError, match="no array 'x'.*targets"):
        Dataset.load(tmp_path / "nox.npz")
    np.savez(tmp_path / "novalues.npz", x=x, targets=t)
    assert Dataset.load(tmp_path / "novalues.npz").num_unknown_values == int(t.sum())  # values unknown
    np.savez(tmp_path / "obs.npz", x=x, targets=np.zeros_like(t))
    assert Dataset.load(tmp_path / "obs.npz").d == 3


@pytest.mark.skipif(not SHARED_DATA.is_dir(), reason="shared reference datasets not available")
@pytest.mark.parametrize("d, edges", [(5, 3), (10, 13)])
def test_load_reference_datasets(d, edges):
    ds = Dataset.load(SHARED_DATA / f"reference_paper_linear_d{d}_D100_seed0.npz")
    assert (ds.N, ds.D, ds.d) == (4000, 100, d) and ds.has_truth
    assert np.count_nonzero(ds.weights) == edges and ds.noise_scales.shape == (d,)
    assert np.all(ds.targets[:2000] == 0) and np.all(ds.targets[2000:].sum(1) >= 1)
    np.testing.assert_array_equal(ds.pair[:2000], ds.pair[2000:])
    assert len(np.unique(ds.regime[2000:])) <= 20


def test_missing_values_are_unknown_not_zero():
    x, t, v = _arrays()
    v = np.where(t == 1, v, 0.0)
    v[np.argwhere(t == 1)[0][0], np.argwhere(t == 1)[0][1]] = np.nan
    ds = Dataset.from_arrays(x, t, v)
    assert ds.num_unknown_values == 1
    assert Dataset.from_arrays(x, t).num_unknown_values == int(t.sum())  # values omitted: all unknown
