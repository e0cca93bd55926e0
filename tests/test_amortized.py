"""The ``amortized`` method: closed-form KL, model sites, config validation, predict, recovery."""

import jax
import jax.numpy as jnp
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from numpyro.distributions.kl import kl_divergence

from latentscm.data import DataError, Dataset, SimulationConfig, simulate
from latentscm.data.scm import sample_latents, topological_order
from latentscm.inference import Posterior, fit
from latentscm.inference.decoders import LinearDecoder, NetworkDecoder
from latentscm.inference.amortized import AmortizedConfig
from latentscm.inference.encoder import pair_units
from latentscm.metrics import expected_shd, mcc
from latentscm.models.amortized import (amortized_model, gaussian_scm_kl, intervention_scale, pair_noise_guide,
                                        pair_second, unit_batches)
from latentscm.models.factors import unit_factors
from latentscm.models.priors import parse_priors
from latentscm.models.scm import InterventionalLinearGaussian

W3 = np.array([[0.0, 1.5, 0.7], [0.0, 0.0, -0.8], [0.0, 0.0, 0.0]])  # edges 0 -> 1, 1 -> 2, 0 -> 2
SIGMA3 = np.array([0.8, 1.3, 0.6])


def _gauss_kl(m0, S0, m1, S1):
    """KL(N(m0, S0) || N(m1, S1)) by the textbook formula (numpy, full matrices)."""
    S1i = np.linalg.inv(S1)
    k = len(m0)
    return 0.5 * (np.trace(S1i @ S0) + (m1 - m0) @ S1i @ (m1 - m0) - k
                  + np.linalg.slogdet(S1)[1] - np.linalg.slogdet(S0)[1])


@pytest.mark.parametrize("targets,values", [([0, 0, 0], [0, 0, 0]), ([0, 1, 0], [0, 2.0, 0]),
                                            ([1, 0, 1], [-1.0, 0, 0.5])])
def test_kl_matches_textbook_formula(targets, values):
    rng = np.random.default_rng(0)
    loc = rng.normal(size=3)
    L = np.tril(rng.normal(size=(3, 3)) * 0.3, -1) + np.diag(rng.uniform(0.2, 1.0, 3))
    p = InterventionalLinearGaussian(jnp.asarray(W3), jnp.asarray(SIGMA3), jnp.asarray(targets, float),
                                     jnp.asarray(values), tau=0.1)
    ref = _gauss_kl(loc, L @ L.T, np.asarray(p.mean), np.asarray(p.covariance()))
    got = gaussian_scm_kl(jnp.asarray(loc), jnp.asarray(L), jnp.asarray(W3), jnp.asarray(SIGMA3),
                          jnp.asarray(targets, float), jnp.asarray(values), 0.1)
    np.testing.assert_allclose(got, ref, rtol=1e-4)
    # NumPyro's dispatch (used by TraceMeanField_ELBO) reaches the same formula, for both guide families.
    np.testing.assert_allclose(kl_divergence(dist.MultivariateNormal(loc, scale_tril=L), p), ref, rtol=1e-4)
    diag = np.diag(L)
    ref_diag = _gauss_kl(loc, np.diag(diag**2), np.asarray(p.mean), np.asarray(p.covariance()))
    np.testing.assert_allclose(kl_divergence(dist.Normal(loc, diag).to_event(1), p), ref_diag, rtol=1e-4)


def test_kl_matches_monte_carlo_batched():
    key = jax.random.PRNGKey(1)
    t = jnp.array([[0.0, 0, 0], [1, 0, 0]])
    v = jnp.array([[0.0, 0, 0], [1.5, 0, 0]])
    loc, scale = jnp.array([[0.3, -0.2, 1.0], [1.4, 2.0, 2.5]]), jnp.array([[0.5, 0.7, 0.4], [0.1, 0.9, 0.6]])
    q = dist.Normal(loc, scale).to_event(1)
    p = InterventionalLinearGaussian(jnp.asarray(W3), jnp.asarray(SIGMA3), t, v, tau=0.1)
    z = q.sample(key, (100_000,))
    mc = jnp.mean(q.log_prob(z) - p.log_prob(z), 0)
    kl = kl_divergence(q, p)
    assert kl.shape == (2,)
    np.testing.assert_allclose(kl, mc, rtol=0.02, atol=0.02)


