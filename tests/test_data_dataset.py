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


# ---------------------------------------------------------------- unknown intervention targets

NAN = np.nan


def _unknown_arrays():
    """4 rows, d = 2: regime 0 observational, regime 1 hits node 0 (known), regime 2 unknown (truly node 1)."""
    x = np.random.default_rng(0).normal(size=(4, 3))
    targets = np.array([[0, 0], [1, 0], [NAN, NAN], [NAN, NAN]])
    values = np.array([[0, 0], [2.0, 0], [5.0, 5.0], [NAN, NAN]])  # finite values where unknown become NaN
    regime = np.array([0, 1, 2, 2])
    true_targets = np.array([[0, 0], [1, 0], [0, 1], [0, 1]])
    return x, targets, values, regime, true_targets


def test_unknown_targets_from_arrays():
    x, t, v, r, tt = _unknown_arrays()
    ds = Dataset.from_arrays(x, t, v, regime=r, true_targets=tt)
    assert ds.targets.dtype == np.int8 and ds.targets.tolist() == [[0, 0], [1, 0], [0, 0], [0, 0]]
    assert ds.target_unknown.tolist() == [[False, False], [False, False], [True, True], [True, True]]
    assert np.isnan(ds.values[2:]).all() and ds.values[1, 0] == 2.0
    assert ds.num_unknown_targets == 4 and ds.num_unknown_values == 0  # unknown targets are not unknown values
    assert ds.true_targets.dtype == np.int8 and ds.true_targets.tolist() == tt.tolist()
    known = Dataset.from_arrays(x, np.nan_to_num(t), regime=r)
    assert known.target_unknown is None and known.num_unknown_targets == 0 and known.true_targets is None
    # the unknown mask may be given as a field too; a mask with no True entry means every target is known
    same = Dataset(x, np.zeros((4, 2)), v, r, target_unknown=ds.target_unknown)
    np.testing.assert_array_equal(same.target_unknown, ds.target_unknown)
    assert Dataset(x, np.zeros((4, 2)), np.zeros((4, 2)), r, target_unknown=np.zeros((4, 2), bool)).target_unknown is None


def test_unknown_values_counted_only_where_targets_known():
    x, t, v, r, _ = _unknown_arrays()
    v[1, 0] = NAN
    ds = Dataset.from_arrays(x, t, v, regime=r)
    assert ds.num_unknown_values == 1 and ds.num_unknown_targets == 4


def test_absent_targets_all_unknown():
    x, _, _, r, tt = _unknown_arrays()
    for kw in (dict(true_targets=tt), dict(values=np.zeros((4, 2))), dict(z=np.zeros((4, 2))),
               dict(weights=np.zeros((2, 2)))):
        ds = Dataset.from_arrays(x, None, regime=r, **kw)
        assert ds.d == 2 and ds.num_unknown_targets == 8 and np.isnan(ds.values).all()
    with pytest.raises(DataError, match="regime ids are required"):
        Dataset.from_arrays(x, None, true_targets=tt)
    with pytest.raises(DataError, match=r"number of latents d; give targets as an all-NaN \(N, d\) array"):
        Dataset.from_arrays(x, None, regime=r)


def test_roundtrip_nan_targets(tmp_path):
    x, t, v, r, tt = _unknown_arrays()
    ds = Dataset.from_arrays(x, t, v, regime=r, true_targets=tt, pair=np.array([0, 1, 2, 3]))
    path = ds.save(tmp_path / "u.npz")
    with np.load(path) as f:
        assert np.issubdtype(f["targets"].dtype, np.floating) and np.isnan(f["targets"][2:]).all()
        np.testing.assert_array_equal(f["targets"][:2], [[0, 0], [1, 0]])
    back = Dataset.load(path)
    for k in ("x", "targets", "values", "regime", "pair", "target_unknown", "true_targets"):
        np.testing.assert_array_equal(getattr(back, k), getattr(ds, k))
    with np.load(Dataset.from_arrays(x, np.nan_to_num(t), regime=r).save(tmp_path / "k.npz")) as f:
        assert f["targets"].dtype == np.int8 and "true_targets" not in f.files  # all known: as before


def test_load_absent_targets(tmp_path):
    x, _, _, r, tt = _unknown_arrays()
    np.savez(tmp_path / "a.npz", x=x, regime=r, true_targets=tt)
    ds = Dataset.load(tmp_path / "a.npz")
    assert ds.d == 2 and ds.num_unknown_targets == 8 and ds.true_targets.tolist() == tt.tolist()
    back = Dataset.load(ds.save(tmp_path / "b.npz"))
    np.testing.assert_array_equal(back.target_unknown, ds.target_unknown)
    np.testing.assert_array_equal(back.true_targets, tt)
    np.savez(tmp_path / "noregime.npz", x=x, true_targets=tt)
    with pytest.raises(DataError, match="neither 'targets' nor 'regime'.*add regime"):
        Dataset.load(tmp_path / "noregime.npz")
    np.savez(tmp_path / "nod.npz", x=x, regime=r)
    with pytest.raises(DataError, match="all-NaN"):
        Dataset.load(tmp_path / "nod.npz")


