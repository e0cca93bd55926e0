"""Densities against scipy and brute force; permutations; priors."""

import itertools
import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from scipy.stats import multivariate_normal

from latentscm.models.collapsed import (
    collapsed_log_likelihood,
    collapsed_model,
    latent_posterior,
    row_log_likelihood,
    sufficient_stats,
)
from latentscm.models.permutation import (
    GumbelSinkhornPermutation,
    UniformPermutation,
    hungarian,
    log_bethe_permanent,
    matrix_from_order,
    order_from_matrix,
    permutation_matrix,
    sinkhorn,
)
from latentscm.models.priors import PriorError, parse_priors
from latentscm.models.scm import InterventionalLinearGaussian, solve_scm, tril_to_matrix, weights_from_order

TAU = 0.1


@pytest.fixture(autouse=True)
def _x64():
    with jax.enable_x64(True):
        yield


@pytest.fixture
def scm():
    # chain 1 -> 2 -> 0 plus 1 -> 0, in a node order that is not the index order
    W = np.zeros((3, 3))
    W[1, 2], W[2, 0], W[1, 0] = 1.5, -0.7, 0.6
    return jnp.asarray(W), jnp.asarray([1.0, 1.3, 0.8]), np.array([1, 2, 0])


@pytest.fixture
def rows():
    rng = np.random.default_rng(0)
    N, d = 30, 3
    T = (rng.random((N, d)) < 0.35).astype(np.int8)
    V = rng.normal(size=(N, d)) * 2 * T
    return T, V


def _moments(W, sigma, m, v):
    """Closed-form mean and covariance of z under mask m, by explicit inversion (reference)."""
    d = len(m)
    C = np.linalg.inv(np.eye(d) - np.asarray(W) * (1 - m)[None, :])
    S = np.where(m > 0, TAU**2, np.asarray(sigma) ** 2)
    return (m * v) @ C, C.T @ np.diag(S) @ C


def test_scm_log_prob_matches_scipy(scm, rows):
    W, sigma, _ = scm
    T, V = rows
    z = np.random.default_rng(1).normal(size=T.shape)
    lp = InterventionalLinearGaussian(W, sigma, T, V, TAU).log_prob(jnp.asarray(z))
    ref = [multivariate_normal(*_moments(W, sigma, T[n], V[n])).logpdf(z[n]) for n in range(len(z))]
    np.testing.assert_allclose(lp, ref, rtol=1e-8)


def test_scm_mean_and_covariance_closed_form(scm, rows):
    W, sigma, order = scm
    T, V = rows
    d = InterventionalLinearGaussian(W, sigma, T, V, TAU, order=jnp.asarray(order))
    for n in (0, 5, 11):
        mu, cov = _moments(W, sigma, T[n], V[n])
        np.testing.assert_allclose(d.mean[n], mu, atol=1e-10)
        np.testing.assert_allclose(d.covariance()[n], cov, atol=1e-10)


def test_sampler_moments(scm):
    W, sigma, order = scm
    m, v = np.array([0, 1, 0]), np.array([0.0, 2.0, 0.0])
    z = InterventionalLinearGaussian(W, sigma, m, v, TAU, order=jnp.asarray(order)).sample(
        jax.random.PRNGKey(0), (200_000,))
    mu, cov = _moments(W, sigma, m, v)
    np.testing.assert_allclose(z.mean(0), mu, atol=0.02)
    np.testing.assert_allclose(np.cov(np.asarray(z).T), cov, atol=0.05)


def test_triangular_solve_equals_general_solve_and_ancestral_loop(scm, rows):
    W, sigma, order = scm
    T, V = rows
    u = np.random.default_rng(2).normal(size=T.shape)
    z_tri = solve_scm(W, jnp.asarray(T), jnp.asarray(u), order=jnp.asarray(order))
    z_gen = solve_scm(W, jnp.asarray(T), jnp.asarray(u))
    z_loop = np.zeros_like(u)
    for j in order:  # naive ancestral loop
        z_loop[:, j] = u[:, j] + (1 - T[:, j]) * (z_loop @ np.asarray(W)[:, j])
    np.testing.assert_allclose(z_tri, z_loop, atol=1e-10)
    np.testing.assert_allclose(z_gen, z_loop, atol=1e-10)


