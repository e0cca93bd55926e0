"""fit(): validation before any work, and a seeded recovery run of the collapsed method."""

import networkx as nx
import numpy as np
import pytest

from latentscm.data import DataError, SimulationConfig, simulate
from latentscm.inference import METHODS, Posterior, fit
from latentscm.inference.initialise import initialise, order_score
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
    shuffled = Posterior(**{**posterior.__dict__, "decoder": posterior.decoder.replace(A=posterior.decoder["A"][:, ::-1])})
    assert np.isfinite(nll) and nll < shuffled.heldout_nll(test) - 1.0
    assert len(posterior.elbo) == 300 and np.mean(posterior.elbo[-30:]) > np.mean(posterior.elbo[:30])


@pytest.mark.filterwarnings("ignore:Estimated shape parameter of Pareto")
def test_log_likelihood_group_loo_and_compare(data, posterior):
    """The group holds the per-draw density heldout_nll reduces; az.loo and az.compare read it."""
    import arviz as az
    from scipy.special import logsumexp

    train, test = data
    group = posterior.to_arviz(test)["log_likelihood"]  # the test set has no pairs: one entry per row
    assert group["x"].dims == ("chain", "draw", "obs") and group["x"].shape == (1, 100, test.N)
    ll = group["x"].values[0]
    np.testing.assert_allclose(-np.mean(logsumexp(ll, axis=0) - np.log(len(ll))), posterior.heldout_nll(test),
                               rtol=1e-12)
    tree = posterior.to_arviz(train)  # paired training rows: one entry per pair, the two rows' sum
    assert tree["log_likelihood"]["x"].dims == ("chain", "draw", "pair") and tree["log_likelihood"].attrs["unit"] == "pair"
    np.testing.assert_allclose(tree["log_likelihood"]["x"].values[0].sum(1), posterior.log_likelihood(train).sum(1))
    loo = az.loo(tree)
    assert np.isfinite(loo.elpd) and loo.se > 0
    shuffled = Posterior(**{**posterior.__dict__, "decoder": posterior.decoder.replace(A=posterior.decoder["A"][:, ::-1])})
    ranked = az.compare({"fit": tree, "shuffled decoder": shuffled.to_arviz(train)})
    assert list(ranked.index) == ["fit", "shuffled decoder"]


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


@pytest.mark.parametrize("name", sorted(METHODS))
def test_registry_entry_builds_its_settings_and_decoders(name):
    """Each registered method's defaults validate, every decoder the registry lists is a valid setting, and
    unknown settings and decoders are refused by name."""
    import dataclasses

    from latentscm.inference.api import make_config

    spec = METHODS[name]
    assert isinstance(make_config(name), spec.config)
    if "decoder" in {f.name for f in dataclasses.fields(spec.config)}:
        for decoder in spec.decoders:
            assert make_config(name, {"decoder": decoder}).decoder == decoder
        with pytest.raises(ValueError, match="decoder"):
            make_config(name, {"decoder": "no_such_decoder"})
    with pytest.raises(ValueError, match="no_such_setting"):
        make_config(name, {"no_such_setting": 1})


def test_run_svi_stops_on_non_finite_loss_with_step_number():
    import jax
    import jax.numpy as jnp

    from latentscm.inference.svi import SVIInfo, SVIState, run_svi

    def step_fn(state, data, n):  # a fake step whose loss turns NaN in the second chunk
        step = state.step + n
        loss = jnp.where(jnp.arange(n)[:, None] + state.step >= 13, jnp.nan, 1.0) * jnp.ones((n, 2))
        return SVIState(state.params, state.opt_state, state.rng_key, step), SVIInfo(loss)

    state = SVIState({"a": jnp.zeros((2, 1))}, None, None, jnp.zeros((), jnp.int32))
    with pytest.raises(FloatingPointError, match="non-finite.*at step 13 \\(restart 0\\)"):
        run_svi(jax.jit(step_fn, static_argnums=2), state, None, 30, chunk=10, progress=False)

    def bad_params(state, data, n):
        return SVIState({"a": jnp.full((2, 1), jnp.inf)}, None, None, state.step + n), SVIInfo(jnp.ones((n, 2)))

    with pytest.raises(FloatingPointError, match=r"parameter \['a'\] became non-finite by step 10"):
        run_svi(jax.jit(bad_params, static_argnums=2), state, None, 30, chunk=10, progress=False)