def test_model_sites_and_prior_predictive():
    N, d, D = 6, 3, 4
    t = np.zeros((N, d))
    t[3:, 1] = 1
    v = t * 2.0
    tr = handlers.trace(handlers.seed(amortized_model, 0)).get_trace(
        None, targets=t, values=v, priors=parse_priors(), D=D, batch_size=4)
    assert {"edge_weight", "noise_scale", "decoder_weight", "decoder_bias", "obs_scale", "P", "W", "rows", "z",
            "x"} <= set(tr)
    assert tr["z"]["value"].shape == (4, d) and tr["x"]["value"].shape == (4, D)
    assert tr["x"]["scale"] == pytest.approx(N / 4)
    with pytest.raises(ValueError, match="give x, or D"):
        handlers.seed(amortized_model, 0)(None, targets=t, values=v, priors=parse_priors())


@pytest.mark.parametrize("bad,match", [
    ({"batch_size": 0}, "batch_size"), ({"decoder": "conv"}, "decoder"), ({"encoder_covariance": "low"}, "encoder"),
    ({"tau": 0.0}, "tau"), ({"learning_rate": -1.0}, "learning_rate"), ({"temperature": (1.0,)}, "temperature"),
    ({"latent_init": "pca"}, "latent_init"), ({"steps": 1.5}, "steps"),
])
def test_config_validation(bad, match):
    with pytest.raises(ValueError, match=match):
        AmortizedConfig(**bad)


def test_fit_rejects_bad_settings_before_work():
    train, _ = simulate(SimulationConfig(d=3, D=6, n_pairs=40, rows_per_regime=2, projection="mlp"), 0)
    with pytest.raises(ValueError, match="unknown setting"):
        fit(train, "amortized", config={"batchsize": 10})
    with pytest.raises(ValueError, match="known_order"):
        fit(train, "amortized", config={"known_order": (0, 1, 1), "steps": 1}, progress=False)