def _decoder(D=4, seed=3):
    rng = np.random.default_rng(seed)
    return jnp.asarray(rng.normal(size=(3, D))), jnp.asarray(rng.normal(size=D)), 0.3


def test_collapsed_likelihood_matches_brute_force_gaussian(scm, rows):
    W, sigma, _ = scm
    T, V = rows
    A, b, s = _decoder()
    x = np.random.default_rng(4).normal(size=(len(T), A.shape[1])) * 3
    stats = jax.tree.map(jnp.asarray, sufficient_stats(x, T, V))
    total = collapsed_log_likelihood(stats, W, sigma, A, b, s, TAU)
    ref = []
    for n in range(len(x)):
        mu, cov = _moments(W, sigma, T[n], V[n])
        ref.append(multivariate_normal(mu @ A + b, A.T @ cov @ A + s**2 * np.eye(A.shape[1])).logpdf(x[n]))
    np.testing.assert_allclose(total, np.sum(ref), rtol=1e-7)
    per_row = row_log_likelihood(jnp.asarray(x), jnp.asarray(T), jnp.asarray(V), W, sigma, A, b, s, TAU)
    np.testing.assert_allclose(per_row, ref, rtol=1e-7)


def test_latent_posterior_is_gaussian_conditioning(scm, rows):
    W, sigma, _ = scm
    T, V = rows
    A, b, s = _decoder()
    x = np.random.default_rng(5).normal(size=(len(T), A.shape[1]))
    mean, cov = latent_posterior(jnp.asarray(x), jnp.asarray(T), jnp.asarray(V), W, sigma, A, b, s, TAU)
    for n in (0, 7):
        mu, S = _moments(W, sigma, T[n], V[n])
        Sxz, Sxx = S @ A, A.T @ S @ A + s**2 * np.eye(A.shape[1])
        gain = np.linalg.solve(Sxx, Sxz.T)
        np.testing.assert_allclose(mean[n], mu + (x[n] - mu @ A - b) @ gain, atol=1e-10)
        np.testing.assert_allclose(cov[n], S - Sxz @ gain, atol=1e-10)


def test_weights_from_order_places_edges_by_position():
    d = 4
    order = np.array([2, 0, 3, 1])
    l_vec = jnp.arange(1.0, 7.0)
    L = tril_to_matrix(l_vec, d)
    W = np.asarray(weights_from_order(L, matrix_from_order(jnp.asarray(order))))
    pos = np.argsort(order)
    for i, j in itertools.product(range(d), repeat=2):
        expected = L[pos[j], pos[i]] if pos[i] < pos[j] else 0.0
        assert W[i, j] == expected
    assert np.all(np.linalg.matrix_power(np.abs(W) > 0, d) == 0)  # nilpotent: acyclic


def _exact_log_permanent(M):
    d = len(M)
    return np.log(sum(np.prod([M[i, p[i]] for i in range(d)]) for p in itertools.permutations(range(d))))


def test_bethe_permanent_bounds_exact_permanent():
    rng = np.random.default_rng(0)
    for _ in range(5):
        log_m = rng.normal(size=(4, 4))
        bethe = float(log_bethe_permanent(jnp.asarray(log_m), n_iters=200))
        exact = _exact_log_permanent(np.exp(log_m))
        assert bethe <= exact + 1e-6  # Bethe is a lower bound ...
        assert exact <= bethe + 0.5 * 4 * np.log(2) + 1e-6  # ... within sqrt(2)^d
    # near-deterministic weights: Bethe is almost exact
    log_m = 8.0 * np.eye(4)
    assert abs(float(log_bethe_permanent(jnp.asarray(log_m))) - _exact_log_permanent(np.exp(log_m))) < 1e-2


def test_hungarian_finds_max_weight_permutation():
    scores = np.random.default_rng(1).normal(size=(3, 4, 4))
    P = np.asarray(hungarian(jnp.asarray(scores)))
    for s, p in zip(scores, P):
        best = max(itertools.permutations(range(4)), key=lambda q: sum(s[i, q[i]] for i in range(4)))
        np.testing.assert_array_equal(p, np.eye(4)[list(best)])