class _Interrupt(Exception):
    pass


def _interrupted_fit(train, config, stop):
    """``fit(train, config, seed=3)`` stopped by an exception where ``stop(run, losses)`` says (``run``: 1 for the
    fit's first run of SVI steps, 2 for its second; checked after each chunk, as a Ctrl-C would land)."""
    import latentscm.inference.svi as svi

    original, runs = svi.run_svi, []

    def callback(state, losses):
        if stop(len(runs), losses):
            raise _Interrupt

    def run_and_interrupt(*args, **kwargs):
        runs.append(1)
        return original(*args, **kwargs, callback=callback)

    svi.run_svi = run_and_interrupt  # solve's
    try:
        with pytest.raises(_Interrupt):
            fit(train, config=config, seed=3, progress=False)
    finally:
        svi.run_svi = original


@pytest.mark.slow
def test_checkpoint_resume_matches_uninterrupted_run(data, tmp_path):
    train, _ = data
    cfg = {"steps": 200, "num_draws": 20, "chunk": 50, "checkpoint_every": 100}
    full = fit(train, config={**cfg, "checkpoint_dir": str(tmp_path / "a")}, seed=3, progress=False)

    _interrupted_fit(train, {**cfg, "checkpoint_dir": str(tmp_path / "b")}, lambda run, losses: len(losses) >= 100)
    assert (tmp_path / "b" / "checkpoint.npz").exists()
    resumed = fit(train, config={**cfg, "checkpoint_dir": str(tmp_path / "b")}, seed=3, progress=False)
    np.testing.assert_allclose(resumed.elbo, full.elbo, rtol=1e-10)
    np.testing.assert_allclose(resumed.W, full.W, atol=1e-10)
    # another run's checkpoint is refused, a corrupt one too
    with pytest.raises(ValueError, match="belongs to another run.*seed"):
        fit(train, config={**cfg, "checkpoint_dir": str(tmp_path / "b")}, seed=4, progress=False)
    (tmp_path / "b" / "checkpoint.npz").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt"):
        fit(train, config={**cfg, "checkpoint_dir": str(tmp_path / "b")}, seed=3, progress=False)


def test_pair_warmup_split():
    """With pairs the first pair_warmup of the steps fit the rows as independent, at least one step left paired;
    by default (None) half of them up to d = 5 and none above."""
    from latentscm.inference.collapsed import CollapsedConfig, warmup_split

    assert warmup_split(CollapsedConfig(steps=1000), 5) == (0, 1000)  # no pairs: no warm-up
    assert warmup_split(CollapsedConfig(steps=1000, use_pairs=True), 5) == (500, 500)
    assert warmup_split(CollapsedConfig(steps=1000, use_pairs=True), 6) == (0, 1000)
    assert warmup_split(CollapsedConfig(steps=1000, use_pairs=True, pair_warmup=0.25), 10) == (250, 750)
    assert warmup_split(CollapsedConfig(steps=1000, use_pairs=True, pair_warmup=0.0), 5) == (0, 1000)
    assert warmup_split(CollapsedConfig(steps=1, use_pairs=True, pair_warmup=0.9), 5) == (0, 1)
    assert warmup_split(CollapsedConfig(steps=10, use_pairs=True, pair_warmup=0.99), 5) == (9, 1)
    with pytest.raises(ValueError, match="pair_warmup"):
        CollapsedConfig(use_pairs=True, pair_warmup=1.0)


