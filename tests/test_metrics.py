"""Hand-worked and brute-force reference tests for latentscm.metrics."""

import itertools

import numpy as np
import pytest

from latentscm.metrics import (
    edge_auprc,
    edge_auroc,
    edge_probabilities,
    edge_rmse,
    expected_shd,
    latent_signs,
    mcc,
    order_probabilities,
    regime_table,
    shd,
    structure_metrics,
    target_auprc,
    target_auroc,
)

CHAIN = np.array([[0, 1, 0], [0, 0, 1], [0, 0, 0]])  # 0 -> 1 -> 2
REVERSED_CHAIN = CHAIN.T  # 2 -> 1 -> 0


def random_dag(rng, d, p=0.5):
    perm = rng.permutation(d)
    upper = np.triu(rng.random((d, d)) < p, k=1).astype(int)
    return upper[np.ix_(perm, perm)]


# ---------------------------------------------------------------- shd


def test_shd_chain_vs_reversal():
    assert shd(REVERSED_CHAIN, CHAIN) == 2
    assert shd(REVERSED_CHAIN, CHAIN, reversal_cost=2) == 4


def test_shd_identical_is_zero():
    assert shd(CHAIN, CHAIN) == 0
    assert shd(CHAIN, CHAIN, reversal_cost=2) == 0


def test_shd_missing_and_extra_edges():
    missing = np.array([[0, 1, 0], [0, 0, 0], [0, 0, 0]])  # 1 -> 2 dropped
    extra = np.array([[0, 1, 1], [0, 0, 1], [0, 0, 0]])  # 0 -> 2 added
    assert shd(missing, CHAIN) == 1
    assert shd(extra, CHAIN) == 1
    # missing, extra and reversal cost is unaffected by missing/extra edges
    mixed = np.array([[0, 0, 1], [1, 0, 0], [0, 0, 0]])  # 1->0 reversed, 1->2 missing, 0->2 extra
    assert shd(mixed, CHAIN) == 3
    assert shd(mixed, CHAIN, reversal_cost=2) == 4
    assert shd(np.zeros((3, 3)), CHAIN) == 2


def test_shd_bidirected_pair_costs_one():
    true = np.array([[0, 1], [0, 0]])
    both = np.array([[0, 1], [1, 0]])
    assert shd(both, true) == 1
    assert shd(both, true, reversal_cost=2) == 1
    # both directions vs none: one differing pair state
    assert shd(both, np.zeros((2, 2))) == 1


def test_shd_accepts_bool_and_float_reversal_cost():
    assert shd(REVERSED_CHAIN.astype(bool), CHAIN.astype(bool), reversal_cost=1.5) == 3.0
    assert isinstance(shd(CHAIN, CHAIN), int)


def test_shd_cost_two_equals_entrywise_difference_on_dags():
    rng = np.random.default_rng(0)
    for _ in range(50):
        a, b = random_dag(rng, 6), random_dag(rng, 6)
        assert shd(a, b, reversal_cost=2) == int(np.sum(a != b))
        assert shd(a, b) == shd(b, a)


def test_shd_cost_one_brute_force_on_dags():
    rng = np.random.default_rng(1)
    for _ in range(50):
        a, b = random_dag(rng, 5), random_dag(rng, 5)
        skel_a, skel_b = (a + a.T) > 0, (b + b.T) > 0
        missing_or_extra = int(np.sum(np.triu(skel_a != skel_b, 1)))
        reversed_ = int(np.sum((a == 1) & (b.T == 1)))
        assert shd(a, b) == missing_or_extra + reversed_


@pytest.mark.parametrize(
    "pred, true, match",
    [
        (np.zeros((2, 3)), np.zeros((2, 3)), "square"),
        (np.zeros((2, 2)), np.zeros((3, 3)), "same number of nodes"),
        (np.full((2, 2), 0.5), np.zeros((2, 2)), "0/1"),
        (np.eye(2), np.zeros((2, 2)), "self-loops"),
        (np.array([[0, np.nan], [0, 0]]), np.zeros((2, 2)), "NaN"),
    ],
)
def test_shd_validation(pred, true, match):
    with pytest.raises(ValueError, match=match):
        shd(pred, true)