def test_predict_matches_scm_distribution():
    """Posterior.predict on a one-draw posterior reproduces the SCM's interventional mean and covariance."""
    D = 2
    A = np.array([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    post = Posterior(method="hand", W=W3[None].astype(np.float32), noise_scales=SIGMA3[None], orders=np.array([[0, 1, 2]]),
                     decoder=LinearDecoder(A[None], np.array([[0.5, -0.5]]), np.array([0.01])),
                     latent_mean=np.zeros((1, 3)), latent_scale=np.zeros((1, 3)), elbo=np.zeros(0), seconds=0.0)
    t, v = np.array([0, 1, 0]), np.array([0.0, 3.0, 0.0])
    out = post.predict(t, v, num_samples=20_000, seed=3)
    assert out["z"].shape == (20_000, 1, 3) and out["x"].shape == (20_000, 1, D)
    z = out["z"][:, 0]
    ref = InterventionalLinearGaussian(jnp.asarray(W3), jnp.asarray(SIGMA3), t, v, tau=0.1)
    np.testing.assert_allclose(z.mean(0), ref.mean, atol=0.05)
    np.testing.assert_allclose(np.cov(z.T), ref.covariance(), atol=0.08)
    np.testing.assert_allclose(out["x"][:, 0], z @ A + [0.5, -0.5], atol=0.05)
    with pytest.raises(ValueError, match="shape"):
        post.predict(np.zeros((2, 4)))


def _small_mlp_fit(steps, pretrain_steps, num_draws):
    train, test = simulate(SimulationConfig(d=3, D=10, n_pairs=400, rows_per_regime=20, projection="mlp"), 0)
    order = tuple(int(i) for i in topological_order(train.weights))
    cfg = {"steps": steps, "pretrain_steps": pretrain_steps, "num_draws": num_draws, "known_order": order,
           "chunk": steps, "heldout_draws": 5, "heldout_particles": 8}
    return train, test, fit(train, "amortized", config=cfg, seed=0, progress=False)


@pytest.mark.slow  # two compilations of the importance sampler: 7-16 s on the shared cores
def test_network_log_likelihood_per_draw_is_what_heldout_nll_reduces():
    """A network decoder's density (importance sampling, first ``heldout_draws`` draws) per draw: the
    log_likelihood group has those draws; -mean logmeanexp over them is heldout_nll (same keys)."""
    import functools

    import equinox as eqx

    from latentscm.inference.encoder import GaussianEncoder, importance_log_predictive

    train, _ = simulate(SimulationConfig(d=3, D=6, n_pairs=30, n_regimes=3, rows_per_regime=10), 0)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    encoder = GaussianEncoder(6, 3, 8, 1, False, key=k1)
    net = eqx.nn.MLP(3, 6, 8, 1, activation=jax.nn.leaky_relu, key=k2)
    S = 5
    draws = {"W": np.repeat(W3[None], S, 0), "noise_scale": np.repeat(SIGMA3[None], S, 0),
             "obs_scale": np.linspace(0.5, 1.0, S)}
    log_predictive = functools.partial(importance_log_predictive, encoder, net, (np.zeros(6), np.ones(6)), draws,
                                       0.1, 3, 4, jax.random.PRNGKey(1), None)
    post = Posterior(method="amortized", W=draws["W"], noise_scales=draws["noise_scale"],
                     orders=np.tile(np.arange(3), (S, 1)),
                     decoder=NetworkDecoder({"obs_scale": draws["obs_scale"]}, log_predictive=log_predictive),
                     latent_mean=np.zeros((train.N, 3)), latent_scale=np.ones((train.N, 3)), elbo=np.zeros(0),
                     seconds=0.0)
    ll = post.to_arviz(train, by="row")["log_likelihood"]["x"]
    assert ll.dims == ("chain", "draw", "obs") and ll.shape == (1, 3, train.N)
    lme = np.logaddexp.reduce(ll.values[0], axis=0) - np.log(3)
    np.testing.assert_allclose(lme, log_predictive(train), rtol=1e-5)
    np.testing.assert_allclose(-lme.mean(), post.heldout_nll(train), rtol=1e-12)
    assert post.to_arviz(train)["log_likelihood"]["x"].shape == (1, 3, 30)  # paired rows: per pair


@pytest.mark.slow
def test_small_mlp_fit_outputs():
    """A few steps only; compilation dominates (~35-90 s on 2 shared cores, hence slow)."""
    train, test, post = _small_mlp_fit(20, 50, 10)
    assert post.method == "amortized" and post.W.shape == (10, 3, 3) and post.latent_mean.shape == (train.N, 3)
    assert np.all(post.latent_scale > 0) and post.elbo.shape == (20,)
    assert set(post.decoder) == {"obs_scale"} and post.decoder.decode is not None
    nll = post.heldout_nll(test)
    assert np.isfinite(nll)
    pred = post.predict(test.targets[:4], test.values[:4], num_samples=6)
    assert pred["z"].shape == (6, 4, 3) and pred["x"].shape == (6, 4, 10)
    tree = post.to_arviz(test)
    assert tree["posterior"]["W"].dims == ("chain", "draw", "parent", "child")
    assert tree["latents"]["z_mean"].dims == ("obs", "node")
    assert tree["log_likelihood"]["x"].shape == (1, 5, test.N)  # the first heldout_draws draws


@pytest.mark.slow
def test_small_mlp_recovery_known_order():
    train, _, post = _small_mlp_fit(300, 800, 50)
    assert mcc(post.latent_mean, train.z) > 0.95
    assert expected_shd(post.W, train.weights) <= 1.0


@pytest.mark.slow
def test_linear_decoder_learned_order():
    train, test = simulate(SimulationConfig(d=3, D=10, n_pairs=400, rows_per_regime=20), 1)
    post = fit(train, "amortized", config={"decoder": "linear", "steps": 400, "pretrain_steps": 500,
                                           "num_draws": 50}, seed=0, progress=False)
    assert set(post.decoder) == {"A", "b", "obs_scale"} and post.decoder["A"].shape == (50, 3, 10)
    assert mcc(post.latent_mean, train.z) > 0.95
    assert expected_shd(post.W, train.weights) <= 1.0
    assert np.isfinite(post.heldout_nll(test))


@pytest.mark.slow
def test_full_covariance_encoder():
    train, _ = simulate(SimulationConfig(d=3, D=10, n_pairs=400, rows_per_regime=20, projection="mlp"), 2)
    post = fit(train, "amortized", config={"encoder_covariance": "full", "steps": 300, "pretrain_steps": 500,
                                           "num_draws": 20}, seed=0, progress=False)
    assert mcc(post.latent_mean, train.z) > 0.95


# --- unknown intervention values and pairs ---------------------------------------------------------

def test_kl_with_unknown_value_matches_monte_carlo_marginal():
    """A missing value v ~ N(0, value_scale^2) integrated out: the KL against the SCM with the inflated
    intervened scale equals the textbook KL against the Gaussian fitted to brute-force samples of the
    hierarchical process (draw v, then z given v with tau)."""
    t, known = np.array([1.0, 0, 1]), np.array([1.0, 1, 0])
    v = np.array([-1.0, 0, 0])  # value of node 2 unknown (0 there)
    scale = intervention_scale(0.1, t, known, 2.0)
    np.testing.assert_allclose(scale, [0.1, 0.1, np.sqrt(0.01 + 4.0)], rtol=1e-6)
    rng = np.random.default_rng(0)
    n = 400_000
    vv = np.where(known > 0, v, 2.0 * rng.normal(size=(n, 3))) * t
    z = sample_latents(rng, W3, SIGMA3, np.broadcast_to(t, (n, 3)).astype(np.int8), vv, tau=0.1)
    m_ref, S_ref = z.mean(0), np.cov(z.T)
    loc = np.array([-0.8, 0.3, 1.0])
    L = np.tril(rng.normal(size=(3, 3)) * 0.3, -1) + np.diag([0.2, 0.7, 1.1])
    ref = _gauss_kl(loc, L @ L.T, m_ref, S_ref)
    got = gaussian_scm_kl(jnp.asarray(loc), jnp.asarray(L), jnp.asarray(W3), jnp.asarray(SIGMA3), jnp.asarray(t),
                          jnp.asarray(v), scale)
    np.testing.assert_allclose(got, ref, rtol=0.02)
    p = InterventionalLinearGaussian(jnp.asarray(W3), jnp.asarray(SIGMA3), t, v, scale)
    np.testing.assert_allclose(kl_divergence(dist.MultivariateNormal(loc, scale_tril=L), p), got, rtol=1e-5)
    np.testing.assert_allclose(p.covariance(), S_ref, atol=0.05)


PAIR_CASES = [  # (m_a, m_b, known_b)
    ([0, 0, 0], [0, 1, 0], [1, 1, 1]), ([1, 0, 0], [0, 0, 1], [1, 1, 1]), ([0, 1, 0], [0, 1, 1], [1, 1, 0]),
    ([1, 0, 1], [1, 1, 0], [1, 0, 1]), ([0, 0, 0], [1, 0, 1], [1, 1, 0]),
]


@pytest.mark.parametrize("m_a,m_b,k_b", PAIR_CASES)
def test_pair_transform_reproduces_paired_joint(m_a, m_b, k_b):
    """z_a from the SCM, u ~ N(0, I), z_b = pair_second(z_a, u): the joint mean and covariance of (z_a, z_b)
    equal the collapsed model's paired unit (shared eps, own eta per row, unknown values integrated out)."""
    with jax.enable_x64(True):
        W, sig = jnp.asarray(W3), jnp.asarray(SIGMA3)
        m_a, m_b, k_b = (jnp.asarray(a, jnp.float64) for a in (m_a, m_b, k_b))
        v_a, v_b = jnp.array([0.5, -1.0, 0.3]) * m_a, jnp.array([2.0, 1.0, -0.7]) * m_b * k_b
        s_b = intervention_scale(0.1, m_b, k_b, 2.0)
        p_a = InterventionalLinearGaussian(W, sig, m_a, v_a, 0.1)
        C_a = jnp.linalg.cholesky(p_a.covariance())

        def joint(e):  # e = (xi (d,), u (d,)): (z_a, z_b) is affine in e
            z_a = p_a.mean + e[:3] @ C_a.T
            return jnp.concatenate([z_a, pair_second(z_a, e[3:], W, sig, m_a, m_b, v_b, s_b)])

        J = jax.jacobian(joint)(jnp.zeros(6))
        gamma, gz = unit_factors(W, sig, 0.1, 2.0, jnp.stack([m_a, m_b])[None],
                                 jnp.stack([jnp.ones(3), k_b])[None])
        G = gamma.reshape(-1, 6)
        np.testing.assert_allclose(J @ J.T, G.T @ G, atol=1e-10)
        np.testing.assert_allclose(joint(jnp.zeros(6)), jnp.concatenate([v_a, v_b]) @ gz.reshape(6, 6), atol=1e-10)
        # the guide's map inverts the transform on the entries it uses; unused entries get the prior
        u = jnp.array([0.3, -1.2, 0.8])
        z_b = pair_second(p_a.mean, u, W, sig, m_a, m_b, v_b, s_b)
        loc, sc = pair_noise_guide(z_b, jnp.full(3, 0.5), W, sig, m_a, m_b, v_b, s_b)
        used = np.maximum(m_a, m_b) > 0
        np.testing.assert_allclose(np.asarray(loc)[used], np.asarray(u)[used], atol=1e-10)
        np.testing.assert_allclose(np.asarray(sc)[~used], 1.0)
        np.testing.assert_allclose(np.asarray(loc)[~used], 0.0)


def test_pair_transform_matches_paired_simulator():
    """Monte Carlo against latentscm.data's sampler with shared eps (the paired design of simulate)."""
    rng = np.random.default_rng(1)
    n = 200_000
    m_a, m_b, v_b = np.array([1, 0, 0]), np.array([0, 1, 0]), np.array([0.0, 1.5, 0.0])
    eps = rng.normal(size=(n, 3)) * SIGMA3
    z_a = sample_latents(rng, W3, SIGMA3, np.tile(m_a, (n, 1)), np.zeros((n, 3)), tau=0.1, eps=eps)
    z_b = sample_latents(rng, W3, SIGMA3, np.tile(m_b, (n, 1)), np.tile(v_b, (n, 1)), tau=0.1, eps=eps)
    ref = np.cov(np.c_[z_a, z_b].T)
    k1, k2 = jax.random.split(jax.random.PRNGKey(0))
    za = InterventionalLinearGaussian(jnp.asarray(W3), jnp.asarray(SIGMA3), m_a, np.zeros(3), 0.1).sample(k1, (n,))
    zb = pair_second(za, jax.random.normal(k2, (n, 3)), jnp.asarray(W3), jnp.asarray(SIGMA3), m_a, m_b, v_b, 0.1)
    np.testing.assert_allclose(np.cov(np.c_[za, zb].T), ref, atol=0.06)
    np.testing.assert_allclose(zb.mean(0), z_b.mean(0), atol=0.03)


def test_model_sites_with_pairs_and_unknown_values():
    N, d, D = 10, 3, 4
    t = np.zeros((N, d))
    t[4:8, 1] = 1
    t[8:, 0] = 1
    known = 1 - t * (np.arange(N) % 2)[:, None]  # odd targeted rows: value unknown
    v = t * known * 2.0
    singles, pairs = np.array([8, 9]), np.array([[0, 4], [1, 5], [2, 6], [3, 7]])
    tr = handlers.trace(handlers.seed(amortized_model, 0)).get_trace(
        None, targets=t, values=v, priors=parse_priors(), D=D, batch_size=6, known=known, value_scale=2.0,
        units=(singles, pairs))
    assert unit_batches(2, 4, 6) == (2, 2)
    assert tr["z"]["value"].shape == (2, d) and tr["z_pair"]["value"].shape == (2, d)
    assert tr["u"]["value"].shape == (2, d) and tr["x_pair"]["value"].shape == (2, 2, D)
    assert tr["x_pair"]["scale"] == pytest.approx(2) and tr["x"]["scale"] in (None, 1.0)
    np.testing.assert_allclose(tr["z_pair"]["fn"].tau[:, 1], 0.1)  # pair rows a are observational


def test_pairs_and_unknown_values_validated_before_work():
    iid, _ = simulate(SimulationConfig(d=3, D=6, design="iid", n_rows=60, n_regimes=4), 0)
    with pytest.raises(DataError, match="pair ids"):
        fit(iid, "amortized", config={"use_pairs": True}, progress=False)
    paired, _ = simulate(SimulationConfig(d=3, D=6, n_pairs=40, n_regimes=4, rows_per_regime=10), 0)
    with pytest.raises(DataError, match="at most two rows"):  # refused by the loader, for every method
        Dataset.from_arrays(paired.x, paired.targets, paired.values, pair=np.arange(paired.N) // 3)
    hidden = _hide_values(paired)
    with pytest.raises(DataError, match="unknown_values"):
        fit(hidden, "amortized", progress=False)
    for bad in ({"unknown_values": "zero"}, {"value_scale": 0.0}, {"use_pairs": 1.5}):
        with pytest.raises(ValueError, match=next(iter(bad))):
            AmortizedConfig(**bad)
    singles, pairs = pair_units(paired)
    assert len(singles) == 0 and pairs.shape == (40, 2)
    assert np.all(paired.targets[pairs[:, 0]].sum(1) <= paired.targets[pairs[:, 1]].sum(1))


def _hide_values(ds, every=1):
    """NaN values where targeted, in every ``every``-th row (1: all rows)."""
    hide = (ds.targets > 0) & (np.arange(ds.N) % every == 0)[:, None]
    values = np.where(hide, np.nan, ds.values)
    return Dataset.from_arrays(ds.x, ds.targets, values, regime=ds.regime, pair=ds.pair, z=ds.z, weights=ds.weights)


@pytest.mark.slow
@pytest.mark.parametrize("use_pairs,hide", [(True, False), (False, True), (True, True)])
def test_small_fit_pairs_and_hidden_values(use_pairs, hide):
    """Linear projection, d = 3, order learned: pairs and/or half of the values hidden (with all of them
    hidden the latents lose their scale and sign labels: see docs/amortized.md); structure and latents."""
    train, test = simulate(SimulationConfig(d=3, D=10, n_pairs=400, rows_per_regime=20), 1)
    data = _hide_values(train, every=2) if hide else train
    cfg = {"decoder": "linear", "steps": 400, "pretrain_steps": 500, "num_draws": 50, "use_pairs": use_pairs,
           "unknown_values": "latent" if hide else "error"}
    post = fit(data, "amortized", config=cfg, seed=0, progress=False)
    assert post.latent_mean.shape == (train.N, 3) and np.all(post.latent_scale > 0)
    assert mcc(post.latent_mean, train.z) > 0.9
    assert expected_shd(post.W, train.weights) <= 1.0
    assert np.isfinite(post.heldout_nll(test))