@pytest.mark.slow
def test_paired_fit_warms_up_and_resumes_in_its_paired_steps(data, tmp_path):
    """A paired fit runs its warm-up without pairs, then the paired steps from the warm-up's parameters (the ELBO
    trace holds both); interrupted in the paired steps it resumes from both checkpoints to the same numbers."""
    train, _ = data
    cfg = {"steps": 200, "num_draws": 20, "chunk": 50, "checkpoint_every": 50, "use_pairs": True,
           "refit_on_misfit": 0}  # 200 steps fail the moment check: no refit here (its own test above)
    full = fit(train, config={**cfg, "checkpoint_dir": str(tmp_path / "a")}, seed=3, progress=False)
    assert full.info["pair_warmup_steps"] == 100 and len(full.elbo) == 200
    assert (tmp_path / "a" / "checkpoint-unpaired.npz").exists() and (tmp_path / "a" / "checkpoint.npz").exists()
    # the paired steps score the pairs jointly: their ELBO differs from the warm-up's unpaired one at the switch
    assert abs(full.elbo[100] - full.elbo[99]) > 10 * abs(full.elbo[99] - full.elbo[98])

    # interrupted in the second run of the steps (the paired ones) after 50 steps
    _interrupted_fit(train, {**cfg, "checkpoint_dir": str(tmp_path / "b")},
                     lambda run, losses: run == 2 and len(losses) >= 50)
    resumed = fit(train, config={**cfg, "checkpoint_dir": str(tmp_path / "b")}, seed=3, progress=False)
    np.testing.assert_allclose(resumed.elbo, full.elbo, rtol=1e-10)
    np.testing.assert_allclose(resumed.W, full.W, atol=1e-10)


def test_svi_checkpoint_resume_is_exact_and_validated(tmp_path):
    """Engine level (no model): a resumed run equals an uninterrupted one; bad checkpoints are refused."""
    import jax
    import jax.numpy as jnp
    import optax

    from latentscm.inference.svi import Checkpoint, init, make_step, run_svi

    def loss_fn(params, key, temperature, data):
        noise = jax.random.normal(key, params["w"].shape)
        return jnp.sum((params["w"] - data + 0.1 * noise) ** 2) * temperature

    opt = optax.adam(0.05)
    step = make_step(loss_fn, opt, lambda s: 1.0)
    data = jnp.arange(3.0)
    start = init(jax.random.PRNGKey(0), {"w": jnp.zeros((2, 3))}, opt)
    full, full_losses = run_svi(step, start, data, 60, chunk=7, progress=False)
    ck = Checkpoint(tmp_path / "c.npz", 20, {"seed": 0})

    def stop(state, losses):
        if len(losses) >= 30:
            raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        run_svi(step, start, data, 60, chunk=7, progress=False, checkpoint=ck, callback=stop)
    resumed, losses = run_svi(step, start, data, 60, chunk=7, progress=False, checkpoint=ck)
    np.testing.assert_array_equal(losses, full_losses)
    np.testing.assert_array_equal(resumed.params["w"], full.params["w"])
    with pytest.raises(ValueError, match=r"another run \(differs in \['seed'\]\)"):
        run_svi(step, start, data, 60, progress=False, checkpoint=ck._replace(fingerprint={"seed": 1}))
    (tmp_path / "c.npz").write_bytes(b"garbage")
    with pytest.raises(ValueError, match="corrupt"):
        run_svi(step, start, data, 60, progress=False, checkpoint=ck)


def test_collapsed_order_margin_defaults_wider_with_pairs():
    """logit_scale None -> a margin of 4, or 8 with use_pairs (the paired likelihood is much sharper); explicit wins."""
    from latentscm.inference.collapsed import CollapsedConfig
    from latentscm.inference.guide import order_margin

    assert CollapsedConfig().logit_scale is None and order_margin(CollapsedConfig()) == 4.0
    assert order_margin(CollapsedConfig(use_pairs=True)) == 8.0
    assert order_margin(CollapsedConfig(use_pairs=True, logit_scale=5.0)) == 5.0
    with pytest.raises(ValueError, match="logit_scale"):
        CollapsedConfig(logit_scale=0.0)


