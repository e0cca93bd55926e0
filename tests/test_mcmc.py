"""mcmc: validation before work, reference densities, the order moves, and exactness against enumeration."""

import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.stats import multivariate_normal

from latentscm.data import SimulationConfig, simulate
from latentscm.data.scm import topological_order
from latentscm.data.simulate import observed_chain as chain_data
from latentscm.inference import Posterior, fit
from latentscm.inference.mcmc_kernel import reversal_index
from latentscm.inference.mcmc_exact import exact_order_posterior, order_total_variation
from latentscm.inference.mcmc_gibbs import gibbs_latents, sample_decoder
from latentscm.models.observed import identity_log_likelihood, identity_stats
from latentscm.metrics import structure_metrics
from latentscm.models.collapsed import latent_posterior
from latentscm.models.scm import InterventionalLinearGaussian, tril_to_matrix, weights_from_order

NORMAL_EDGES = {"edge_weight": {"dist": "normal", "scale": 1.0}}


@pytest.mark.parametrize(
    "config, message",
    [
        ({"decoder": "mlp"}, "decoder must be 'linear' or 'identity'"),
        ({"num_chains": 0}, "num_chains must be an integer >= 1"),
        ({"swap_prob": 1.5}, "swap_prob"),
        ({"chain_method": "threads"}, "chain_method"),
        ({"fixed_noise_scales": (1.0, -1.0, 1.0)}, "fixed_noise_scales must be positive"),
        ({"num_sample": 10}, "unknown setting(s) ['num_sample']"),
        ({"decoder_update": "slice"}, "decoder_update must be 'gibbs' or 'nuts'"),
    ],
)
def test_mcmc_rejects_bad_settings_before_work(config, message):
    data = chain_data(3, 12, 0)
    with pytest.raises(ValueError) as err:
        fit(data, "mcmc", config=config, progress=False)
    assert message in str(err.value)


def test_mcmc_rejects_bad_data_shapes_before_work():
    train, _ = simulate(SimulationConfig(d=3, D=10, n_pairs=40, n_regimes=4, rows_per_regime=10), 0)
    with pytest.raises(ValueError, match="needs x to be the latents themselves"):
        fit(train, "mcmc", config={"decoder": "identity"}, progress=False)
    with pytest.raises(ValueError, match="fixed_noise_scales needs 3 values"):
        fit(train, "mcmc", config={"fixed_noise_scales": (1.0, 1.0)}, progress=False)
    with pytest.raises(ValueError, match="permutation of 0..2"):
        fit(train, "mcmc", config={"known_order": (0, 1, 1)}, progress=False)


def test_gibbs_decoder_update_needs_normal_decoder_priors_before_work():
    train, _ = simulate(SimulationConfig(d=3, D=10, n_pairs=40, n_regimes=4, rows_per_regime=10), 0)
    with pytest.raises(ValueError, match="decoder_update='gibbs' needs a normal prior on 'decoder_weight'"):
        fit(train, "mcmc", priors={"decoder_weight": {"dist": "laplace", "scale": 1.0}}, progress=False)


def _moments(draws):
    draws = np.asarray(draws).reshape(len(draws), -1)
    return draws.mean(0), np.cov(draws, rowvar=False)


def test_gibbs_latents_matches_exact_latent_posterior():
    """Draws of z given everything have the closed-form posterior's mean and covariance (per row)."""
    rng = np.random.default_rng(0)
    d, D, n = 3, 4, 3
    W = np.array([[0, 0.8, 0], [0, 0, -0.6], [0, 0, 0]])
    A, b, sigma = rng.normal(size=(d, D)), rng.normal(size=D), np.array([1.0, 0.7, 1.3])
    x = rng.normal(size=(n, D))
    t = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 1]], np.int8)
    v = np.array([[0, 0, 0], [1.5, 0, 0], [0, -1.0, 0.5]])
    args = (jnp.asarray(W), jnp.asarray(sigma), jnp.asarray(A), jnp.asarray(b), 0.5, 0.1)
    with jax.enable_x64(True):
        draw = jax.jit(jax.vmap(lambda k: gibbs_latents(k, jnp.asarray(x), jnp.asarray(t), jnp.asarray(v), *args)))
        z = np.asarray(draw(jax.random.split(jax.random.PRNGKey(0), 40000)))
        mean, cov = (np.asarray(a) for a in latent_posterior(jnp.asarray(x), jnp.asarray(t), jnp.asarray(v), *args))
    for i in range(n):
        m, c = _moments(z[:, i])
        se = np.sqrt(np.diag(cov[i]) / len(z))
        assert np.all(np.abs(m - mean[i]) < 5 * se)
        np.testing.assert_allclose(c, cov[i], atol=0.03 * np.abs(cov[i]).max())


