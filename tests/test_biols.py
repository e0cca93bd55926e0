"""biols: the paper's horseshoe rule and density, settings validation, gradients, seeded recovery."""

import math

import jax
import jax.numpy as jnp
import networkx as nx
import numpy as np
import numpyro.distributions as dist
import pytest
from numpyro import handlers
from scipy import integrate, stats

from latentscm.data import SimulationConfig, simulate
from latentscm.inference import Posterior, fit
from latentscm.inference.biols import BiolsConfig, make_guide
from latentscm.metrics import structure_metrics
from latentscm.models.biols import LinearGaussianObservation, MarginalHorseshoe, decode, horseshoe_global_scale, init_decoder, log_scaled_exp1

SMALL = SimulationConfig(d=3, D=10, n_pairs=400, n_regimes=8, rows_per_regime=50, n_test_regimes=3)


@pytest.fixture(scope="module")
def data():
    return simulate(SMALL, 0)


def true_order(dataset):
    return tuple(int(i) for i in nx.topological_sort(dataset.true_graph()))


@pytest.mark.parametrize(
    "n, d, degree, expected",
    [
        (4000, 5, 1.0, 1 / math.sqrt(4000)),  # the paper's default: (1/sqrt n) * 2 / (4 - 2)
        (100, 10, 1.0, 0.1 * 2 / 7),  # (1/10) * 2 / (9 - 2)
        (400, 3, 1.0, 1 / 6),  # (d - 1) - 2 degree = 0: fall back to 1 / (2d)
        (4000, 5, 2.0, 1 / 10),  # (d - 1) - 2 degree < 0: fall back
    ],
)
def test_horseshoe_global_scale_rule(n, d, degree, expected):
    assert horseshoe_global_scale(n, d, degree) == pytest.approx(expected, rel=1e-12)


@pytest.mark.parametrize("args", [(0, 5, 1.0), (100, 1, 1.0), (100, 5, 0.0), (100, 5, float("nan"))])
def test_horseshoe_global_scale_rejects_bad_input(args):
    with pytest.raises(ValueError, match="horseshoe_global_scale"):
        horseshoe_global_scale(*args)


def test_log_scaled_exp1_matches_scipy():
    from scipy.special import exp1

    u = np.array([1e-6, 0.01, 0.5, 0.999, 1.0, 1.5, 3.0, 10.0, 50.0, 300.0])
    ref = u + np.log(exp1(u))
    np.testing.assert_allclose(np.asarray(log_scaled_exp1(jnp.asarray(u, jnp.float32))), ref, atol=1e-6)
    assert np.isfinite(float(log_scaled_exp1(jnp.float32(1e5))))  # exp1 underflows; the ratio does not


@pytest.mark.parametrize("w", [0.003, 0.05, 0.4, 2.0])
def test_marginal_horseshoe_density_is_the_integrated_hierarchy(w):
    scale = 0.1
    # p(w) = int N(w; 0, (scale l)^2) HalfCauchy(l; 1) dl, by quadrature (split at the kink near w / scale)
    f = lambda lam: stats.norm.pdf(w, scale=scale * lam) * 2 / (np.pi * (1 + lam**2))
    ref = sum(integrate.quad(f, a, b, limit=200)[0] for a, b in [(0, w / scale), (w / scale, np.inf)])
    assert float(MarginalHorseshoe(scale).log_prob(jnp.float32(w))) == pytest.approx(np.log(ref), abs=1e-4)


@pytest.mark.parametrize(
    "config, message",
    [
        ({"steps": 0}, "steps must be an integer >= 1"),
        ({"batch_size": 0}, "batch_size must be an integer >= 1, or None"),
        ({"decoder": "conv"}, "decoder must be 'linear' or 'mlp'"),
        ({"decoder_hidden": ()}, "decoder_hidden"),
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"obs_scale": -1.0}, "obs_scale"),
        ({"noise_prior_scale": 0.0}, "noise_prior_scale"),
        ({"horseshoe": "yes"}, "horseshoe must be True or False"),
        ({"known_order": ("a", "b", "c")}, "known_order must be a tuple of node indices"),
        ({"lr": 0.1}, "unknown setting(s) ['lr']"),
    ],
)
def test_fit_rejects_bad_settings_before_work(data, config, message):
    with pytest.raises(ValueError) as err:
        fit(data[0], method="biols", config=config, progress=False)
    assert message in str(err.value)