@pytest.mark.parametrize(
    "change, match",
    [
        (lambda a: a.pop("regime"), r"4 targets are unknown \(NaN\).*give regime ids"),
        (lambda a: a["targets"].__setitem__((3, 1), 1.0),
         r"target masks contradict their regime ids: regime 2 .* row 3 \[\?, 1\] differs from row 2 \[\?, \?\]"),
        (lambda a: a["targets"].__setitem__((3, 1), NAN) or a["regime"].__setitem__(3, 1),
         r"contradict their regime ids: regime 1 .* row 3 \[\?, \?\] differs from row 1 \[1, 0\]"),
        (lambda a: a["true_targets"].__setitem__((1, 1), 1), r"true_targets disagrees with the known targets in 1 .*row 1"),
        (lambda a: a["true_targets"].__setitem__((3, 0), 1), r"true_targets differ within regime 2 \(rows 2 and 3\)"),
        (lambda a: a.update(true_targets=a["true_targets"][:3]), r"true_targets must be a 0/1 array of the shape"),
        (lambda a: a.update(true_targets=a["true_targets"] * 2), r"true_targets must be a 0/1 array"),
        (lambda a: a["targets"].__setitem__((0, 0), 0.5), r"only 0 and 1.*or NaN where unknown"),
    ],
)
def test_unknown_target_errors(change, match):
    x, t, v, r, tt = _unknown_arrays()
    a = dict(x=x, targets=t, values=v, regime=r, true_targets=tt)
    change(a)
    with pytest.raises(DataError, match=match):
        Dataset.from_arrays(**a)


def test_target_unknown_field_validated():
    x, t, v, r, _ = _unknown_arrays()
    with pytest.raises(DataError, match="target_unknown must be a bool array"):
        Dataset(x, np.nan_to_num(t), v, r, target_unknown=np.ones((4, 3), bool))


def test_true_targets_with_known_targets():
    x, t, v = _arrays()
    ds = Dataset.from_arrays(x, t, v, true_targets=t)
    assert ds.target_unknown is None and ds.true_targets.tolist() == t.tolist()
    with pytest.raises(DataError, match="true_targets disagrees"):
        Dataset.from_arrays(x, t, v, true_targets=1 - t)


def test_hide_targets(small, tmp_path):
    hidden = small.hide_targets([2, 3])
    rows = np.isin(small.regime, [2, 3])
    assert hidden.num_unknown_targets == rows.sum() * small.d and small.target_unknown is None  # a copy
    np.testing.assert_array_equal(hidden.target_unknown, np.repeat(rows[:, None], small.d, axis=1))
    assert np.isnan(hidden.values[rows]).all() and np.all(hidden.targets[rows] == 0)
    np.testing.assert_array_equal(hidden.values[~rows], small.values[~rows])
    np.testing.assert_array_equal(hidden.true_targets, small.targets)
    for k in ("x", "regime", "pair", "z", "weights"):
        np.testing.assert_array_equal(getattr(hidden, k), getattr(small, k))
    everything = hidden.hide_targets()  # default: all regimes; the truth set before is kept
    assert everything.num_unknown_targets == small.N * small.d
    np.testing.assert_array_equal(everything.true_targets, small.targets)
    back = Dataset.load(everything.save(tmp_path / "h.npz"))
    np.testing.assert_array_equal(back.target_unknown, everything.target_unknown)
    np.testing.assert_array_equal(back.true_targets, small.targets)
    with pytest.raises(DataError, match=r"regime ids \[99\] do not occur"):
        small.hide_targets([2, 99])
    x, t, v, r, _ = _unknown_arrays()  # unknown targets without a truth: no truth to keep
    assert Dataset.from_arrays(x, t, v, regime=r).hide_targets([1]).true_targets is None


def test_unknown_targets_subset_dataframe():
    x, t, v, r, tt = _unknown_arrays()
    ds = Dataset.from_arrays(x, t, v, regime=r, true_targets=tt)
    sub = ds.subset([2, 3])
    assert sub.num_unknown_targets == 4 and sub.true_targets.tolist() == tt[2:].tolist()
    known = ds.subset([0, 1])
    assert known.target_unknown is None and known.true_targets.tolist() == tt[:2].tolist()
    df = ds.to_dataframe()
    assert {"target_0", "true_target_1", "value_0", "regime"} <= set(df)
    assert df["target_0"].isna().tolist() == [False, False, True, True] and df["target_0"][1] == 1
    assert df["true_target_1"].tolist() == [0, 0, 1, 1]
