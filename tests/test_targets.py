"""Unknown intervention targets: the enumerated collapsed density, the EM start, the fit and its errors."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentscm.data import DataError
from latentscm.data.simulate import SimulationConfig, simulate
from latentscm.inference.api import check_fit_inputs, fit
from latentscm.inference.identify import project
from latentscm.inference.targets import search_targets
from latentscm.metrics import mcc, regime_table
from latentscm.models import collapsed as C
from latentscm.models import target_sets as T


def _observational_known(ds):
    """Hide the targets of every regime but the observational one."""
    ids = np.unique(ds.regime)
    return ds.hide_targets([r for r in ids if ds.targets[ds.regime == r].any()])


def test_candidates_agree_with_known_entries_and_carry_the_bernoulli_prior():
    known = np.array([[1, 0, 0], [0, 0, 0]], np.int8)
    unknown = np.array([[False, True, True], [True, True, True]])
    cands, lp = T.target_candidates(known, unknown, 0.2, max_size=1)
    rows = {tuple(c) for c in cands}
    assert rows == {(1, 0, 0), (1, 1, 0), (1, 0, 1), (0, 0, 0), (0, 1, 0), (0, 0, 1)}
    for c, row0, row1 in zip(cands, lp[0], lp[1]):
        agrees = c[0] == 1
        k = int(c[1:].sum())  # targets among regime 0's unknown entries
        assert row0 == (pytest.approx(k * np.log(0.2) + (2 - k) * np.log(0.8)) if agrees else -np.inf)
        k1 = int(c.sum())
        assert row1 == pytest.approx(k1 * np.log(0.2) + (3 - k1) * np.log(0.8)) if k1 <= 1 else row1 == -np.inf


def test_candidates_near_a_start_pool_each_regimes_set_and_its_one_entry_flips():
    known = np.array([[0, 0, 1], [0, 0, 0]], np.int8)
    unknown = np.array([[True, True, False], [True, True, True]])
    near = np.array([[1, 0, 0], [0, 1, 1]], np.int8)  # regime 0's known entry wins over near's 0
    cands, lp = T.target_candidates(known, unknown, 0.2, near=near)
    # regime 0: centre (1, 0, 1), flips (0, 0, 1), (1, 1, 1); regime 1: centre (0, 1, 1), flips (1, 1, 1),
    # (0, 0, 1), (0, 1, 0)
    assert {tuple(c) for c in cands} == {(1, 0, 1), (0, 0, 1), (1, 1, 1), (0, 1, 1), (0, 1, 0)}
    for c, row0, row1 in zip(cands, lp[0], lp[1]):
        k0 = int(c[:2].sum())
        assert row0 == (pytest.approx(k0 * np.log(0.2) + (2 - k0) * np.log(0.8)) if c[2] == 1 else -np.inf)
        assert row1 == pytest.approx(c.sum() * np.log(0.2) + (3 - c.sum()) * np.log(0.8))


def test_target_table_is_the_collapsed_density_of_each_candidate():
    with jax.enable_x64(True):
        rng = np.random.default_rng(0)
        d, D, N = 3, 7, 60
        x = rng.normal(size=(N, D))
        regime = rng.integers(0, 3, N)
        W = jnp.asarray(np.triu(rng.normal(size=(d, d)), 1))
        sigma, A, b = jnp.array([1.0, 0.7, 1.3]), jnp.asarray(rng.normal(size=(d, D))), jnp.asarray(rng.normal(size=D))
        units = C.make_units(x, np.zeros((N, d), np.int8), np.full((N, d), np.nan))[0]
        cands, lp = T.target_candidates(np.zeros((3, d), np.int8), np.ones((3, d), bool), 0.3)
        ts = T.TargetStats(jax.tree.map(jnp.asarray, C.unit_stats(units, group=regime)), cands, lp)
        table = np.asarray(T.target_table(ts, W, sigma, A, b, 0.3, 0.1, 2.0))
        for r in range(3):
            rows = regime == r
            for c, cand in enumerate(cands):
                t = np.tile(cand, (rows.sum(), 1))
                ref = C.row_log_likelihood(jnp.asarray(x[rows]), t, jnp.where(t > 0, jnp.nan, 0.0), W, sigma, A, b,
                                           0.3, 0.1, 2.0).sum()
                assert table[r, c] == pytest.approx(float(ref), rel=1e-9)
        probs = np.asarray(T.target_probabilities(ts, W, sigma, A, b, 0.3, 0.1, 2.0))
        post = np.exp(table + lp - np.logaddexp.reduce(table + lp, axis=1, keepdims=True))
        np.testing.assert_allclose(probs, post @ cands, rtol=1e-9)


@pytest.fixture(scope="module")
def knockouts():
    cfg = SimulationConfig(d=4, design="iid", values="zero", targets="single", n_regimes=8, n_rows=1800,
                           n_test_regimes=0)
    return simulate(cfg, 1)[0]


def test_em_search_recovers_unknown_knockout_targets(knockouts):
    ds = _observational_known(knockouts)
    y, _, _, s2 = project(ds.x, ds.d)
    y1 = np.c_[y, np.ones(len(y))]
    _, H, order, q, ids, rival = search_targets(y1, ds.targets, ds.values, ds.target_unknown, ds.regime,
                                                rate=0.2, tau=0.1, value_scale=2.0, s2=s2)
    score, match = mcc(y1 @ H, knockouts.z, return_matching=True)
    assert score > 0.99
    assert rival is None  # no EM end near the best bound disagrees on the latents: nothing to warn about
    truth = regime_table(knockouts.regime, knockouts.targets)[1]
    open_truth = truth[np.searchsorted(np.unique(knockouts.regime), ids)]
    np.testing.assert_array_equal(q[:, match] > 0.5, open_truth > 0)
    position = np.argsort(order)  # of each found latent; true latent j is found latent match[j]
    assert all(position[match[i]] < position[match[j]] for i, j in zip(*np.nonzero(knockouts.weights)))


def test_fit_infers_targets_graph_and_latents(knockouts, tmp_path):
    from latentscm.runs import run_metrics, write_run

    ds = _observational_known(knockouts)
    post = fit(ds, "collapsed", config={"unknown_targets": "latent", "steps": 600, "num_draws": 50}, seed=0,
               progress=False)
    metrics = run_metrics(post, ds)
    assert metrics["e_shd"] <= 0.5 and metrics["mcc"] > 0.98
    assert metrics["target_auroc"] > 0.99
    assert post.target_probs.shape == (len(np.unique(ds.regime)), ds.d)
    assert not any("observational" in p for p in post.diagnostics)
    tree = post.to_arviz()
    assert tree["posterior"]["target_prob"].dims == ("chain", "draw", "regime", "node")
    write_run(tmp_path, post, metrics, ds, save_dataset=False)
    assert (tmp_path / "target_probabilities.png").stat().st_size > 0


def test_unknown_targets_need_the_setting_and_single_rows(knockouts):
    ds = _observational_known(knockouts)
    with pytest.raises(DataError, match='unknown_targets = "latent"'):
        check_fit_inputs(ds, "collapsed")
    with pytest.raises(DataError, match="unknown_targets"):
        check_fit_inputs(ds, "amortized")
    paired = ds.from_arrays(ds.x, ds._nan_targets(), regime=ds.regime, pair=np.arange(ds.N) // 2)
    with pytest.raises(DataError, match="use_pairs"):
        check_fit_inputs(paired, "collapsed", {"unknown_targets": "latent", "use_pairs": True})
    with pytest.raises(ValueError, match="float64"):
        check_fit_inputs(ds, "collapsed", {"unknown_targets": "latent", "precision": "float32"})
    with pytest.raises(ValueError, match="target_rate"):
        check_fit_inputs(ds, "collapsed", {"unknown_targets": "latent", "target_rate": 1.0})


def test_observational_regime_is_recognised_only_when_labelled(knockouts):
    from latentscm.inference.targets import has_observational_regime

    assert has_observational_regime(knockouts)
    assert has_observational_regime(_observational_known(knockouts))
    assert not has_observational_regime(knockouts.hide_targets())


def test_candidate_sets_are_all_sets_for_small_d_and_the_starts_neighbourhood_otherwise(knockouts):
    from latentscm.inference.collapsed import CollapsedConfig
    from latentscm.inference.targets import open_target_stats

    ds = knockouts.hide_targets()  # every regime's targets unknown: 2^4 = 16 sets each
    truth = regime_table(ds.regime, ds.true_targets)[1]
    full = open_target_stats(ds, CollapsedConfig(unknown_targets="latent"), ds.true_targets)
    assert len(full.candidates) == 16  # "auto": at most ALL_SETS (64) sets per regime, so all of them
    near = open_target_stats(ds, CollapsedConfig(unknown_targets="latent", target_sets="near_start"),
                             ds.true_targets)
    expected = {tuple(t) for t in truth} | {tuple(np.where(np.arange(4) == j, 1 - t, t)) for t in truth
                                             for j in range(4)}
    assert {tuple(c) for c in near.candidates} == expected
    assert near.log_prior.shape == (len(truth), len(expected)) and np.isfinite(near.log_prior).all()
    with pytest.raises(ValueError, match="near_start"):  # no start to be near
        open_target_stats(ds, CollapsedConfig(unknown_targets="latent", target_sets="near_start"))


def test_swap_exchanges_two_nodes_unknown_targets_only():
    from latentscm.inference.targets import _swap

    q = np.array([[0.9, 0.1, 0.5], [0.2, 0.7, 0.0], [0.3, 0.6, 0.4]])
    free = np.array([[True, True, True], [True, False, True], [True, True, False]])
    out = _swap(q, free, 0, 1)
    np.testing.assert_array_equal(out, [[0.1, 0.9, 0.5], [0.2, 0.7, 0.0], [0.6, 0.3, 0.4]])  # row 1: node 1 known
    np.testing.assert_array_equal(q[0], [0.9, 0.1, 0.5])  # the input is not changed


def test_em_search_reaches_the_truths_bound_with_gaussian_single_targets():
    """Unknown Gaussian values, one target per regime (d = 5): EM stalls with a neighbour of the true target
    marked as targeted too; moving targets between nodes near in the order reaches every target right."""
    from latentscm.inference.targets import _em, _Problem

    cfg = SimulationConfig(d=5, design="iid", targets="single", values="gaussian", n_regimes=20,
                           rows_per_regime=100, n_pairs=2000, n_rows=4000)
    data = simulate(cfg, 3)[0]
    ds = _observational_known(data)
    v = np.where(ds.targets > 0, ds.values, 0.0)
    y, _, _, s2 = project(ds.x, ds.d)
    y1 = np.c_[y, np.ones(len(y))]
    kw = dict(rate=0.2, tau=0.1, value_scale=2.0, s2=s2)
    found = search_targets(y1, ds.targets, v, ds.target_unknown, ds.regime, seed=3, **kw)
    truth = regime_table(data.regime, data.targets)[1][np.searchsorted(np.unique(data.regime), found.ids)]
    # EM started at the truth: true targets, latent directions and order
    problem = _Problem(y1, ds.targets, v, ds.target_unknown, ds.regime)
    q0 = np.where(problem.free, np.clip(truth, 0.02, 0.98), 0.0)
    at_truth = _em(problem, y1, q0, np.linalg.lstsq(y1, data.z, rcond=None)[0], _topological(data.weights), False,
                   **kw)[0]
    assert found.bound > at_truth - 1.0  # the old search ended 2.9 nats below, with 4 of 100 entries wrong
    _, match = mcc(y1 @ found.H, data.z, return_matching=True)
    np.testing.assert_array_equal(found.q[:, match] > 0.5, truth > 0)


def _topological(weights):
    """An order of the nodes in which every edge (``weights[i, j] != 0``: i -> j) points forward."""
    left, order = set(range(len(weights))), []
    while left:
        j = min(k for k in left if not any(weights[i, k] for i in left if i != k))
        order.append(j)
        left.remove(j)
    return np.array(order)


def test_near_moves_swap_or_move_targets_between_nodes_close_in_the_order():
    from latentscm.inference.targets import _move, _near_moves, _swap

    q = np.array([[0.9, 0.1, 0.0, 0.2], [0.1, 0.8, 0.9, 0.0], [0.99, 0.7, 0.1, 0.0]])
    free = np.ones_like(q, bool)
    free[1, 0] = False
    out = _move(q, free, 0, 1)  # regimes 0 and 2 target node 0: they target node 1 instead (softly)
    np.testing.assert_array_equal(out, [[0.02, 0.98, 0.0, 0.2], q[1], [0.02, 0.98, 0.1, 0.0]])
    np.testing.assert_array_equal(_move(q, free, 1, 0), [q[0], q[1], [0.98, 0.02, 0.1, 0.0]])  # row 1: node 0 known
    moves = _near_moves(q, free, np.array([3, 0, 1, 2]))
    # pairs at most two apart in the order: (3, 0), (3, 1), (0, 1), (0, 2), (1, 2); per pair a swap and a
    # move each way, less those that change nothing: node 3 targeted nowhere (3 -> 0, 3 -> 1), 2 -> 0 (known)
    assert len(moves) == 5 * 3 - 3
    assert not any(np.array_equal(m, q) for m in moves)
    assert any(np.array_equal(m, _move(q, free, 0, 2)) for m in moves)
    assert any(np.array_equal(m, _swap(q, free, 1, 2)) for m in moves)
    assert not any(np.array_equal(m, _swap(q, free, 3, 2)) for m in moves)  # three apart in the order


def test_rival_is_a_close_em_end_with_different_latents():
    from latentscm.inference.targets import RIVAL_NATS, _rival, rival_problem

    rng = np.random.default_rng(0)
    y1 = np.c_[rng.normal(size=(500, 3)), np.ones(500)]
    H = np.vstack([np.eye(3), np.zeros((1, 3))])
    mixed = H.copy()
    mixed[:3, :2] = [[1.0, 1.0], [1.0, -1.0], [0.0, 0.0]]  # latents 0 and 1 rotated by 45 degrees
    permuted = H[:, [2, 0, 1]] * [1.0, -2.0, 0.5]  # the same latents relabelled and rescaled: MCC 1
    best = (-100.0, None, H, None)
    assert _rival([best, (-101.0, None, permuted, None)], best, y1) is None
    assert _rival([best, (-100.0 - RIVAL_NATS - 1, None, mixed, None)], best, y1) is None  # too far below
    gap, m, n = _rival([best, (-103.0, None, mixed, None), (-101.0, None, permuted, None)], best, y1)
    # two latents correlate 1/sqrt(2) with their best match, the third 1 (up to sampling noise)
    assert gap == pytest.approx(3.0) and m == pytest.approx((np.sqrt(2) + 1) / 3, abs=0.03) and n == 3
    assert f"MCC {m:.3f}" in rival_problem((gap, m, n)) and rival_problem(None) is None
    assert "2.0 nats above the best" in rival_problem((-2.0, 0.8, 5))  # an end above the kept one is named so


def test_regime_clusters_pool_regimes_of_one_law_and_keep_others_apart():
    from scipy.stats import multivariate_normal

    from latentscm.inference.targets import _gaussian_ll, regime_clusters

    rng = np.random.default_rng(0)
    d, n = 3, 300
    y = rng.normal(size=(n, d)) @ np.diag([1.0, 2.0, 0.5])
    mu, cov = y.mean(0), np.cov(y.T, bias=True)
    # the maximised log-likelihood up to the constant n d (1 + log 2 pi) / 2
    full = multivariate_normal(mu, cov).logpdf(y).sum() + n * d * (1 + np.log(2 * np.pi)) / 2
    assert _gaussian_ll(np.float64(n), y.sum(0), y.T @ y) == pytest.approx(full)
    # nine regimes from three laws (a node's variance changed, another's mean): three groups, exactly those
    laws = [np.eye(d), np.diag([3.0, 1.0, 1.0]), np.eye(d)]
    means = [np.zeros(d), np.zeros(d), np.array([0.0, 0.0, 1.0])]
    law = np.array([0, 1, 2, 1, 0, 2, 2, 0, 1])
    ys = np.concatenate([rng.normal(size=(n, d)) @ laws[k] + means[k] for k in law])
    g = np.repeat(np.arange(len(law)), n)
    label = regime_clusters(np.c_[ys, np.ones(len(ys))], g)
    assert len(np.unique(label)) == 3
    np.testing.assert_array_equal(label[:, None] == label[None, :], law[:, None] == law[None, :])
    # six regimes of one law: one group
    assert (regime_clusters(np.c_[rng.normal(size=(6 * n, d)), np.ones(6 * n)], np.repeat(np.arange(6), n)) == 0).all()


def test_cluster_start_gives_each_group_of_regimes_one_node():
    """Single-target knockouts (d = 4, 12 regimes): every regime grouped with the others of its target, the
    labelled observational regime free; each group one node, so the start's targets are the truth up to the
    node labels. With more groups than nodes (multi-target regimes) there is no such start."""
    from latentscm.inference.targets import _Problem, _cluster_start

    def start(targets):
        cfg = SimulationConfig(d=4, D=12, design="iid", targets=targets, values="zero", n_regimes=12,
                               rows_per_regime=100, n_pairs=1200, n_rows=2600)
        data = simulate(cfg, 1)[0]
        ds = _observational_known(data)
        y1 = np.c_[project(ds.x, ds.d)[0], np.ones(ds.N)]
        ids, first, g = np.unique(ds.regime, return_index=True, return_inverse=True)
        free = ds.target_unknown[first]
        fixed = np.where(free, 0.0, ds.targets[first] > 0)
        problem = _Problem(y1, ds.targets, np.where(ds.targets > 0, ds.values, 0.0), ds.target_unknown, ds.regime)
        q = _cluster_start(problem, y1, g.reshape(-1), fixed, free, ids)
        return q, regime_table(data.regime, data.targets)[1][np.searchsorted(ids, problem.ids)]

    q, truth = start("single")
    assert set(np.unique(q)) == {0.02, 0.98}
    hard = q > 0.5
    assert (hard.sum(1) == 1).all()
    match = [int(np.flatnonzero(truth[hard[:, k]].any(0))[0]) for k in range(4)]  # group k's true node
    assert sorted(match) == [0, 1, 2, 3]
    np.testing.assert_array_equal(hard, truth[:, match] > 0)
    q, _ = start("multi")
    assert q is None