def test_sample_decoder_matches_bayesian_regression():
    """Decoder draws given z have the conjugate posterior's moments (computed here in numpy)."""
    rng = np.random.default_rng(1)
    n, d, D, s = 30, 2, 3, 0.4
    z = rng.normal(size=(n, d))
    x = z @ rng.normal(size=(d, D)) + 0.3 + s * rng.normal(size=(n, D))
    F = np.c_[z, np.ones(n)]
    prec0 = np.array([1 / 2.0**2, 1 / 2.0**2, 1 / 5.0**2])
    cov = np.linalg.inv(F.T @ F / s**2 + np.diag(prec0))
    mean = cov @ (F.T @ x / s**2 + (prec0 * np.array([0.0, 0.0, 1.0]))[:, None])
    with jax.enable_x64(True):
        draw = jax.jit(jax.vmap(lambda k: sample_decoder(k, jnp.asarray(z), jnp.asarray(x), s, (0.0, 2.0), (1.0, 5.0))))
        A, b = (np.asarray(a) for a in draw(jax.random.split(jax.random.PRNGKey(0), 40000)))
    coef = np.concatenate([A, b[:, None]], axis=1)  # (S, d + 1, D)
    for j in range(D):
        m, c = _moments(coef[:, :, j])
        assert np.all(np.abs(m - mean[:, j]) < 5 * np.sqrt(np.diag(cov) / len(coef)))
        np.testing.assert_allclose(c, cov, atol=0.03 * np.abs(cov).max())


def test_identity_log_likelihood_matches_scm_log_prob():
    data = chain_data(4, 30, 1)
    rng = np.random.default_rng(0)
    W = np.triu(rng.normal(size=(4, 4)), 1)[np.ix_([2, 0, 3, 1], [2, 0, 3, 1])]
    sigma = rng.uniform(0.5, 1.5, 4)
    with jax.enable_x64(True):
        stats = identity_stats(jnp.asarray(data.x, jnp.float64), data.targets, data.values)
        got = identity_log_likelihood(stats, jnp.asarray(W), jnp.asarray(sigma), 0.1)
        ref = InterventionalLinearGaussian(jnp.asarray(W), jnp.asarray(sigma), jnp.asarray(data.targets, jnp.float64),
                                           jnp.asarray(data.values, jnp.float64), 0.1).log_prob(
            jnp.asarray(data.x, jnp.float64)).sum()
    np.testing.assert_allclose(got, ref, rtol=1e-10)