def test_hungarian_matches_scipy_assignment():
    """The in-graph assignment (shortest augmenting paths) against scipy's linear_sum_assignment: the same
    assignment for continuous scores of any size and batch shape, an optimal one where integer scores tie."""
    from scipy.optimize import linear_sum_assignment

    rng = np.random.default_rng(4)
    for d, batch in ((1, (3,)), (2, (5,)), (5, (2, 4)), (9, (6,)), (30, (2,)), (64, ())):
        scores = rng.normal(size=batch + (d, d)) * rng.choice([0.01, 1.0, 100.0], size=batch + (1, 1))
        P = np.asarray(jax.jit(hungarian)(jnp.asarray(scores)))
        assert P.shape == scores.shape
        for s, p in zip(scores.reshape(-1, d, d), P.reshape(-1, d, d)):
            np.testing.assert_array_equal(p, np.eye(d)[linear_sum_assignment(-s)[1]])
    ties = rng.integers(0, 3, size=(50, 6, 6)).astype(float)
    for s, p in zip(ties, np.asarray(hungarian(jnp.asarray(ties)))):
        assert bool(permutation_matrix(jnp.asarray(p)))
        np.testing.assert_allclose((s * p).sum(), s[linear_sum_assignment(-s)].sum())
    # under vmap (particles, restarts) and with float32 scores, as in the SVI step
    s32 = jnp.asarray(rng.normal(size=(3, 7, 7)), jnp.float32)
    np.testing.assert_array_equal(jax.vmap(hungarian)(s32), hungarian(s32))
    assert hungarian(s32).dtype == jnp.float32


def test_sinkhorn_is_doubly_stochastic():
    p = sinkhorn(jnp.asarray(np.random.default_rng(2).normal(size=(5, 5))), n_iters=100)
    np.testing.assert_allclose(p.sum(0), 1, atol=1e-6)
    np.testing.assert_allclose(p.sum(1), 1, atol=1e-6)


def _log_domain_sinkhorn(log_alpha, n_iters):
    """The reference: every round in the log domain (as sinkhorn was written before its linear-domain rounds)."""
    from jax.scipy.special import logsumexp

    la = log_alpha
    for _ in range(n_iters):
        la = la - logsumexp(la, axis=-1, keepdims=True)
        la = la - logsumexp(la, axis=-2, keepdims=True)
    return jnp.exp(la)


def _log_domain_bethe(log_m, n_iters=30, tol=1e-6):
    """The reference Bethe permanent and its fixed point gamma (its gradient, by the envelope theorem): the
    fixed-point rounds by log-domain Sinkhorn of ``log M - log(1 - gamma)``."""
    gamma = _log_domain_sinkhorn(log_m, 10)
    for _ in range(n_iters):
        new = _log_domain_sinkhorn(log_m - jnp.log1p(-jnp.clip(gamma, 0.0, 1.0 - 1e-6)), 10)
        done = float(jnp.max(jnp.abs(new - gamma))) <= tol
        gamma = new
        if done:
            break
    g = jnp.clip(gamma, 1e-12, 1.0 - 1e-6)
    return jnp.sum(gamma * log_m - g * jnp.log(g) + (1.0 - g) * jnp.log1p(-g), axis=(-2, -1)), gamma


@pytest.mark.parametrize("spread", [0.3, 3.0, 300.0])
def test_sinkhorn_matches_log_domain_value_and_gradient(spread):
    """Linear-domain rounds after the first: the log-domain function and gradient, also for log-weights spread
    far beyond exp's range (float32: 88) and with a temperature of 0.2, as in the guide's relaxed samples."""
    rng = np.random.default_rng(5)
    log_alpha = jnp.asarray(spread * rng.normal(size=(3, 6, 6)) / 0.2)
    target = jnp.asarray(rng.normal(size=(3, 6, 6)))
    for n in (1, 2, 20):
        np.testing.assert_allclose(sinkhorn(log_alpha, n), _log_domain_sinkhorn(log_alpha, n), atol=1e-12)
        grad = jax.grad(lambda la: jnp.sum(sinkhorn(la, n) * target))(log_alpha)
        ref = jax.grad(lambda la: jnp.sum(_log_domain_sinkhorn(la, n) * target))(log_alpha)
        np.testing.assert_allclose(grad, ref, atol=1e-10)
    p32 = sinkhorn(log_alpha.astype(jnp.float32), 20)
    assert p32.dtype == jnp.float32 and bool(jnp.all(jnp.isfinite(p32)))
    np.testing.assert_allclose(p32, _log_domain_sinkhorn(log_alpha, 20), atol=1e-5)


