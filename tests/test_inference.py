"""fit(): validation before any work, and a seeded recovery run of the collapsed method."""

import networkx as nx
import numpy as np
import pytest

from latentscm.data import DataError, SimulationConfig, simulate
from latentscm.inference import METHODS, Posterior, fit
from latentscm.inference.initialize import initialise, order_score
from latentscm.metrics import mcc, structure_metrics
from latentscm.models.priors import PriorError

SMALL = SimulationConfig(d=3, D=10, n_pairs=400, n_regimes=8, rows_per_regime=50, n_test_regimes=3)


@pytest.fixture(scope="module")
def data():
    return simulate(SMALL, 0)


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        ({"method": "bogus"}, ValueError, "available methods"),
        ({"config": {"stepz": 10}}, ValueError, "unknown setting(s) ['stepz']"),
        ({"config": {"steps": 0}}, ValueError, "steps must be an integer >= 1"),
        ({"config": {"temperature": (1.0, -1.0)}}, ValueError, "temperature"),
        ({"config": {"order_init": "magic"}}, ValueError, "order_init"),
        ({"priors": {"edge_weight": {"dist": "nope", "scale": 1}}}, PriorError, "unknown distribution"),
        ({"seed": -1}, ValueError, "seed"),
    ],
)
def test_fit_rejects_bad_arguments_before_work(data, kwargs, error, message):
    with pytest.raises(error) as err:
        fit(data[0], progress=False, **kwargs)
    assert message in str(err.value)


def test_fit_rejects_non_dataset():
    with pytest.raises(DataError, match="Dataset.load"):
        fit(np.zeros((3, 3)))


def test_fit_rejects_bad_known_order(data):
    with pytest.raises(ValueError, match="permutation of 0..2"):
        fit(data[0], config={"known_order": (0, 0, 1)}, progress=False)


def test_initialisation_recovers_latents_and_prefers_true_order():
    train, _ = simulate(SimulationConfig(d=4, D=20, n_pairs=600, n_regimes=12, rows_per_regime=50), 1)
    ini = initialise(train.x, train.targets, train.values)
    assert mcc(ini.z, train.z) > 0.99
    # latents come out in the true indexing and scale (interventions pin them): no matching needed
    assert np.corrcoef(ini.z[:, 0], train.z[:, 0])[0, 1] > 0.99
    true_order = np.array(list(nx.topological_sort(train.true_graph())))
    assert order_score(train.z, train.targets, ini.order) >= order_score(train.z, train.targets, true_order) - 1.0


@pytest.fixture(scope="module")
def posterior(data):
    return fit(data[0], config={"steps": 300, "num_draws": 100}, seed=0, progress=False)


def test_collapsed_recovers_seeded_scm(data, posterior):
    train, _ = data
    assert isinstance(posterior, Posterior) and posterior.method == "collapsed"
    m = structure_metrics(posterior.W, train.weights, z_pred=posterior.latent_mean, z_true=train.z)
    assert m["e_shd"] <= 0.5
    assert m["mcc"] >= 0.95
    assert m["edge_rmse"] < 0.2
    # noise scales recovered within 20%
    np.testing.assert_allclose(posterior.noise_scales.mean(0), train.noise_scales, rtol=0.2)


def test_posterior_shapes_and_heldout_nll(data, posterior):
    train, test = data
    S, d, D = 100, 3, 10
    assert posterior.W.shape == (S, d, d) and posterior.orders.shape == (S, d)
    assert posterior.decoder["A"].shape == (S, d, D) and posterior.latent_mean.shape == (train.N, d)
    assert np.all(posterior.latent_scale > 0) and np.all(posterior.latent_scale < 0.5)
    probs = posterior.edge_probs()
    assert probs.shape == (d, d) and np.all(np.diag(probs) == 0)
    np.testing.assert_allclose(posterior.order_probs().sum(0), 1.0)
    nll = posterior.heldout_nll(test)
    # the posterior predicts unseen regimes far better than a shuffled decoder does
    shuffled = Posterior(**{**posterior.__dict__, "decoder": {**posterior.decoder, "A": posterior.decoder["A"][:, ::-1]}})
    assert np.isfinite(nll) and nll < shuffled.heldout_nll(test) - 1.0
    assert len(posterior.elbo) == 300 and np.mean(posterior.elbo[-30:]) > np.mean(posterior.elbo[:30])


def test_to_arviz_named_dims(posterior, tmp_path):
    import arviz as az

    tree = posterior.to_arviz()
    post = tree["posterior"]
    assert post["W"].dims == ("chain", "draw", "parent", "child")
    assert post["noise_scale"].dims == ("chain", "draw", "node")
    assert tree["latents"]["z_mean"].dims == ("obs", "node")
    summary = az.summary(tree, var_names=["noise_scale"])
    assert len(summary) == 3
    tree.to_netcdf(tmp_path / "p.nc", engine="h5netcdf")
    assert (tmp_path / "p.nc").stat().st_size > 0


def test_methods_registry_lists_collapsed():
    assert "collapsed" in METHODS


def test_run_svi_stops_on_non_finite_loss_with_step_number():
    import jax.numpy as jnp

    from latentscm.inference.svi import SVIInfo, SVIState, run_svi

    def step_fn(state, data, n):  # a fake step whose loss turns NaN in the second chunk
        step = state.step + n
        loss = jnp.where(jnp.arange(n)[:, None] + state.step >= 13, jnp.nan, 1.0) * jnp.ones((n, 2))
        return SVIState(state.params, state.opt_state, state.rng_key, step), SVIInfo(loss)

    state = SVIState({"a": jnp.zeros((2, 1))}, None, None, jnp.zeros((), jnp.int32))
    with pytest.raises(FloatingPointError, match="non-finite.*at step 13 \\(restart 0\\)"):
        run_svi(step_fn, state, None, 30, chunk=10, progress=False)

    def bad_params(state, data, n):
        return SVIState({"a": jnp.full((2, 1), jnp.inf)}, None, None, state.step + n), SVIInfo(jnp.ones((n, 2)))

    with pytest.raises(FloatingPointError, match=r"parameter \['a'\] became non-finite by step 10"):
        run_svi(bad_params, state, None, 30, chunk=10, progress=False)
