"""Model criticism: per-pair log-likelihood, the regime check, and compare's child process.

The fits' log_likelihood groups are tested beside the fits they reuse (test_inference.py, test_observed.py,
test_biols.py); here the posteriors are built by hand near the simulator's truth (no fitting)."""

import json

import numpy as np
import pytest
from scipy.stats import multivariate_normal

from latentscm.inference.decoders import IdentityDecoder, LinearDecoder, NetworkDecoder
from latentscm.criticism import criticise, loo_metrics, regime_check
from latentscm.data import Dataset, SimulationConfig, simulate
from latentscm.inference import Posterior

SMALL = SimulationConfig(d=3, D=10, n_pairs=400, n_regimes=8, rows_per_regime=50, n_test_regimes=3)
TAU = 0.1


@pytest.fixture(scope="module")
def data():
    return simulate(SMALL, 0)


def truth_posterior(dataset, S=40, *, W=None, sigma=None, seed=0, jitter=5e-4, **config):
    """Draws at the simulator's truth, the decoder jittered a little (PSIS needs draws that differ)."""
    rng = np.random.default_rng(seed)
    d, D = dataset.d, dataset.D
    W = dataset.weights if W is None else W
    sigma = dataset.noise_scales if sigma is None else sigma
    A = dataset.projection[None] + jitter * rng.normal(size=(S, d, D))
    return Posterior(method="collapsed", W=np.repeat(np.asarray(W)[None], S, 0),
                     noise_scales=np.repeat(np.asarray(sigma)[None], S, 0), orders=np.tile(np.arange(d), (S, 1)),
                     decoder=LinearDecoder(A, np.zeros((S, D)), np.full(S, 0.1), value_scale=2.0,
                                           pairs=config.get("use_pairs", False)),
                     latent_mean=dataset.z, latent_scale=np.zeros_like(dataset.z), elbo=np.zeros(0), seconds=0.0,
                     tau=TAU, info={"config": {"value_scale": 2.0, **config}})


def _pair_density(post, s, rows, x, targets, values):
    """Brute force: the Gaussian of the stacked rows of one unit (shared exogenous noise) under draw s."""
    W, sigma, A = post.W[s], post.noise_scales[s], post.decoder["A"][s]
    d = len(sigma)
    C = [np.linalg.inv(np.eye(d) - W * (1 - targets[r])[None, :]) for r in rows]
    mean = np.concatenate([(values[r] * targets[r]) @ c @ A for r, c in zip(rows, C)])
    blocks = [[c1.T @ np.diag((1 - targets[r1]) * (1 - targets[r2]) * sigma**2
                              + (r1 == r2) * targets[r1] * TAU**2) @ c2 for r2, c2 in zip(rows, C)]
              for r1, c1 in zip(rows, C)]
    Ab = np.kron(np.eye(len(rows)), A)
    cov = Ab.T @ np.block(blocks) @ Ab + post.decoder["obs_scale"][s] ** 2 * np.eye(Ab.shape[1])
    return multivariate_normal(mean, cov).logpdf(np.concatenate([x[r] for r in rows]))


def test_pair_log_likelihood_is_the_joint_density_in_pair_id_order():
    rng = np.random.default_rng(3)
    d, D, N = 2, 4, 10
    t = np.zeros((N, d), np.int8)
    t[5:, 0] = 1
    v = np.where(t > 0, rng.normal(size=(N, d)), 0.0)
    pair = np.array([7, 3, 11, 5, 9, 3, 7, 40, 5, 11])  # rows 4 and 7: units of one row
    weights = np.array([[0.0, 0.8], [0.0, 0.0]])
    sim = Dataset.from_arrays(rng.normal(size=(N, D)), t, v, pair=pair, weights=weights,
                              noise_scales=np.array([1.0, 0.7]), projection=rng.normal(size=(d, D)))
    for use_pairs in (True, False):
        post = truth_posterior(sim, S=2, jitter=0.1, use_pairs=use_pairs)
        ll = post.log_likelihood(sim, by="pair")
        assert ll.shape == (2, 6)
        for u, pid in enumerate(np.unique(pair)):
            rows = list(np.flatnonzero(pair == pid))
            for s in range(2):
                want = (_pair_density(post, s, rows, sim.x, t, v) if use_pairs else
                        sum(_pair_density(post, s, [r], sim.x, t, v) for r in rows))
                np.testing.assert_allclose(ll[s, u], want, rtol=1e-6)
    np.testing.assert_allclose(post.log_likelihood(sim).sum(1), ll.sum(1))  # rows: the same total
    with pytest.raises(ValueError, match="needs pair ids"):
        post.log_likelihood(Dataset.from_arrays(sim.x, t, v), by="pair")