def test_bethe_permanent_matches_log_domain_fixed_point():
    """The linear-domain fixed-point rounds give the log-domain rounds' value and gradient (the fixed point
    gamma), also for log-weights spread beyond float32's exp range, and in float32."""
    rng = np.random.default_rng(6)
    for log_m in (rng.normal(size=(4, 5, 5)), 8.0 * np.eye(5)[rng.permutation(5)] + rng.normal(size=(5, 5)),
                  40.0 * rng.normal(size=(2, 7, 7))):
        log_m = jnp.asarray(log_m)
        value, gamma = _log_domain_bethe(log_m)
        np.testing.assert_allclose(log_bethe_permanent(log_m), value, rtol=1e-9)
        np.testing.assert_allclose(jax.grad(lambda lm: jnp.sum(log_bethe_permanent(lm)))(log_m), gamma, atol=1e-9)
        np.testing.assert_allclose(log_bethe_permanent(log_m.astype(jnp.float32)), value, rtol=1e-4)


def test_gumbel_sinkhorn_straight_through():
    logits = jnp.asarray(np.random.default_rng(3).normal(size=(4, 4)))
    q = GumbelSinkhornPermutation(logits, temperature=0.5)
    P = q.rsample(jax.random.PRNGKey(0))
    assert bool(q.support(jnp.round(P)))
    np.testing.assert_allclose(P, jnp.round(P), atol=1e-6)  # forward value is the hard sample
    target = jnp.arange(16.0).reshape(4, 4)
    grad = jax.grad(lambda lg: jnp.sum(GumbelSinkhornPermutation(lg, 0.5).rsample(jax.random.PRNGKey(0)) * target))(logits)
    assert np.abs(np.asarray(grad)).sum() > 0  # gradients pass through the relaxation
    # Gibbs/Bethe log-mass: normalised up to the Bethe gap, highest for the argmax permutation
    perms = [np.eye(4)[list(p)] for p in itertools.permutations(range(4))]
    lps = np.array([float(q.log_prob(jnp.asarray(p))) for p in perms])
    assert 0.0 <= np.log(np.exp(lps).sum()) <= 0.5 * 4 * np.log(2) + 1e-6
    best = np.asarray(hungarian(logits))
    assert np.isclose(lps.max(), float(q.log_prob(jnp.asarray(best))))


def test_uniform_permutation():
    u = UniformPermutation(5)
    P = u.sample(jax.random.PRNGKey(0), (10,))
    assert P.shape == (10, 5, 5) and bool(jnp.all(u.support(P)))
    np.testing.assert_allclose(u.log_prob(P), -math.log(120))
    assert sorted(np.asarray(order_from_matrix(P[0]))) == list(range(5))


def test_priors_parse_defaults_toml_and_objects(tmp_path):
    spec = parse_priors({"edge_weight": {"dist": "laplace", "scale": 0.3}, "noise_scale": dist.HalfNormal(2.0)})
    assert spec["edge_weight"].family == "laplace" and spec["edge_weight"].params["scale"] == 0.3
    assert spec["decoder_weight"].family == "normal"  # default filled in
    lp = spec["edge_weight"].base().log_prob(0.5)
    assert np.isclose(float(lp), -np.log(2 * 0.3) - 0.5 / 0.3)  # Laplace density by hand
    toml = tmp_path / "p.toml"
    toml.write_text('[priors]\nedge_weight = {dist = "horseshoe", scale = 0.1}\n')
    assert parse_priors(toml)["edge_weight"].family == "horseshoe"