def test_use_pairs_without_pair_ids_is_refused_before_work():
    """use_pairs on data without pair ids (or with no id shared by two rows) is an error for every method
    that has the setting, not a silent fall-back to single rows."""
    from latentscm.data import Dataset

    iid, _ = simulate(SimulationConfig(d=3, D=6, design="iid", n_rows=60, n_regimes=4), 0)
    for method in ("collapsed", "amortized"):
        with pytest.raises(DataError, match="needs pair ids"):
            fit(iid, method=method, config={"use_pairs": True}, progress=False)
    lonely = Dataset.from_arrays(iid.x, iid.targets, iid.values, pair=np.arange(iid.N))
    with pytest.raises(DataError, match="no pair id is shared"):
        fit(lonely, method="collapsed", config={"use_pairs": True}, progress=False)


def test_same_seed_gives_bit_identical_fits_under_any_hash_seed(tmp_path):
    """NumPyro sums the ELBO's site terms in set order (string-hash dependent); ours sums them sorted, so
    two processes with different PYTHONHASHSEED give the same bits (and hit the compilation cache)."""
    import os
    import subprocess
    import sys

    script = (
        "from latentscm.data import SimulationConfig, simulate\n"
        "from latentscm.inference import fit\n"
        "tr, _ = simulate(SimulationConfig(d=3, D=8, n_pairs=60, n_regimes=3, rows_per_regime=20), 0)\n"
        "p = fit(tr, 'collapsed', config={'steps': 20, 'num_draws': 4, 'num_restarts': 1}, seed=0, progress=False)\n"
        "print(repr(float(p.elbo[-1])), repr(float(p.W.sum())))\n")
    out = []
    for hash_seed in ("1", "2"):
        env = dict(os.environ, PYTHONHASHSEED=hash_seed, JAX_PLATFORMS="cpu")
        run = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=300)
        assert run.returncode == 0, run.stderr[-2000:]
        out.append(run.stdout.strip().splitlines()[-1])
    assert out[0] == out[1]


def test_scaled_settings_keep_the_paired_margin():
    from latentscm.inference.collapsed import scaled_settings

    assert scaled_settings(5) == {} and scaled_settings(5, use_pairs=True) == {"use_pairs": True}
    assert scaled_settings(20)["logit_scale"] == round(np.log(400), 2)  # log(20 d) = 5.99
    assert scaled_settings(20, use_pairs=True)["logit_scale"] == 8.0 and scaled_settings(20, True)["use_pairs"]
    assert scaled_settings(100, use_pairs=True)["logit_scale"] == 8.0  # log(20 d) = 7.6 < 8
    assert scaled_settings(200, use_pairs=True)["logit_scale"] == round(np.log(4000), 2)  # 8.29


