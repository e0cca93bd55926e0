"""latentscm.inference.psis against arviz_stats (ArviZ 1.x): the same smoothed weights, k and LOO."""

import warnings

import numpy as np
import pytest

from latentscm.inference.psis import loo, psislw


def _ratios(rng, K, S):
    """Log ratios from light to very heavy tails (k from about 0 to above 1)."""
    return (rng.normal(size=(K, S)) * rng.uniform(0.1, 4, size=(K, 1))
            + rng.standard_t(2, size=(K, S)) * rng.uniform(0, 2, size=(K, 1)))


@pytest.mark.parametrize("S, r_eff", [(30, 1.0), (256, 1.0), (1000, 1.0), (400, 0.3)])
def test_psislw_matches_arviz_stats(S, r_eff):
    from arviz_stats.base import array_stats

    rng = np.random.default_rng(S)
    lr = _ratios(rng, 200, S)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected_lw, expected_k = array_stats.psislw(-lr, r_eff=r_eff, axis=-1)  # it takes negated ratios
    lw, k = psislw(lr, r_eff)
    np.testing.assert_allclose(lw, expected_lw, rtol=0, atol=1e-12)
    np.testing.assert_allclose(k, expected_k, rtol=0, atol=1e-12)
    assert k.max() > 0.7 and k.min() < 0.3  # the cases span both sides of the reliability threshold
    np.testing.assert_allclose(np.exp(lw).sum(1), 1.0)


def test_psislw_refuses_a_flat_tail_and_too_few_draws():
    with pytest.raises(ValueError, match="all alike"):
        psislw(np.zeros((2, 100)))
    with pytest.raises(ValueError, match="at least 5"):
        psislw(np.random.default_rng(0).normal(size=(1, 20)))


@pytest.mark.parametrize("chains", [1, 4])
def test_loo_metrics_match_az_loo(chains):
    """loo_metrics (vectorised) against az.loo on the same tree: one chain (r_eff 1) and several (r_eff from
    ArviZ's ESS of the posterior)."""
    import arviz as az

    from latentscm.criticism import loo_metrics

    rng = np.random.default_rng(chains)
    S, n = 400, 300
    theta = np.cumsum(rng.normal(size=(chains, S // chains)), 1) * 0.1  # autocorrelated: r_eff < 1
    y = rng.standard_t(3, size=n)
    ll = -0.5 * (y[None, None] - theta[..., None]) ** 2 - 0.5 * np.log(2 * np.pi)
    tree = az.from_dict({"posterior": {"theta": theta}, "log_likelihood": {"x": ll}})
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = az.loo(tree, pointwise=True)
    got = loo_metrics(tree)
    assert got["loo"] == pytest.approx(float(expected.elpd), rel=1e-12)
    assert got["loo_se"] == pytest.approx(float(expected.se), rel=1e-10)
    assert got["loo_p"] == pytest.approx(float(expected.p), rel=1e-10)
    assert got["loo_k_max"] == pytest.approx(float(np.max(expected.pareto_k)), abs=1e-12)
    assert got["loo_units"] == n


def test_loo_by_hand():
    """One unit, p(y | θ_s) spread evenly over [0.25, 0.5]: the importance weights 1 / p are bounded (k < 0.5), so
    PSIS barely moves them and elpd is the harmonic-mean identity -log mean_s(1 / p_s), p_loo = lppd - elpd."""
    S = 1000
    p_s = 0.25 + 0.25 * (np.arange(S) + 0.5) / S
    elpd, se, p, k = loo(np.log(p_s)[:, None])
    assert k[0] < 0.5 and se == 0.0
    assert elpd == pytest.approx(-np.log(np.mean(1 / p_s)), rel=1e-4)
    assert p == pytest.approx(np.log(np.mean(p_s)) - elpd, rel=1e-3)


def test_psislw_in_chunks_is_the_same(monkeypatch):
    """Sets are smoothed in chunks (bounded memory): any chunk size gives the same weights and k."""
    import latentscm.inference.psis as psis

    lr = _ratios(np.random.default_rng(7), 50, 200)
    whole = psislw(lr)
    monkeypatch.setattr(psis, "_CHUNK", 7)
    chunked = psis.psislw(lr)
    np.testing.assert_array_equal(whole[0], chunked[0])
    np.testing.assert_array_equal(whole[1], chunked[1])