def test_adjacent_reversal_is_an_involution_that_reverses_one_edge():
    d = 4
    idx = reversal_index(d)
    rng = np.random.default_rng(0)
    l = rng.normal(size=d * (d - 1) // 2)
    order = np.array([2, 0, 3, 1])
    W = np.asarray(weights_from_order(tril_to_matrix(jnp.asarray(l), d), jnp.eye(d)[order]))
    for k in range(d - 1):
        np.testing.assert_array_equal(idx[k][idx[k]], np.arange(len(l)))  # involution
        new_order = order.copy()
        new_order[[k, k + 1]] = order[[k + 1, k]]
        W2 = np.asarray(weights_from_order(tril_to_matrix(jnp.asarray(l[idx[k]]), d), jnp.eye(d)[new_order]))
        i, j = order[k], order[k + 1]
        expected = W.copy()
        expected[j, i], expected[i, j] = W[i, j], 0.0
        np.testing.assert_allclose(W2, expected)


def test_exact_order_posterior_matches_brute_force_gaussian():
    """p(z | order) against the joint Gaussian of each node's free rows under the Normal weight prior."""
    data = chain_data(3, 9, 2)
    z, T = np.asarray(data.x, np.float64), data.targets
    s, sigma = 0.7, np.array([1.0, 0.8, 1.2])
    orders, probs = exact_order_posterior(z, T, data.values, s, sigma, 0.1)
    logp = []
    for order in orders:
        total = 0.0
        for p, j in enumerate(order):
            rows = T[:, j] == 0
            X = z[rows][:, list(order[:p])]
            cov = sigma[j] ** 2 * np.eye(rows.sum()) + s**2 * X @ X.T
            total += multivariate_normal(np.zeros(rows.sum()), cov).logpdf(z[rows, j])
        logp.append(total)
    ref = np.exp(np.array(logp) - max(logp))
    np.testing.assert_allclose(probs, ref / ref.sum(), rtol=1e-8)
    assert [tuple(o) for o in orders] == list(itertools.permutations(range(3)))


def _exact_check(d, seed, num_samples, num_chains):
    data = chain_data(d, 24, seed)
    orders, probs = exact_order_posterior(data.x, data.targets, data.values, 1.0, np.ones(d), 0.1)
    assert np.sort(probs)[-2] > 0.1  # not degenerate: the check has teeth
    post = fit(data, "mcmc", priors=NORMAL_EDGES, seed=0, progress=False, config={
        "decoder": "identity", "fixed_noise_scales": (1.0,) * d, "num_warmup": 300, "num_samples": num_samples,
        "num_chains": num_chains, "order_init": "random", "chunk": 500})
    tv = order_total_variation(post.orders, orders, probs)
    assert tv <= 0.05, (tv, post.info)
    return data, post


def test_mcmc_order_frequencies_match_exact_posterior_d3():
    data, post = _exact_check(3, 1, 1000, 4)
    assert isinstance(post, Posterior) and post.method == "mcmc"
    assert post.W.shape == (4000, 3, 3) and post.orders.shape == (4000, 3)
    assert post.decoder == {} and post.info["divergences"] == 0
    assert 0 < post.info["order_acceptance"] < 1
    np.testing.assert_allclose(post.latent_mean, data.x)  # z is observed
    assert np.all(post.latent_scale == 0)
    tree = post.to_arviz()
    assert tree["posterior"]["W"].dims == ("chain", "draw", "parent", "child")
    assert tree["posterior"].sizes["chain"] == 4 and "optimization" not in tree.children
    assert post.info["max_rhat_W"] < 1.05


def test_sequential_chains_and_known_order():
    data = chain_data(3, 24, 1)
    config = {"decoder": "identity", "num_warmup": 30, "num_samples": 20, "num_chains": 2, "chunk": 50}
    post = fit(data, "mcmc", config={**config, "chain_method": "sequential"}, seed=0, progress=False)
    assert post.W.shape == (40, 3, 3) and post.noise_scales.shape == (40, 3) and np.all(post.noise_scales > 0)
    known = fit(data, "mcmc", config={**config, "known_order": (2, 0, 1)}, seed=0, progress=False)
    assert np.all(known.orders == [2, 0, 1]) and np.isnan(known.info["order_acceptance"])
    assert np.all(known.W[:, 0, 2] == 0) and np.all(known.W[:, 1, 0] == 0)  # 2 -> 0 -> 1 only


@pytest.mark.slow
def test_mcmc_order_frequencies_match_exact_posterior_d4():
    _exact_check(4, 0, 2000, 4)


@pytest.mark.slow
def test_mcmc_recovers_seeded_collapsed_scm():
    train, test = simulate(SimulationConfig(d=3, D=10, n_pairs=400, n_regimes=8, rows_per_regime=50,
                                            n_test_regimes=3), 0)
    post = fit(train, "mcmc", config={"num_warmup": 200, "num_samples": 200}, seed=0, progress=False)
    m = structure_metrics(post.W, train.weights, z_pred=post.latent_mean, z_true=train.z)
    assert m["e_shd"] <= 0.5 and m["mcc"] >= 0.95
    assert post.info["max_rhat_W"] <= 1.05
    assert post.decoder["A"].shape == (800, 3, 10) and np.isfinite(post.heldout_nll(test))


@pytest.mark.slow
def test_gibbs_and_nuts_decoder_updates_target_the_same_posterior():
    """The data-augmentation sampler (conjugate decoder draws) and NUTS on the fully collapsed model
    agree on a small linear-decoder problem with a weakly identified posterior."""
    train, _ = simulate(SimulationConfig(d=2, D=3, n_pairs=40, n_regimes=4, rows_per_regime=10, obs_noise=0.5,
                                         n_test_regimes=1), 3)
    cfg = {"num_warmup": 300, "num_samples": 1500, "chunk": 600,
           "known_order": tuple(int(i) for i in topological_order(train.weights))}
    gibbs = fit(train, "mcmc", config={**cfg, "decoder_update": "gibbs"}, seed=0, progress=False)
    nuts = fit(train, "mcmc", config={**cfg, "decoder_update": "nuts"}, seed=1, progress=False)
    for name in ("W", "noise_scales"):
        a, b = getattr(gibbs, name).reshape(len(gibbs.W), -1), getattr(nuts, name).reshape(len(nuts.W), -1)
        sd = np.sqrt((a.var(0) + b.var(0)) / 2) + 1e-12
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 0.25 * sd + 1e-9), name
        np.testing.assert_allclose(a.std(0), b.std(0), rtol=0.25, atol=1e-9)
    np.testing.assert_allclose(gibbs.decoder["obs_scale"].mean(), nuts.decoder["obs_scale"].mean(), rtol=0.05)