@pytest.mark.parametrize("cost", [-1, np.inf, "2", True])
def test_shd_rejects_bad_reversal_cost(cost):
    with pytest.raises(ValueError, match="reversal_cost"):
        shd(CHAIN, CHAIN, reversal_cost=cost)


# ---------------------------------------------------------------- expected_shd


def test_expected_shd_two_draws():
    W_true = np.array([[0.0, 1.3, 0.0], [0.0, 0.0, -0.7], [0.0, 0.0, 0.0]])
    exact = np.array([[0.0, 0.8, 0.0], [0.0, 0.0, -1.2], [0.0, 0.0, 0.0]])
    # 0->1 reversed, 1->2 below threshold (missing), 0->2 extra; diagonal ignored
    wrong = np.array([[5.0, 0.1, -0.4], [0.5, 0.0, 0.2], [0.0, 0.0, 0.0]])
    draws = np.stack([exact, wrong])
    assert expected_shd(draws, W_true) == pytest.approx(1.5)
    assert expected_shd(draws, W_true, reversal_cost=2) == pytest.approx(2.0)
    # lower threshold: 1->2 (0.2) now present, 0->1 (0.1) now an edge too -> draw 2 has 0<->1
    # pair state both vs i->j: 1; 0->2 extra: 1  => (0 + 2) / 2
    assert expected_shd(draws, W_true, threshold=0.05) == pytest.approx(1.0)


def test_expected_shd_does_not_threshold_truth():
    W_true = np.array([[0.0, 0.1], [0.0, 0.0]])  # weak but real edge
    draws = np.zeros((1, 2, 2))
    assert expected_shd(draws, W_true) == 1.0


def test_expected_shd_validation():
    with pytest.raises(ValueError, match=r"W\[None\]"):
        expected_shd(np.zeros((3, 3)), np.zeros((3, 3)))
    with pytest.raises(ValueError, match="threshold"):
        expected_shd(np.zeros((1, 3, 3)), np.zeros((3, 3)), threshold=-0.1)
    with pytest.raises(ValueError, match="same number of nodes"):
        expected_shd(np.zeros((1, 3, 3)), np.zeros((2, 2)))


# ---------------------------------------------------------------- edge_probabilities


def test_edge_probabilities_hand_case():
    draws = np.array(
        [
            [[1.0, 0.5, -0.31], [0.0, 0.0, 0.3], [0.0, 0.0, 0.0]],
            [[1.0, -0.9, 0.0], [0.2, 0.0, 0.4], [0.0, 0.0, 0.0]],
            [[1.0, 0.0, 0.0], [0.0, 0.0, -2.0], [0.0, 0.35, 0.0]],
            [[1.0, 0.7, 0.0], [0.0, 0.0, 0.0], [0.0, 0.0, 0.0]],
        ]
    )
    expected = np.array([[0.0, 0.75, 0.25], [0.0, 0.0, 0.5], [0.0, 0.25, 0.0]])
    np.testing.assert_allclose(edge_probabilities(draws), expected)
    expected_low = np.array([[0.0, 0.75, 0.25], [0.25, 0.0, 0.75], [0.0, 0.25, 0.0]])
    np.testing.assert_allclose(edge_probabilities(draws, threshold=0.1), expected_low)


# ---------------------------------------------------------------- order_probabilities


def test_order_probabilities_hand_case():
    orders = np.array([[0, 1, 2], [0, 2, 1], [1, 0, 2], [0, 1, 2]])
    expected = np.array([[0.75, 0.25, 0.0], [0.25, 0.5, 0.25], [0.0, 0.25, 0.75]])
    np.testing.assert_allclose(order_probabilities(orders), expected)


def test_order_probabilities_rejects_non_permutation():
    with pytest.raises(ValueError, match="permutation"):
        order_probabilities(np.array([[0, 0, 2]]))


# ---------------------------------------------------------------- AUROC / AUPRC

# Off-diagonal entries in row-major order: (0,1) (0,2) (1,0) (1,2) (2,0) (2,1); truth CHAIN
# labels:                                    1     0     0     1     0     0
TIED_PROBS = np.array([[0.0, 0.9, 0.5], [0.1, 0.0, 0.5], [0.0, 0.2, 0.0]])


def test_auroc_hand_case_with_ties():
    # positives 0.9, 0.5; negatives 0.5, 0.1, 0.0, 0.2
    # 0.9 beats all 4; 0.5 ties one (1/2) and beats 3 -> 7.5 / 8
    assert edge_auroc(TIED_PROBS, CHAIN) == pytest.approx(7.5 / 8)