@pytest.mark.parametrize(
    "spec, message",
    [
        ({"edge_weights": {"dist": "normal", "scale": 1}}, "unknown prior name"),
        ({"edge_weight": {"dist": "gaussian", "scale": 1}}, "unknown distribution"),
        ({"edge_weight": {"dist": "normal", "sd": 1}}, "unknown ['sd']"),
        ({"edge_weight": {"dist": "normal"}}, "needs parameter 'scale'"),
        ({"edge_weight": {"dist": "normal", "scale": -1}}, "must be > 0"),
        ({"edge_weight": {"dist": "normal", "scale": "big"}}, "finite number"),
        ({"noise_scale": {"dist": "normal", "scale": 1}}, "positive reals"),
        ({"edge_weight": {"dist": "lognormal", "scale": 1}}, "real line"),
        ({"edge_weight": 3.0}, "expected a table"),
    ],
)
def test_prior_errors(spec, message):
    with pytest.raises(PriorError) as err:
        parse_priors(spec)
    assert message in str(err.value)


def test_collapsed_model_sites_and_horseshoe(scm, rows):
    T, V = rows
    A, b, _ = _decoder()
    x = np.random.default_rng(6).normal(size=(len(T), A.shape[1]))
    stats = jax.tree.map(jnp.asarray, sufficient_stats(x, T, V))
    priors = parse_priors({"edge_weight": {"dist": "horseshoe", "scale": 0.1}})
    tr = handlers.trace(handlers.seed(collapsed_model, 0)).get_trace(stats, priors=priors)
    assert {"edge_weight", "edge_weight_global_scale", "edge_weight_local_scale", "P", "noise_scale",
            "decoder_weight", "decoder_bias", "obs_scale", "W", "x"} <= set(tr)
    assert tr["edge_weight"]["value"].shape == (3,) and tr["decoder_weight"]["value"].shape == (3, 4)
    # the factor equals the collapsed likelihood at the sampled values
    ll = collapsed_log_likelihood(stats, tr["W"]["value"], tr["noise_scale"]["value"], tr["decoder_weight"]["value"],
                                  tr["decoder_bias"]["value"], tr["obs_scale"]["value"], TAU)
    np.testing.assert_allclose(tr["x"]["fn"].log_factor, ll)


def _pair_reference(W, sigma, A, b, s, masks, values, known, value_scale):
    """Joint mean and covariance of (z_1..z_k, x_1..x_k) for a unit of rows sharing eps, built
    independently of unit_factors: push each noise coordinate through solve_scm one at a time."""
    k, d = masks.shape
    W = np.asarray(W)
    eta_sd = np.sqrt(TAU**2 + value_scale**2 * (1 - known))
    cols = []  # each column: the unit's stacked latents for one unit-variance noise coordinate
    for j in range(d):  # shared eps_j
        u = np.zeros((k, d))
        u[:, j] = (1 - masks[:, j]) * sigma[j]
        cols.append(np.concatenate([np.asarray(solve_scm(jnp.asarray(W), jnp.asarray(masks[i]), jnp.asarray(u[i])))
                                    for i in range(k)]))
    for i in range(k):  # eta_{i, j}
        for j in range(d):
            u = np.zeros(d)
            u[j] = masks[i, j] * eta_sd[i, j]
            z = [np.zeros(d)] * k
            z[i] = np.asarray(solve_scm(jnp.asarray(W), jnp.asarray(masks[i]), jnp.asarray(u)))
            cols.append(np.concatenate(z))
    J = np.array(cols)  # (noise, k d)
    mz = np.concatenate([np.asarray(solve_scm(jnp.asarray(W), jnp.asarray(masks[i]),
                                              jnp.asarray(masks[i] * known[i] * values[i]))) for i in range(k)])
    Ab = np.kron(np.eye(k), np.asarray(A))
    cz = J.T @ J
    return mz, cz, mz @ Ab + np.tile(np.asarray(b), k), Ab.T @ cz @ Ab + s**2 * np.eye(Ab.shape[1]), Ab