def test_row_log_likelihood_does_not_depend_on_the_row_blocks(monkeypatch):
    """Rows are scored per pattern in blocks (the power of two holding the median pattern, at most _LL_ROWS): any
    block size, padded or spanning several blocks, gives the same densities."""
    import latentscm.inference.decoders as decoders
    from latentscm.models.collapsed import group_block

    assert group_block(np.repeat(np.arange(16), 250), 512) == 256 and group_block(np.array([0, 0, 0, 1]), 512) == 8
    assert group_block(np.repeat([0, 1], [5000, 4000]), 512) == 512
    rng = np.random.default_rng(4)
    d, D, N = 3, 6, 100
    t = np.zeros((N, d), np.int8)  # patterns of 70, 3, 12 and 15 rows
    t[70:73, 0] = t[73:85, 1] = 1
    t[85:, :2] = 1
    v = np.where(t > 0, rng.normal(size=(N, d)), 0.0)
    sim = Dataset.from_arrays(rng.normal(size=(N, D)), t, v, weights=np.triu(rng.normal(size=(d, d)), 1),
                              noise_scales=np.ones(d), projection=rng.normal(size=(d, D)))
    post = truth_posterior(sim, S=20, jitter=0.1)
    blocked = post.log_likelihood(sim)  # the median pattern (13.5 rows): blocks of 16
    monkeypatch.setattr(decoders, "group_block", lambda group, most: 4)
    np.testing.assert_allclose(post.log_likelihood(sim), blocked, rtol=1e-12)
    monkeypatch.setattr(decoders, "group_block", lambda group, most: 128)
    np.testing.assert_allclose(post.log_likelihood(sim), blocked, rtol=1e-12)


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_loo_and_group_of_a_hand_built_posterior(data):
    import arviz as az

    train, test = data
    good = truth_posterior(train, S=100)  # PSIS's k is noisy with few draws
    tree = good.to_arviz(train)
    group = tree["log_likelihood"]
    assert group["x"].dims == ("chain", "draw", "pair") and group["x"].shape == (1, 100, 400)
    assert group.attrs["unit"] == "pair"
    assert good.to_arviz(test)["log_likelihood"]["x"].dims == ("chain", "draw", "obs")
    metrics = loo_metrics(tree)
    assert np.isfinite(metrics["loo"]) and metrics["loo_se"] > 0 and metrics["loo_k_max"] < 0.7
    wrong = truth_posterior(train, S=100, W=np.zeros((3, 3)))
    ranked = az.compare({"truth": tree, "no edges": wrong.to_arviz(train)}, round_to="none")
    assert list(ranked.index) == ["truth", "no edges"] and ranked["elpd_diff"].iloc[1] < -100
    assert np.isnan(loo_metrics(good.to_arviz())["loo"])  # no group: NaN


def test_regime_check_passes_the_truth_and_flags_misspecification(data, tmp_path):
    from latentscm.plots import save_figure
    from latentscm.plots_checks import plot_regime_check

    train, _ = data
    good = regime_check(truth_posterior(train), train, seed=1)
    assert good.mean.shape == (9, 3) and good.cov_rep.shape == (100, 9, 3, 3)
    assert not good.failed.any() and good.problems() == []
    assert np.nanmin(np.r_[good.p_mean, good.p_cov]) > good.threshold
    for wrong in (truth_posterior(train, W=np.zeros((3, 3))), truth_posterior(train, sigma=1.5 * train.noise_scales)):
        bad = regime_check(wrong, train, seed=1)
        assert bad.failed.sum() >= 4 and "posterior predictive check" in bad.problems()[0]
        assert bad.metrics()["ppc_failed"] == bad.failed.sum() and bad.metrics()["ppc_min_p"] < 1e-6
    doc = json.loads(json.dumps(bad.to_json()))
    assert len(doc["regimes"]) == 9 and {"p_mean", "p_cov", "kl_cov", "failed"} <= set(doc["regimes"][0])
    assert save_figure(plot_regime_check(bad), tmp_path / "ppc.png").stat().st_size > 0