def test_auroc_perfect_and_inverted():
    assert edge_auroc(CHAIN * 0.9 + 0.05 * (1 - np.eye(3)), CHAIN) == pytest.approx(1.0)
    assert edge_auroc(REVERSED_CHAIN.astype(float) * (1 - CHAIN), CHAIN) == pytest.approx(
        # positives score 0; negatives: two score 1 (beaten), two score 0 (tied) -> 2*(0+0+.5+.5)/8
        0.25
    )


def test_auroc_uses_weighted_truth_and_ignores_diagonal():
    W_true = np.array([[7.0, -1.5, 0.0], [0.0, 9.0, 0.4], [0.0, 0.0, 0.0]])
    probs = TIED_PROBS + np.diag([1.0, 1.0, 1.0])
    assert edge_auroc(probs, W_true) == pytest.approx(7.5 / 8)


def test_auprc_hand_case_with_ties():
    # thresholds 0.9: P=1, R=1/2; 0.5 (one pos, one neg tied): P=2/3, R=1 -> 1/2 + 1/3
    assert edge_auprc(TIED_PROBS, CHAIN) == pytest.approx(0.5 + 1.0 / 3.0)


def test_auprc_hand_case_no_ties():
    # ranking: neg, pos, pos, neg, neg, neg -> P=1/2 at R=1/2, P=2/3 at R=1
    probs = np.array([[0.0, 0.8, 0.9], [0.1, 0.0, 0.7], [0.3, 0.2, 0.0]])
    assert edge_auprc(probs, CHAIN) == pytest.approx(0.25 + 1.0 / 3.0)


def test_auroc_auprc_against_brute_force():
    rng = np.random.default_rng(2)
    for _ in range(30):
        d = 5
        truth = random_dag(rng, d)
        if truth.sum() == 0:
            continue
        probs = rng.integers(0, 5, size=(d, d)) / 4.0  # coarse grid: many ties
        mask = ~np.eye(d, dtype=bool)
        s, y = probs[mask], truth[mask] == 1
        pos, neg = s[y], s[~y]
        wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
        assert edge_auroc(probs, truth) == pytest.approx(wins / (pos.size * neg.size))

        # AP with continuous (untied) scores: mean over positives of precision at their rank
        cont = rng.random((d, d))
        s = cont[mask]
        order = np.argsort(-s)
        y_sorted = y[order]
        ranks = np.flatnonzero(y_sorted) + 1
        ap = np.mean(np.cumsum(y_sorted)[ranks - 1] / ranks)
        assert edge_auprc(cont, truth) == pytest.approx(ap)


@pytest.mark.parametrize("fn", [edge_auroc, edge_auprc])
@pytest.mark.parametrize("truth", [np.zeros((3, 3)), 1 - np.eye(3)])
def test_ranking_metrics_nan_for_degenerate_truth(fn, truth):
    with pytest.warns(RuntimeWarning, match="undefined"):
        value = fn(TIED_PROBS, truth)
    assert np.isnan(value)


# ---------------------------------------------------------------- MCC


def test_mcc_permuted_scaled_sign_flipped_is_one():
    rng = np.random.default_rng(3)
    z = rng.normal(size=(200, 4))
    perm = np.array([2, 0, 3, 1])
    z_pred = z[:, perm] * np.array([-2.0, 0.5, 3.0, -0.1]) + np.array([1.0, -4.0, 0.0, 2.0])
    value, matching = mcc(z_pred, z, return_matching=True)
    assert value == pytest.approx(1.0)
    # z_pred[:, k] = z[:, perm[k]], so true j is matched to k with perm[k] == j
    np.testing.assert_array_equal(matching, np.argsort(perm))
    np.testing.assert_allclose(np.abs(np.corrcoef(z_pred[:, matching].T, z.T)[:4, 4:]).diagonal(), 1.0)