@pytest.mark.parametrize("numbers", [None, 2 * 16 * 9])
def test_latent_summaries_blocks_match_the_exact_posterior(numbers, monkeypatch):
    """The blocked latent summaries (patterns of 3 to 70 rows, blocks of one size: the large pattern spans
    several blocks, the small ones are padded; single rows in precision form; known and unknown values) equal the
    mixture moments of each row's exact posterior (the factor form of unit_latent_posterior). ``numbers``: a
    size budget that allows 2 draws per call: the 5 draws go in 3 calls of 2, the last padded with weight 0."""
    import jax

    import latentscm.inference.collapsed as collapsed

    if numbers is not None:
        monkeypatch.setattr(collapsed, "_SUMMARY_NUMBERS", numbers)

    from latentscm.data import Dataset
    from latentscm.inference.collapsed import latent_summaries
    from latentscm.models.collapsed import make_units, unit_latent_posterior

    rng = np.random.default_rng(0)
    S, d, D = 5, 3, 6
    targets = np.zeros((100, d), np.int8)  # patterns of 70 (observational), 3, 12 and 15 rows
    targets[70:73, 0] = targets[73:85, 1] = 1
    targets[85:, :2] = 1
    values = np.where(targets, rng.normal(size=(100, d)), 0.0)
    values[85:, 1] = np.nan  # unknown values too (integrated out under N(0, value_scale^2))
    train = Dataset.from_arrays(rng.normal(size=(100, D)), targets, values)
    draws = {"W": np.triu(rng.normal(size=(S, d, d)), 1), "noise_scale": rng.uniform(0.5, 1.5, (S, d)),
             "decoder_weight": rng.normal(size=(S, d, D)), "decoder_bias": rng.normal(size=(S, D)),
             "obs_scale": rng.uniform(0.2, 0.4, S)}
    units = make_units(train.x, train.targets, train.values)
    m1, m2 = np.zeros((train.N, d)), np.zeros((train.N, d))
    with jax.enable_x64(True):  # as fit_collapsed calls it
        mean, sd = latent_summaries(train, draws, 0.1, units=units, value_scale=2.0)
        for u in units:
            for s in range(S):
                mu, cov = unit_latent_posterior(u, *(draws[k][s] for k in draws), 0.1, 2.0)
                rows = u.rows.reshape(-1)
                mu = np.asarray(mu).reshape(len(rows), d)
                var = np.diagonal(np.asarray(cov).reshape(len(u.x), u.x.shape[1] * d, -1), axis1=1, axis2=2)
                m1[rows] += mu / S
                m2[rows] += (mu**2 + var.reshape(len(rows), d)) / S
    np.testing.assert_allclose(mean, m1, rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(sd, np.sqrt(m2 - m1**2), rtol=1e-5, atol=1e-8)


def test_run_svi_compiles_every_chunk_length_before_after_compile():
    """run_svi compiles its chunk programs (one per chunk length) before any step, then calls after_compile once;
    nothing is traced while the steps run (what lets collapsed trace its order weighing in a thread)."""
    import jax
    import jax.numpy as jnp

    from latentscm.inference.svi import SVIInfo, SVIState, run_svi

    traced, events = [], []

    def step_fn(state, data, n):
        traced.append(n)
        return SVIState(state.params, state.opt_state, state.rng_key, state.step + n), SVIInfo(jnp.ones((n, 2)))

    state = SVIState({"a": jnp.zeros((2, 1))}, None, None, jnp.zeros((), jnp.int32))
    _, losses = run_svi(jax.jit(step_fn, static_argnums=2), state, None, 25, chunk=10, progress=False,
                        after_compile=lambda: events.append(list(traced)),
                        callback=lambda s, losses: events.append(len(losses)))
    assert sorted(traced) == [5, 10] and events == [[5, 10], 10, 20, 25] and losses.shape == (25, 2)


def test_fit_failing_its_moment_check_is_redone_with_twice_the_steps(data, monkeypatch, tmp_path):
    """A fit that fails the moment check runs again with twice the steps (refit_on_misfit; by default once up to
    d = 5, never above) and the better is kept: the one that passes, else the higher ELBO; ``info["refits"]``
    says why and which, the refit checkpoints in ``refit/``, and fit(...) does not run the check again. The fits
    themselves are stand-ins here (their ELBO falls with the steps); a real one: the slow test below."""
    import dataclasses

    import latentscm.inference.collapsed as collapsed
    from latentscm.inference.collapsed import CollapsedConfig, refits
    from latentscm.inference.decoders import LinearDecoder

    train = data[0]
    d5, d6 = (simulate(SimulationConfig(d=d, D=12, n_pairs=20, n_regimes=2, rows_per_regime=10), 0)[0] for d in (5, 6))
    unknown = dataclasses.replace(train, targets=np.full(train.targets.shape, np.nan), regime=train.regime)
    assert refits(CollapsedConfig(), d5) == 1 and refits(CollapsedConfig(), d6) == 0
    assert refits(CollapsedConfig(), unknown) == 1 and refits(CollapsedConfig(refit_on_misfit=3), d6) == 3
    S, d, D = 4, train.d, train.D
    fits, verdicts = [], {}

    def fit_once(dataset, config, priors, seed, progress):
        fits.append(config)
        return Posterior(method="collapsed", W=np.tile(train.weights, (S, 1, 1)), noise_scales=np.ones((S, d)),
                         orders=np.tile(np.arange(d), (S, 1)), decoder=LinearDecoder(
                             np.tile(train.projection, (S, 1, 1)), np.zeros((S, D)), np.ones(S)),
                         latent_mean=train.z, latent_scale=np.ones_like(train.z), elbo=np.zeros(config.steps),
                         seconds=1.0, info={"config": dataclasses.asdict(config), "restart_elbo": [-config.steps],
                                            "best_restart": 0, "refits": []})

    monkeypatch.setattr(collapsed, "_fit_once", fit_once)
    monkeypatch.setattr(collapsed, "posterior_moment_problems", lambda dataset, p: verdicts[p.info["config"]["steps"]])
    verdicts |= {20: ["posterior predictive check: first"], 40: []}  # the refit passes: kept
    post = fit(train, config={"steps": 20, "checkpoint_dir": str(tmp_path)}, seed=0, progress=False)
    assert [c.steps for c in fits] == [20, 40] and fits[1].checkpoint_dir == str(tmp_path / "refit")
    assert fits[1].refit_on_misfit == 0 and not post.diagnostics
    assert post.info["refits"] == [{"steps": 20, "misfit": "posterior predictive check: first", "elbo": -20,
                                    "refit_elbo": -40, "kept": "refit"}]
    assert len(post.elbo) == 40 and post.info["moment_problems"] == []

    fits.clear()  # both fail: the higher ELBO (the first's) is kept, and fit(...) reports its problems
    verdicts[40] = ["posterior predictive check: refit"]
    with pytest.warns(UserWarning, match="posterior predictive check: first"):
        post = fit(train, config={"steps": 20}, seed=0, progress=False)
    assert post.info["refits"][0]["kept"] == "first" and len(post.elbo) == 20
    assert post.diagnostics == ["posterior predictive check: first"]

    def diverging(dataset, config, *args):
        if config.steps > 20:
            raise FloatingPointError("SVI: the loss became nan")
        return fit_once(dataset, config, *args)

    fits.clear()  # the refit diverges: the first fit stands, and says why
    monkeypatch.setattr(collapsed, "_fit_once", diverging)
    with pytest.warns(UserWarning, match="posterior predictive check: first"):
        post = fit(train, config={"steps": 20}, seed=0, progress=False)
    assert post.info["refits"] == [{"steps": 20, "misfit": "posterior predictive check: first", "elbo": -20,
                                    "refit_error": "SVI: the loss became nan", "kept": "first"}]
    assert len(post.elbo) == 20

    monkeypatch.setattr(collapsed, "_fit_once", fit_once)
    fits.clear()  # none allowed: one fit, not checked in it; fit(...) runs the real check (the stand-in misses)
    with pytest.warns(UserWarning, match="misses the second moments"):
        post = fit(train, config={"steps": 20, "refit_on_misfit": 0}, seed=0, progress=False)
    assert len(fits) == 1 and post.info["refits"] == [] and "moment_problems" not in post.info


@pytest.mark.slow
def test_a_real_refit_doubles_the_steps_and_checkpoints_apart(data, monkeypatch, tmp_path):
    """The same with real fits: the refit's ELBO trace is twice as long, its checkpoint in ``refit/``."""
    import latentscm.inference.collapsed as collapsed

    verdicts = [["posterior predictive check: stand-in"], []]
    monkeypatch.setattr(collapsed, "posterior_moment_problems", lambda dataset, posterior: verdicts.pop(0))
    cfg = {"steps": 20, "num_draws": 20, "chunk": 10, "checkpoint_dir": str(tmp_path)}
    post = fit(data[0], config=cfg, seed=0, progress=False)
    assert verdicts == [] and post.info["refits"][0]["kept"] == "refit" and len(post.elbo) == 40
    assert (tmp_path / "checkpoint.npz").exists() and (tmp_path / "refit" / "checkpoint.npz").exists()
