"""The calibrated order posterior (latentscm.inference.order_mixture): exact against enumeration."""

import jax
import numpy as np
import pytest

from latentscm.data.simulate import observed_chain
from latentscm.inference.collapsed import CollapsedConfig, build_collapsed
from latentscm.inference.mcmc_exact import exact_order_posterior, order_total_variation
from latentscm.inference.order_mixture import OrderMixture, prepare_weighing, weigh_orders
from latentscm.models.priors import parse_priors
from latentscm.models.scm import position_tril, tril_to_matrix, weights_from_order
from latentscm.models.permutation import matrix_from_order

PINNED = {"edge_weight": {"dist": "normal", "scale": 1.0},
          "noise_scale": {"dist": "lognormal", "loc": 0.0, "scale": 0.01}}


def test_position_tril_inverts_weights_from_order():
    rng = np.random.default_rng(0)
    d = 5
    l_vec = rng.normal(size=(4, 10))
    orders = np.stack([rng.permutation(d) for _ in range(4)])
    with jax.enable_x64(True):
        W = np.asarray(weights_from_order(tril_to_matrix(l_vec, d), matrix_from_order(orders)))
    for k in range(4):
        np.testing.assert_array_equal(position_tril(W[k], orders[k]), l_vec[k])
        assert np.count_nonzero(W[k]) == 10  # every free entry placed once


def test_order_weights_match_enumeration():
    """Every order of a d = 4 observed problem weighed from a zero start: the probabilities match the closed
    form (noise pinned at 1 by its prior) to Monte Carlo error, with small PSIS k."""
    d = 4
    data = observed_chain(d, 30, 2)
    orders, probs = exact_order_posterior(data.x, data.targets, data.values, 1.0, np.ones(d), 0.1)
    with jax.enable_x64(True):
        built = build_collapsed(data, CollapsedConfig(decoder="identity"), parse_priors(PINNED), 0)
        weighing = prepare_weighing(built.problem.model, built.problem.data, {}, draws_per_order=500)
        zero = np.zeros(sum(int(np.prod(s)) for s, _ in weighing.sites.values()))
        mix = weigh_orders(weighing, built.problem.data, lambda order: zero, orders[:1], jax.random.PRNGKey(0), d=d,
                           num_draws=2000)
    assert isinstance(mix, OrderMixture) and mix.complete and len(mix.orders) == 24
    index = {tuple(o): i for i, o in enumerate(orders.tolist())}
    weights = np.zeros(len(orders))
    weights[[index[tuple(o)] for o in mix.orders.tolist()]] = mix.probs
    assert 0.5 * np.abs(weights - probs).sum() < 0.01
    assert np.max(mix.khat) < 0.7 and not mix.problems()
    assert order_total_variation(mix.draws["order"], orders, probs) < 0.06  # 2000 resampled draws
    # the draws' W is the position-space weights placed by their order
    for W, l_vec, order in zip(mix.draws["W"][:50], mix.draws["edge_weight"], mix.draws["order"]):
        np.testing.assert_allclose(position_tril(W, order), l_vec)
        assert np.count_nonzero(W) == np.count_nonzero(l_vec)


def test_problems_name_unreliable_weights():
    mix = OrderMixture(np.array([[0, 1], [1, 0]]), np.zeros(2), np.array([0.6, 0.4]), np.array([0.2, 0.9]),
                       np.ones(2), np.zeros(2), True, {}, np.zeros(2, bool))
    (problem,) = mix.problems()
    assert "PSIS k up to 0.90" in problem and "[1, 0]" in problem
    assert mix.summary()["max_khat"] == pytest.approx(0.9)
    stopped = mix._replace(khat=np.zeros(2), complete=False)
    (problem,) = stopped.problems()
    assert "search stopped after weighing 2 orders" in problem


def test_orders_whose_weights_cannot_be_smoothed_get_no_mass():
    """An order whose importance weights are one overflowing draw (as a Laplace proposal in a region where the density
    is numerically broken gives, log weight 2.8e8 in the unknown-target knockout test) has no evidence estimate: it
    is left out, the other order takes the mass, and the problems say so."""
    from latentscm.inference.order_mixture import Weighing

    rng = np.random.default_rng(0)
    num = 256
    sane = -1000.0 + rng.normal(size=num)
    broken = np.r_[2.8e8, -1000.0 + 500.0 * rng.normal(size=num - 1)]

    def weigher(Ps, u0, key, index, data, fixed):
        log_w = np.stack([broken if P[0, 0] == 0 else sane for P in Ps])  # order (1, 0): the broken one
        return log_w, {"W": np.zeros((len(Ps), num, 2, 2))}

    mix = weigh_orders(Weighing({}, {}, weigher), None, lambda order: np.zeros(1), np.array([[0, 1]]),
                       np.zeros(2, np.uint32), d=2, num_draws=20)
    broken_at = [tuple(o) for o in mix.orders].index((1, 0))
    assert not np.isfinite(mix.khat[broken_at]) and mix.left_out[broken_at] and mix.left_out.sum() == 1
    assert mix.probs[broken_at] == 0.0 and mix.probs.sum() == pytest.approx(1.0)
    assert (mix.draws["order"] == [0, 1]).all()
    assert any("left out" in p for p in mix.problems())
    assert mix.summary()["left_out"] == 1


@pytest.mark.slow
def test_collapsed_default_is_calibrated_on_an_ambiguous_problem():
    """The default fit's order frequencies against enumeration (d = 4, top order 0.44), next to the guide's."""
    from latentscm.inference import fit

    d = 4
    data = observed_chain(d, 30, 2)
    orders, probs = exact_order_posterior(data.x, data.targets, data.values, 1.0, np.ones(d), 0.1)
    tv = {op: order_total_variation(fit(data, "collapsed", priors=PINNED, progress=False, config={
        "decoder": "identity", "num_draws": 4000, "order_posterior": op}).orders, orders, probs)
        for op in ("auto", "guide")}
    assert tv["auto"] < 0.04 < 0.2 < tv["guide"]


def test_psis_reads_log_weights_the_right_way_round():
    """Weights with a Pareto tail of shape 0.8 get k near 0.8 and smoothed weights that increase with the raw
    ones; bounded weights get a small k (``latentscm.inference.psis.psislw`` takes the log ratios themselves)."""
    from latentscm.inference.order_mixture import _psis

    rng = np.random.default_rng(0)
    heavy = np.log(rng.pareto(1 / 0.8, size=4000) + 1)
    bounded = -rng.exponential(size=4000)
    smoothed, khat = _psis(np.stack([heavy, bounded]))
    assert 0.7 < khat[0] < 1.0 and khat[1] < 0.3
    assert np.corrcoef(smoothed[0], heavy)[0, 1] > 0.9 and np.corrcoef(smoothed[1], bounded)[0, 1] > 0.9
    np.testing.assert_allclose(np.exp(smoothed).sum(1), 1.0)