def test_mcc_hand_case_known_correlation():
    x = np.array([1.0, 2.0, 3.0, 4.0])
    y = np.array([1.0, 3.0, 2.0, 4.0])  # corr(x, y) = 4 / 5
    w = np.array([1.0, -1.0, -1.0, 1.0])  # uncorrelated with x and y
    z_true = np.column_stack([x, w])
    z_pred = np.column_stack([-2.0 * w, y])
    value, matching = mcc(z_pred, z_true, return_matching=True)
    assert value == pytest.approx((1.0 + 0.8) / 2)
    np.testing.assert_array_equal(matching, [1, 0])
    assert mcc(z_pred, z_true) == pytest.approx(0.9)


def test_mcc_hungarian_beats_greedy_brute_force():
    rng = np.random.default_rng(4)
    d = 4
    for _ in range(20):
        z_true = rng.normal(size=(50, d))
        z_pred = z_true @ rng.normal(size=(d, d)) + 0.5 * rng.normal(size=(50, d))
        c = np.abs(np.corrcoef(z_pred.T, z_true.T)[:d, d:])
        best = max(np.mean(c[list(p), range(d)]) for p in itertools.permutations(range(d)))
        assert mcc(z_pred, z_true) == pytest.approx(best)


def test_mcc_validation():
    with pytest.raises(ValueError, match="same shape"):
        mcc(np.zeros((5, 2)), np.zeros((5, 3)))
    with pytest.raises(ValueError, match="constant"):
        mcc(np.column_stack([np.ones(5), np.arange(5.0)]), np.random.default_rng(0).normal(size=(5, 2)))
    with pytest.raises(ValueError, match=r"\(N, d\)"):
        mcc(np.zeros(5), np.zeros(5))


# ---------------------------------------------------------------- edge RMSE


def test_edge_rmse_hand_case():
    W_true = np.array([[0.0, 1.0], [0.0, 0.0]])
    draws = np.array([[[9.0, 1.5], [0.0, 0.0]], [[0.0, 0.0], [0.5, -3.0]]])
    # squared errors (off-diagonal): draw 1: 0.25, 0; draw 2: 1, 0.25 -> mean 1.5 / 4
    assert edge_rmse(draws, W_true) == pytest.approx(np.sqrt(0.375))


def test_edge_rmse_zero_when_exact():
    W = np.array([[0.0, 0.4, -1.0], [0.0, 0.0, 2.0], [0.0, 0.0, 0.0]])
    assert edge_rmse(np.stack([W, W]), W) == 0.0


