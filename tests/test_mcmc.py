"""mcmc: validation before work, reference densities, the order moves, the kernel under numpyro.infer.MCMC, and
exactness against enumeration."""

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
from latentscm.inference.laplace import laplace
from latentscm.inference.mcmc_kernel import OrderNUTS, pair_index, relocation
from latentscm.inference.mcmc_exact import exact_order_posterior, order_total_variation
from latentscm.models.observed import identity_log_likelihood, identity_stats
from latentscm.metrics import structure_metrics
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
        ({"mass_matrix": "unit"}, "mass_matrix must be 'laplace' or 'adapt'"),
        ({"dense_mass": True}, "dense_mass applies to mass_matrix='adapt'"),
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


def _weights(l, order):
    d = len(order)
    return np.asarray(weights_from_order(tril_to_matrix(jnp.asarray(l), d), jnp.eye(d)[np.asarray(order)]))


def test_relocation_carries_pair_weights_and_is_undone_by_the_reverse_move():
    d = 5
    rng = np.random.default_rng(0)
    l = rng.normal(size=d * (d - 1) // 2)
    order = np.array([2, 0, 4, 3, 1])
    W = _weights(l, order)
    for a, b in itertools.permutations(range(d), 2):
        new_order, idx = (np.asarray(v) for v in relocation(jnp.asarray(order), a, b))
        moving = order[a]
        expected = list(np.delete(order, a))
        expected.insert(b, moving)
        np.testing.assert_array_equal(new_order, expected)
        W2 = _weights(l[idx], new_order)
        np.testing.assert_allclose(W2 + W2.T, W + W.T)  # every node pair keeps its weight
        passed = set(order[min(a, b):max(a, b) + 1]) - {moving}
        for i, j in itertools.permutations(range(d), 2):  # only edges to the passed nodes reverse
            flips = moving in (i, j) and (j if i == moving else i) in passed
            assert W2[i, j] == pytest.approx(W[j, i] if flips else W[i, j])
        back_order, back = (np.asarray(v) for v in relocation(jnp.asarray(new_order), b, a))
        np.testing.assert_array_equal(back_order, order)
        np.testing.assert_array_equal(idx[back], np.arange(len(l)))
        pairs = [np.asarray(pair_index(jnp.asarray(o), {"w": 0}, len(l), ["w"])) for o in (order, new_order)]
        np.testing.assert_array_equal(pairs[1], pairs[0][idx])  # the mass matrix's coordinates move along


def test_laplace_finds_the_mode_and_covariance_of_a_gaussian():
    rng = np.random.default_rng(0)
    B = rng.normal(size=(4, 4))
    prec, mode = B @ B.T + np.eye(4), rng.normal(size=4)
    with jax.enable_x64(True):
        potential = lambda q: 0.5 * (q - mode) @ jnp.asarray(prec) @ (q - mode) + 0.1 * jnp.sum((q - mode) ** 4)  # noqa: E731
        q, V, w = (np.asarray(a) for a in laplace(potential, jnp.zeros(4)))
    np.testing.assert_allclose(q, mode, atol=1e-6)
    np.testing.assert_allclose((V * w) @ V.T, prec, rtol=1e-6)


def _kernel_model(stats, *, order):
    """A tiny target for the kernel: identity model, fixed noise, known closed-form order posterior."""
    from numpyro import handlers

    from latentscm.models.observed import identity_model
    from latentscm.models.priors import parse_priors

    with handlers.condition(data={"noise_scale": jnp.ones(stats.gram.shape[-1])}):
        identity_model(stats, priors=parse_priors(NORMAL_EDGES), tau=0.1, order=order)


@pytest.mark.parametrize("mass", ["laplace", "adapt"])
def test_order_nuts_kernel_under_numpyro_mcmc_matches_enumeration(mass):
    """OrderNUTS driven by numpyro.infer.MCMC (2 chains, sequential) leaves the exact posterior invariant:
    its order frequencies match the enumerated order posterior and, given the order, the edge weights have
    the closed-form Bayesian-regression mean."""
    from numpyro.infer import MCMC

    d = 3
    data = chain_data(d, 24, 1)
    orders, probs = exact_order_posterior(data.x, data.targets, data.values, 1.0, np.ones(d), 0.1)
    with jax.enable_x64(True):
        stats = identity_stats(jnp.asarray(data.x, jnp.float64), data.targets, data.values)
        init = {"edge_weight": jnp.zeros((2, 3)), "order": jnp.asarray([[0, 1, 2], [2, 1, 0]], jnp.int32)}
        mcmc = MCMC(OrderNUTS(_kernel_model, mass=mass), num_warmup=300, num_samples=2500, num_chains=2,
                    chain_method="sequential", progress_bar=False)
        mcmc.run(jax.random.PRNGKey(0), stats, init_params=init, extra_fields=("moves", "diverging"))
        draws = mcmc.get_samples()
    assert draws["W"].shape == (5000, d, d) and draws["order"].shape == (5000, d)
    assert mcmc.get_samples(group_by_chain=True)["W"].shape[0] == 2
    assert order_total_variation(np.asarray(draws["order"]), orders, probs) <= 0.05
    moves = np.asarray(mcmc.get_extra_fields()["moves"]).sum(0)
    assert moves[1] + moves[3] == 5000 * d and 0 < moves[0] + moves[2] < moves[1] + moves[3]
    # given the most probable order, W's entries have the Bayesian linear regression posterior mean
    best = orders[np.argmax(probs)]
    keep = np.all(np.asarray(draws["order"]) == best, axis=1)
    z, free = np.asarray(data.x, np.float64), data.targets == 0
    for p in range(1, d):
        j, parents = best[p], list(best[:p])
        X, y = z[free[:, j]][:, parents], z[free[:, j], j]
        mean = np.linalg.solve(X.T @ X + np.eye(p), X.T @ y)
        got = np.asarray(draws["W"])[keep][:, parents, j].mean(0)
        sd = np.sqrt(np.diag(np.linalg.inv(X.T @ X + np.eye(p))))
        assert np.all(np.abs(got - mean) < 0.15 * sd), (got, mean, sd)


def test_order_nuts_needs_init_params():
    from numpyro.infer import MCMC

    mcmc = MCMC(OrderNUTS(_kernel_model), num_warmup=1, num_samples=1, progress_bar=False)
    with pytest.raises(ValueError, match="OrderNUTS needs init_params"):
        mcmc.run(jax.random.PRNGKey(0), None)
    with pytest.raises(ValueError, match="mass must be one of"):
        OrderNUTS(_kernel_model, mass="unit")


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
        "num_chains": num_chains, "order_init": "random"})
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
    config = {"decoder": "identity", "num_warmup": 30, "num_samples": 20, "num_chains": 2}
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
def test_laplace_and_adapted_mass_target_the_same_linear_decoder_posterior():
    """The default Laplace mass matrix and NumPyro's adapted diagonal one (a different kernel, same target)
    agree on a small linear-decoder problem with a weakly identified posterior."""
    train, _ = simulate(SimulationConfig(d=2, D=3, n_pairs=40, n_regimes=4, rows_per_regime=10, obs_noise=0.5,
                                         n_test_regimes=1), 3)
    cfg = {"num_warmup": 500, "num_samples": 1500, "known_order": tuple(int(i) for i in topological_order(train.weights))}
    lap = fit(train, "mcmc", config=cfg, seed=0, progress=False)
    ada = fit(train, "mcmc", config={**cfg, "mass_matrix": "adapt", "max_tree_depth": 10}, seed=1, progress=False)
    for name in ("W", "noise_scales"):
        a, b = getattr(lap, name).reshape(len(lap.W), -1), getattr(ada, name).reshape(len(ada.W), -1)
        sd = np.sqrt((a.var(0) + b.var(0)) / 2) + 1e-12
        assert np.all(np.abs(a.mean(0) - b.mean(0)) < 0.25 * sd + 1e-9), name
        np.testing.assert_allclose(a.std(0), b.std(0), rtol=0.25, atol=1e-9)
    np.testing.assert_allclose(lap.decoder["obs_scale"].mean(), ada.decoder["obs_scale"].mean(), rtol=0.05)
