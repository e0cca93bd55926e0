"""Observed causal variables (decoder = identity): the shared checks and the collapsed SVI path."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from latentscm.data import Dataset, SimulationConfig, simulate
from latentscm.inference import METHODS, fit
from latentscm.inference.decoders import IdentityDecoder
from latentscm.metrics import expected_shd
from latentscm.models.observed import identity_log_likelihood, identity_stats
from latentscm.models.scm import InterventionalLinearGaussian


def observed(d, n, seed):
    cfg = SimulationConfig(d=d, D=d, design="iid", n_rows=n, n_regimes=10, rows_per_regime=n // 10)
    train, _ = simulate(cfg, seed)
    return Dataset.from_arrays(train.z, train.targets, train.values, z=train.z, weights=train.weights)


@pytest.mark.parametrize("method", ["collapsed", "mcmc"])
def test_identity_decoder_needs_d_equal_D_before_work(method):
    train, _ = simulate(SimulationConfig(d=3, D=10, n_pairs=40, n_regimes=4, rows_per_regime=10), 0)
    with pytest.raises(ValueError, match="decoder='identity' needs x to be the latents themselves"):
        fit(train, method, config={"decoder": "identity"}, progress=False)


def test_identity_with_pairs_or_latent_values_is_refused():
    with pytest.raises(ValueError, match="supports neither use_pairs"):
        METHODS["collapsed"].config(decoder="identity", use_pairs=True)


def test_identity_statistics_handle_missing_targets_values():
    """NaN values where nothing is targeted are ignored; the density matches the SCM's log_prob."""
    data = observed(3, 40, 2)
    W, sigma = np.asarray(data.weights), np.array([1.0, 1.5, 0.8])
    with jax.enable_x64(True):
        got = identity_log_likelihood(identity_stats(jnp.asarray(data.x, jnp.float64), data.targets, data.values),
                                      jnp.asarray(W), jnp.asarray(sigma), 0.1)
        ref = InterventionalLinearGaussian(jnp.asarray(W), jnp.asarray(sigma), jnp.asarray(data.targets, jnp.float64),
                                           jnp.asarray(data.values, jnp.float64), 0.1).log_prob(
            jnp.asarray(data.x, jnp.float64)).sum()
    np.testing.assert_allclose(got, ref, rtol=1e-10)


@pytest.fixture(scope="module")
def identity_fit():
    data = observed(4, 400, 0)
    return data, fit(data, "collapsed", config={"decoder": "identity", "steps": 300, "num_restarts": 1}, progress=False)


def test_collapsed_identity_recovers_observed_scm(identity_fit):
    data, post = identity_fit
    assert post.decoder == {}
    np.testing.assert_allclose(post.latent_mean, data.x)
    assert np.all(post.latent_scale == 0)
    assert expected_shd(post.W, data.weights) <= 0.5
    np.testing.assert_allclose(post.W.mean(0), data.weights, atol=0.35)  # 400 rows (73 free for node 1), 300 steps


def test_identity_log_likelihood_group_is_the_scm_density(identity_fit):
    """Per row (no pairs), each draw's SCM density of x = z; -mean logmeanexp is heldout_nll; az.loo runs."""
    import arviz as az

    data, post = identity_fit
    group = post.to_arviz(data)["log_likelihood"]
    assert group["x"].dims == ("chain", "draw", "obs") and group["x"].shape == (1, post.num_draws, data.N)
    ll = group["x"].values[0]
    with jax.enable_x64(True):
        ref = InterventionalLinearGaussian(jnp.asarray(post.W[3], jnp.float64), jnp.asarray(post.noise_scales[3], jnp.float64),
                                           jnp.asarray(data.targets, jnp.float64), jnp.asarray(data.values, jnp.float64),
                                           post.tau).log_prob(jnp.asarray(data.x, jnp.float64))
    np.testing.assert_allclose(ll[3], np.asarray(ref), rtol=1e-9)
    lme = np.logaddexp.reduce(ll, axis=0) - np.log(len(ll))
    np.testing.assert_allclose(-lme.mean(), post.heldout_nll(data), rtol=1e-12)
    assert np.isfinite(az.loo(post.to_arviz(data)).elpd)


def test_heldout_nll_of_observed_variables_is_the_scm_density():
    """With an identity decoder the held-out NLL is -mean_n log mean_s p(x_n | W_s, sigma_s): one draw
    makes it the SCM's own negative log-density per row."""
    from latentscm.inference import Posterior

    data = observed(3, 40, 1)
    W, sigma = np.asarray(data.weights)[None], np.array([[1.0, 1.2, 0.7]])
    post = Posterior(method="collapsed", W=W, noise_scales=sigma, orders=np.array([[0, 1, 2]]), decoder=IdentityDecoder(),
                     latent_mean=data.x, latent_scale=np.zeros_like(data.x), elbo=np.zeros(0), seconds=0.0, tau=0.1)
    with jax.enable_x64(True):
        ref = InterventionalLinearGaussian(jnp.asarray(W[0]), jnp.asarray(sigma[0]), jnp.asarray(data.targets, jnp.float64),
                                           jnp.asarray(data.values, jnp.float64), 0.1).log_prob(
            jnp.asarray(data.x, jnp.float64))
    np.testing.assert_allclose(post.heldout_nll(data), -float(np.mean(np.asarray(ref))), rtol=1e-6)  # draws kept in float32