def test_pairs_and_unknown_values_match_brute_force_gaussian(scm):
    from latentscm.models.collapsed import make_units, unit_latent_posterior, unit_log_likelihood, unit_stats

    W, sigma, _ = scm
    A, b, s = _decoder(D=4)
    rng = np.random.default_rng(7)
    N, d, kappa = 12, 3, 1.7
    T = np.zeros((N, d), np.int8)
    T[6:] = (rng.random((6, d)) < 0.5)
    T[6:, 0] = 1
    V = np.where(T > 0, rng.normal(size=(N, d)), 0.0)
    V[7, 0] = V[9, 0] = np.nan  # unknown values: latent with prior N(0, kappa^2)
    x = rng.normal(size=(N, 4)) * 2
    pair = np.r_[np.arange(6), np.arange(6)]
    pair[5] = 99  # row 5 is a single, row 11 too
    pair[11] = 98
    singles, pairs = make_units(x, T, V, pair)
    assert singles.x.shape == (2, 1, 4) and pairs.x.shape == (5, 2, 4)
    total = 0.0
    for units in (singles, pairs):
        ll = unit_log_likelihood(jax.tree.map(jnp.asarray, units), W, sigma, A, b, s, TAU, kappa)
        mean, cov = unit_latent_posterior(jax.tree.map(jnp.asarray, units), W, sigma, A, b, s, TAU, kappa)
        for u in range(len(units.x)):
            mz, cz, mx, cx, Ab = _pair_reference(W, sigma, A, b, s, units.targets[u].astype(float),
                                                 units.values[u], units.known[u], kappa)
            X = units.x[u].reshape(-1)
            assert np.isclose(ll[u], multivariate_normal(mx, cx).logpdf(X), rtol=1e-7)
            gain = np.linalg.solve(cx, (cz @ Ab).T)
            np.testing.assert_allclose(mean[u].reshape(-1), mz + (X - mx) @ gain, atol=1e-8)
            np.testing.assert_allclose(cov[u].reshape(len(mz), -1), cz - cz @ Ab @ gain, atol=1e-8)
        stats = jax.tree.map(jnp.asarray, unit_stats(units))
        total += collapsed_log_likelihood(stats, W, sigma, A, b, s, TAU, kappa)
        np.testing.assert_allclose(collapsed_log_likelihood(stats, W, sigma, A, b, s, TAU, kappa), ll.sum(), rtol=1e-9)
    assert np.isfinite(total)


def test_sample_sites_pass_gradients():
    """numpyro.sample calls Distribution.sample: both distributions must stay reparameterised there."""
    import numpyro

    logits = jnp.asarray(np.random.default_rng(3).normal(size=(4, 4)))
    target = jnp.arange(16.0).reshape(4, 4)

    def via_site(lg):
        P = handlers.seed(lambda: numpyro.sample("P", GumbelSinkhornPermutation(lg, 0.5)), 0)()
        return jnp.sum(P * target)

    assert np.abs(np.asarray(jax.grad(via_site)(logits))).sum() > 0
    W = jnp.asarray([[0.0, 1.0], [0.0, 0.0]])

    def z_site(w):
        d = InterventionalLinearGaussian(W * w, jnp.ones(2), jnp.zeros(2), jnp.zeros(2))
        return handlers.seed(lambda: numpyro.sample("z", d), 0)().sum()

    assert float(jax.grad(z_site)(1.0)) != 0.0


def test_precision_form_matches_factor_form_with_gradients():
    """Single rows: the precision form (no inverse of I - W) gives the factor form's value and gradient
    in every argument, W's off-DAG entries included (the order's straight-through gradient uses them),
    with known, unknown and absent intervention values over several patterns."""
    from latentscm.models.collapsed import factor_log_likelihood, make_units, unit_stats
    from latentscm.models.precision_form import single_row_log_likelihood

    rng = np.random.default_rng(3)
    d, D, N = 5, 8, 200
    perm = rng.permutation(d)
    W = np.triu(rng.normal(size=(d, d)) * (rng.random((d, d)) < 0.6), 1)[np.ix_(perm, perm)]
    targets = (rng.random((N, d)) < 0.3).astype(np.int8)
    targets[:40] = 0
    values = np.where(rng.random((N, d)) < 0.25, np.nan, rng.normal(size=(N, d))) * targets
    x = rng.normal(size=(N, D))
    with jax.enable_x64(True):
        stats = jax.tree.map(jnp.asarray, unit_stats(make_units(x, targets, values)[0]))
        assert stats.masks.shape[0] > 5  # several patterns
        args = (jnp.asarray(W), jnp.asarray(rng.uniform(0.5, 1.5, d)), jnp.asarray(rng.normal(size=(d, D))),
                jnp.asarray(rng.normal(size=D)), jnp.asarray(0.4))
        values_and_grads = [jax.value_and_grad(lambda *a, f=f: f(stats, *a, TAU, 2.0), argnums=(0, 1, 2, 3, 4))(*args)
                            for f in (factor_log_likelihood, single_row_log_likelihood)]
    (v1, g1), (v2, g2) = values_and_grads
    np.testing.assert_allclose(float(v2), float(v1), rtol=1e-11)
    for a, b_ in zip(g1, g2):
        np.testing.assert_allclose(np.asarray(b_), np.asarray(a), rtol=1e-8, atol=1e-8 * np.max(np.abs(np.asarray(a))))