def test_criticise_identity_decoder_and_no_decoder_function(data):
    train, _ = data
    z = Dataset.from_arrays(train.z, train.targets, train.values, regime=train.regime)
    post = truth_posterior(train)
    identity = Posterior(**{**post.__dict__, "decoder": IdentityDecoder()})
    result = criticise(identity, z)
    assert result.check.basis.startswith("nodes") and result.metrics["ppc_failed"] == 0
    assert result.tree["log_likelihood"]["x"].dims == ("chain", "draw", "obs")
    mlp = Posterior(**{**post.__dict__, "decoder": NetworkDecoder({"w0": np.zeros((40, 3, 4)), "obs_scale": np.full(40, 0.1)})})
    result = criticise(mlp, train)  # no density, no decoder function: nothing to check, nothing said
    assert result.check is None and np.isnan(result.metrics["loo"]) and result.problems == []
    assert "log_likelihood" not in result.tree.children


# ------------------------------------------------------------------------------------------ compare's child


def test_compare_child_propagates_a_bad_setting(data, tmp_path, monkeypatch):
    from latentscm.compare import run_fit_process

    monkeypatch.setenv("LATENTSCM_JAX_CACHE", "off")
    path = data[0].save(tmp_path / "train.npz")
    with pytest.raises(ValueError, match=r"collapsed-seed0: unknown setting\(s\) \['stepz'\]"):
        run_fit_process(path, tmp_path / "fits", config={"stepz": 3})
    assert not (tmp_path / "fits" / "collapsed-seed0.json").exists()


def test_compare_child_returns_metrics_with_loo(data, tmp_path, monkeypatch):
    """The child's work in this process, with the fit replaced by a hand-built posterior."""
    import latentscm.cli
    import latentscm.compare as compare
    import latentscm.inference

    train, test = data
    monkeypatch.setattr(latentscm.cli, "enable_compilation_cache", lambda: None)
    monkeypatch.setattr(latentscm.inference, "fit", lambda dataset, *a, **k: truth_posterior(dataset))
    settings = {"data": str(train.save(tmp_path / "train.npz")), "test": str(test.save(tmp_path / "test.npz")),
                "method": "collapsed", "seed": 0, "config": {}, "priors": {}, "out": str(tmp_path / "run"),
                "result": str(tmp_path / "m.json"), "error": str(tmp_path / "e.json")}
    metrics = compare._child(settings)
    assert {"heldout_nll", "loo", "loo_se", "loo_k_max", "ppc_min_p", "ppc_failed", "peak_rss_mb"} <= set(metrics)
    assert np.isfinite(metrics["loo"]) and metrics["ppc_failed"] == 0
    assert {"posterior.nc", "ppc.png", "ppc.json", "run.json"} <= {p.name for p in (tmp_path / "run").iterdir()}


@pytest.mark.slow  # a real fit in a child process: about 20-30 s, nearly all of it start-up and compilation
def test_compare_child_process_end_to_end(tmp_path, monkeypatch):
    from latentscm.compare import run_fit_process

    monkeypatch.setenv("LATENTSCM_JAX_CACHE", "off")
    cfg = SimulationConfig(d=3, D=3, design="iid", n_rows=200, n_regimes=4, rows_per_regime=50)
    train, _ = simulate(cfg, 0)
    observed = Dataset.from_arrays(train.z, train.targets, train.values, z=train.z, weights=train.weights)
    metrics = run_fit_process(observed.save(tmp_path / "obs.npz"), tmp_path / "fits", method="mcmc",
                              config={"decoder": "identity", "num_warmup": 50, "num_samples": 50, "num_chains": 2})
    assert metrics["method"] == "mcmc" and np.isfinite(metrics["loo"]) and metrics["wall_s"] > metrics["seconds"]
    assert metrics["peak_rss_mb"] > 50



def test_regime_check_with_inferred_targets(data):
    """Hidden targets: each replicate draws the regime's targets from the draw's target probabilities."""
    from latentscm.metrics import regime_table

    train, _ = data
    hidden = train.hide_targets([r for r in np.unique(train.regime) if train.targets[train.regime == r].any()])
    ids, truth = regime_table(train.regime, train.targets)
    post = truth_posterior(train)
    right = Posterior(**{**post.__dict__, "regimes": ids, "target_draws": np.repeat(truth[None], 40, 0).astype(float)})
    assert not regime_check(right, hidden, seed=2).failed.any()
    wrong = Posterior(**{**right.__dict__, "target_draws": np.zeros((40,) + truth.shape)})  # "nothing targeted"
    assert regime_check(wrong, hidden, seed=2).failed.sum() >= 4