def test_edge_rmse_sign_gauge_hand_case():
    # latent 0's sign flipped (a knockout latent has no sign): edge 0 -> 1 of weight 1.5 drawn as -1.5
    W_true = np.array([[0.0, 1.5, 0.0], [0.0, 0.0, -0.5], [0.0, 0.0, 0.0]])
    draw = np.array([[0.0, -1.5, 0.0], [0.0, 0.0, -0.5], [0.0, 0.0, 0.0]])
    assert edge_rmse(draw[None], W_true) == pytest.approx(np.sqrt(9.0 / 6))
    assert edge_rmse(draw[None], W_true, signs=[-1, 1, 1]) == pytest.approx(0.0)
    rng = np.random.default_rng(0)
    z = rng.normal(size=(50, 3))
    np.testing.assert_array_equal(latent_signs(z * [-2.0, 1.0, 0.5], z), [-1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="signs"):
        edge_rmse(draw[None], W_true, signs=[0, 1, 1])


# ---------------------------------------------------------------- structure_metrics


def test_structure_metrics_combines_components():
    W_true = np.array([[0.0, 1.3, 0.0], [0.0, 0.0, -0.7], [0.0, 0.0, 0.0]])
    exact = np.array([[0.0, 0.8, 0.0], [0.0, 0.0, -1.2], [0.0, 0.0, 0.0]])
    wrong = np.array([[0.0, 0.1, -0.4], [0.5, 0.0, 0.2], [0.0, 0.0, 0.0]])
    draws = np.stack([exact, wrong])
    rng = np.random.default_rng(5)
    z = rng.normal(size=(30, 3))
    out = structure_metrics(draws, W_true, z_pred=z[:, ::-1] * 2.0, z_true=z)
    assert set(out) == {"e_shd", "e_shd_double", "auroc", "auprc", "edge_rmse", "mcc"}
    assert all(isinstance(v, float) for v in out.values())
    assert out["e_shd"] == pytest.approx(1.5)
    assert out["e_shd_double"] == pytest.approx(2.0)
    # probs: (0,1)=.5 (0,2)=.5 (1,0)=.5 (1,2)=.5, rest 0; positives .5,.5; negatives .5,.5,0,0
    assert out["auroc"] == pytest.approx(6.0 / 8.0)
    assert out["auprc"] == pytest.approx(0.5)
    signs = latent_signs(z[:, ::-1] * 2.0, z)
    assert out["edge_rmse"] == pytest.approx(edge_rmse(draws, W_true, signs))
    assert out["mcc"] == pytest.approx(1.0)

    no_latents = structure_metrics(draws, W_true)
    assert "mcc" not in no_latents
    with pytest.raises(ValueError, match="both"):
        structure_metrics(draws, W_true, z_pred=z)


# ---------------------------------------------------------------- intervention targets


def test_regime_table_sorts_ids_and_takes_first_row():
    regime = np.array([2, 0, 2, 1])
    rows = np.array([[1, 1], [0, 0], [1, 1], [0, 1]])
    ids, table = regime_table(regime, rows)
    assert ids.tolist() == [0, 1, 2] and table.tolist() == [[0, 0], [0, 1], [1, 1]]
    ids, first = regime_table(regime, np.arange(4))  # any per-row array
    assert first.tolist() == [1, 3, 0]


def test_regime_table_validation():
    with pytest.raises(ValueError, match="regime must be a 1-D integer"):
        regime_table(np.zeros(3), np.zeros((3, 2)))
    with pytest.raises(ValueError, match="one entry per row"):
        regime_table(np.zeros(3, int), np.zeros((4, 2)))


# regime x node; truth: regime 0 hits node 0, regime 1 hits node 0
TARGET_TRUE = np.array([[1, 0], [1, 0]])


def test_target_auroc_auprc_hand_case_with_ties():
    probs = np.array([[0.8, 0.5], [0.5, 0.1]])
    # positives 0.8, 0.5; negatives 0.5, 0.1: 0.8 beats both, 0.5 ties one and beats one -> 3.5 / 4
    assert target_auroc(probs, TARGET_TRUE) == pytest.approx(3.5 / 4)
    # thresholds 0.8: P=1, R=1/2; 0.5 (one pos, one neg tied): P=2/3, R=1 -> 1/2 + 1/3
    assert target_auprc(probs, TARGET_TRUE) == pytest.approx(0.5 + 1.0 / 3.0)


def test_target_auroc_auprc_perfect_and_inverted():
    true = np.array([[1, 0], [0, 1]])
    perfect = np.array([[0.9, 0.2], [0.4, 0.6]])
    assert target_auroc(perfect, true) == 1.0 and target_auprc(perfect, true) == pytest.approx(1.0)
    inverted = 1.0 - perfect  # ranking neg, neg, pos, pos: P = 1/3 at R = 1/2, P = 1/2 at R = 1
    assert target_auroc(inverted, true) == 0.0
    assert target_auprc(inverted, true) == pytest.approx(0.5 / 3 + 0.5 / 2)


def test_target_metrics_match_edge_metrics_on_flattened_scores():
    rng = np.random.default_rng(3)
    probs = rng.integers(0, 5, size=(4, 5)) / 4.0
    true = (rng.random((4, 5)) < 0.4).astype(int)
    s, y = probs.ravel(), true.ravel() == 1
    pos, neg = s[y], s[~y]
    wins = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert target_auroc(probs, true) == pytest.approx(wins / (pos.size * neg.size))
    assert 0.0 <= target_auprc(probs, true) <= 1.0


@pytest.mark.parametrize("fn", [target_auroc, target_auprc])
@pytest.mark.parametrize("truth", [np.zeros((2, 3)), np.ones((2, 3))])
def test_target_metrics_nan_for_one_class(fn, truth):
    with pytest.warns(RuntimeWarning, match="target ranking metric is undefined"):
        value = fn(np.full((2, 3), 0.5), truth)
    assert np.isnan(value)


def test_target_metrics_validation():
    with pytest.raises(ValueError, match=r"shape \(R, d\)"):
        target_auroc(np.zeros((2, 2)), np.zeros((2, 3)))
    with pytest.raises(ValueError, match="0/1"):
        target_auprc(np.zeros((2, 2)), np.full((2, 2), 0.5))
    with pytest.raises(ValueError, match="NaN"):
        target_auroc(np.full((2, 2), np.nan), TARGET_TRUE)