def test_fit_rejects_bad_known_order(data):
    with pytest.raises(ValueError, match="permutation of 0..2"):
        fit(data[0], method="biols", config={"known_order": (0, 0, 1)}, progress=False)


def test_guide_z_and_order_carry_reparameterised_gradients(data):
    """z and P are drawn in the guide with straight-through / reparameterised gradients (NumPyro's
    sample site calls ``Distribution.sample``, which stops gradients in the base classes)."""
    train = data[0]
    d = train.d
    guide = make_guide(d, BiolsConfig())
    rng = np.random.default_rng(0)
    params = {"edge_weight_loc": jnp.full(3, 0.5), "edge_weight_log_std": jnp.full(3, -1.0),
              "noise_scale_loc": jnp.zeros(d), "noise_scale_log_std": jnp.full(d, -1.0),
              "order_mlp": {"w1": jnp.asarray(rng.normal(size=(6, 8)), jnp.float32), "b1": jnp.zeros(8),
                            "w2": jnp.asarray(rng.normal(size=(8, 8)), jnp.float32), "b2": jnp.zeros(8),
                            "w3": jnp.asarray(rng.normal(size=(8, 9)), jnp.float32), "b3": jnp.zeros(9)}}
    batch = {"targets": jnp.asarray(train.targets[:20], jnp.float32), "values": jnp.asarray(train.values[:20])}

    def z_sum(p):
        with handlers.seed(rng_seed=0):
            tr = handlers.trace(handlers.substitute(guide, p)).get_trace(0.5, batch)
        return jnp.sum(tr["z"]["value"] ** 2)

    g = jax.grad(z_sum)(params)
    assert float(jnp.abs(g["noise_scale_loc"]).sum()) > 0
    assert float(jnp.abs(g["edge_weight_loc"]).sum()) > 0
    assert float(jnp.abs(g["order_mlp"]["w3"]).sum()) > 0


def test_linear_observation_density_is_the_gaussian():
    """The inner-product form of the linear decoder's density equals the plain Gaussian's (and scipy's),
    for particles broadcast against rows, and its gradients too."""
    rng = np.random.default_rng(3)
    z = rng.normal(size=(4, 6, 3))  # (particles, rows, d)
    A, b, x = rng.normal(size=(3, 50)), rng.normal(size=50), rng.normal(size=(6, 50)) * 3
    fast = LinearGaussianObservation(jnp.asarray(z), jnp.asarray(A), jnp.asarray(b), 0.7)
    plain = stats.norm(z @ A + b, 0.7).logpdf(x).sum(-1)
    with jax.enable_x64(True):
        fast = LinearGaussianObservation(jnp.asarray(z), jnp.asarray(A), jnp.asarray(b), 0.7)
        np.testing.assert_allclose(fast.log_prob(jnp.asarray(x)), plain, rtol=1e-10)
        assert fast.batch_shape == (4, 6) and fast.event_shape == (50,)

        def both(A):
            return (LinearGaussianObservation(jnp.asarray(z), A, jnp.asarray(b), 0.7).log_prob(jnp.asarray(x)).sum(),
                    dist.Normal(jnp.asarray(z) @ A + b, 0.7).to_event(1).log_prob(jnp.asarray(x)).sum())

        g_fast = jax.grad(lambda A: both(A)[0])(jnp.asarray(A))
        g_plain = jax.grad(lambda A: both(A)[1])(jnp.asarray(A))
        np.testing.assert_allclose(g_fast, g_plain, rtol=1e-8, atol=1e-8)