def test_precision_form_gradient_of_a_vmapped_sum():
    """The ELBO averages particles with ``vmap`` inside ``grad``: each particle's gradient must be its own
    (an output of a custom VJP that ignores its input would be unbatched, and its cotangent summed over
    the particles)."""
    from latentscm.models.collapsed import make_units, unit_stats
    from latentscm.models.precision_form import single_row_log_likelihood

    rng = np.random.default_rng(4)
    d, D, N = 4, 6, 120
    targets = (rng.random((N, d)) < 0.3).astype(np.int8)
    x, values = rng.normal(size=(N, D)), rng.normal(size=(N, d)) * targets
    with jax.enable_x64(True):
        stats = jax.tree.map(jnp.asarray, unit_stats(make_units(x, targets, values)[0]))
        Ws = jnp.asarray(np.stack([np.triu(rng.normal(size=(d, d)), 1)[np.ix_(p, p)]
                                   for p in (rng.permutation(d) for _ in range(3))]))
        A, b, sigma = jnp.asarray(rng.normal(size=(d, D))), jnp.zeros(D), jnp.ones(d)

        def ll(W):
            return single_row_log_likelihood(stats, W, sigma, A, b, 0.5, TAU, 2.0)

        batched = jax.grad(lambda Ws: jnp.sum(jax.vmap(ll)(Ws)))(Ws)
        one_by_one = jnp.stack([jax.grad(ll)(W) for W in Ws])
    np.testing.assert_allclose(np.asarray(batched), np.asarray(one_by_one), rtol=1e-10, atol=1e-9)


def test_empty_patterns_add_nothing():
    """Statistics padded with empty patterns and zero factor blocks (collapsed's bucketing, pad_leading) give the
    same likelihood and gradient: single rows (precision form), pairs (factor form) and the centred float32
    statistics."""
    from latentscm.inference.sharding import pad_leading
    from latentscm.models.collapsed import centered_log_likelihood, centered_stats, make_units, unit_stats

    rng = np.random.default_rng(4)
    d, D, N = 3, 7, 40
    x = rng.normal(size=(N, D))
    targets = (rng.random((N, d)) < 0.3).astype(np.int8)
    values = np.where(targets > 0, rng.normal(size=(N, d)), 0.0)
    pair = np.repeat(np.arange(N // 2), 2)
    W = jnp.asarray(np.triu(rng.normal(size=(d, d)), 1))
    args = (jnp.asarray([1.0, 0.7, 1.3]), jnp.asarray(rng.normal(size=(d, D))), jnp.asarray(rng.normal(size=D)),
            0.3, 0.1, 2.0)
    with jax.enable_x64(True):
        for units in make_units(x, targets, values, pair)[:1] + make_units(x, targets, values):
            for make, ll in ((unit_stats, collapsed_log_likelihood), (centered_stats, centered_log_likelihood)):
                stats = make(units) if make is unit_stats else make(units, np.float64)
                padded = pad_leading(stats, 8)
                assert padded.masks.shape[0] > stats.masks.shape[0] or stats.masks.shape[0] % 8 == 0
                vg = jax.jit(jax.value_and_grad(ll, argnums=(1, 3)))
                value, grad = vg(jax.tree.map(jnp.asarray, stats), W, *args)
                value_p, grad_p = vg(jax.tree.map(jnp.asarray, padded), W, *args)
                np.testing.assert_allclose(value_p, value, rtol=1e-12)
                for g, g_p in zip(grad, grad_p):
                    np.testing.assert_allclose(g_p, g, rtol=1e-9, atol=1e-12)