def test_mlp_decoder_shapes():
    p = init_decoder(np.random.default_rng(0), "mlp", 3, 7, (4, 5))
    assert sorted(p) == ["b0", "b1", "b2", "w0", "w1", "w2"]
    assert decode(p, jnp.ones((2, 6, 3))).shape == (2, 6, 7)


@pytest.fixture(scope="module")
def posterior(data):
    config = {"known_order": true_order(data[0]), "steps": 600, "num_particles": 8, "batch_size": 200,
              "num_draws": 50, "learning_rate": 0.02}
    return fit(data[0], method="biols", config=config, seed=0, progress=False)


def test_known_order_recovers_graph(data, posterior):
    train, test = data
    assert isinstance(posterior, Posterior) and posterior.method == "biols"
    m = structure_metrics(posterior.W, train.weights, z_pred=posterior.latent_mean, z_true=train.z)
    assert m["e_shd"] <= 0.5
    assert m["auroc"] >= 0.95
    S, d, D = 50, 3, 10
    assert posterior.W.shape == (S, d, d) and posterior.orders.shape == (S, d)
    assert np.all(posterior.orders == np.asarray(true_order(train)))
    assert posterior.decoder["A"].shape == (S, d, D) and posterior.decoder["obs_scale"].shape == (S,)
    assert posterior.latent_mean.shape == (train.N, d) and posterior.elbo.shape == (600,)
    assert np.isfinite(posterior.heldout_nll(test))


def test_log_likelihood_group(data, posterior):
    """biols's linear decoder gives the collapsed density per draw: the group heldout_nll reduces."""
    from scipy.special import logsumexp

    _, test = data
    ll = posterior.to_arviz(test)["log_likelihood"]["x"]
    assert ll.dims == ("chain", "draw", "obs") and ll.shape == (1, 50, test.N)
    ll = ll.values[0]
    np.testing.assert_allclose(-np.mean(logsumexp(ll, axis=0) - np.log(50)), posterior.heldout_nll(test), rtol=1e-12)


@pytest.mark.slow
def test_mlp_decoder_and_learned_order_run(data):
    train, test = data
    post = fit(train, method="biols", config={"decoder": "mlp", "steps": 200, "num_draws": 10, "latent_steps": 50},
               seed=0, progress=False)
    assert post.W.shape == (10, 3, 3) and post.latent_mean.shape == (train.N, 3)
    assert set(map(tuple, post.orders)) <= {tuple(p) for p in __import__("itertools").permutations(range(3))}
    with pytest.raises(ValueError, match="no density"):
        post.heldout_nll(test)


@pytest.mark.slow
def test_biols_resumes_from_its_checkpoint_exactly(data, tmp_path, monkeypatch):
    import latentscm.inference.svi as svi_module  # svi.solve runs every SVI method's steps

    train, _ = data
    cfg = {"steps": 60, "num_draws": 10, "chunk": 30, "checkpoint_every": 30, "batch_size": 100}
    full = fit(train, "biols", config={**cfg, "checkpoint_dir": str(tmp_path / "a")}, seed=2, progress=False)
    original = svi_module.run_svi

    class Interrupt(Exception):
        pass

    def stop_after_30(state, losses):
        if len(losses) >= 30:
            raise Interrupt

    monkeypatch.setattr(svi_module, "run_svi", lambda *a, **k: original(*a, **k, callback=stop_after_30))
    with pytest.raises(Interrupt):
        fit(train, "biols", config={**cfg, "checkpoint_dir": str(tmp_path / "b")}, seed=2, progress=False)
    monkeypatch.setattr(svi_module, "run_svi", original)
    resumed = fit(train, "biols", config={**cfg, "checkpoint_dir": str(tmp_path / "b")}, seed=2, progress=False)
    np.testing.assert_allclose(resumed.elbo, full.elbo, rtol=1e-6)
    np.testing.assert_allclose(resumed.W, full.W, atol=1e-6)
