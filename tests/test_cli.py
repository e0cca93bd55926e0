"""Command line and run folders: user errors exit with code 2 before any fitting; outputs are complete."""

import dataclasses
import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from latentscm.cli import QUICK_FIT, main  # noqa: E402
from latentscm.inference.decoders import LinearDecoder  # noqa: E402
from latentscm.data import Dataset, SimulationConfig, simulate  # noqa: E402
from latentscm.runs import atomic_write, run_metrics, write_json, write_run  # noqa: E402

TINY = SimulationConfig(d=3, D=10, n_pairs=200, n_regimes=4, rows_per_regime=50)
RUN_FILES = {"posterior.nc", "metrics.json", "run.json", "edge_probabilities.png", "order_probabilities.png",
             "elbo.png", "latents.png", "ppc.png", "ppc.json"}
TRUTH_KEYS = {"e_shd", "e_shd_double", "auroc", "auprc", "mcc", "edge_rmse"}


@pytest.fixture(scope="module")
def tiny():
    return simulate(TINY, 0)


@pytest.fixture
def tiny_file(tiny, tmp_path):
    return tiny[0].save(tmp_path / "train.npz")


def fake_posterior(dataset, method="collapsed", seed=0, steps=50, S=20):
    """A Posterior built by hand near the truth of ``dataset`` (no fitting)."""
    from latentscm.inference import Posterior

    rng = np.random.default_rng(seed)
    d, big_d = dataset.d, dataset.D
    order = np.array(sorted(range(d), key=lambda j: -np.abs(dataset.weights[:, j]).sum()))
    return Posterior(
        method=method,
        W=dataset.weights + 0.05 * rng.normal(size=(S, d, d)) * (dataset.weights != 0),
        noise_scales=np.abs(dataset.noise_scales + 0.01 * rng.normal(size=(S, d))),
        orders=np.tile(order, (S, 1)),
        decoder=LinearDecoder(np.broadcast_to(dataset.projection, (S, d, big_d)).copy(), np.zeros((S, big_d)), np.full(S, 0.1)),
        latent_mean=dataset.z + 0.01 * rng.normal(size=dataset.z.shape),
        latent_scale=np.full(dataset.z.shape, 0.01),
        elbo=-np.geomspace(1e4, 1e2, steps),
        seconds=1.5,
    )


@pytest.fixture
def fake_fit(monkeypatch):
    """Replace ``latentscm.inference.fit`` by a recorder returning :func:`fake_posterior`."""
    import latentscm.inference

    calls = []

    def fit(dataset, method="collapsed", *, config=None, priors=None, seed=0, progress=True):
        calls.append({"dataset": dataset, "method": method, "config": config, "priors": priors, "seed": seed})
        return fake_posterior(dataset, method, seed)

    monkeypatch.setattr(latentscm.inference, "fit", fit)
    return calls


@pytest.fixture
def no_fit(monkeypatch):
    """Fail the test if anything reaches ``latentscm.inference.fit``."""
    import latentscm.inference

    def fit(*args, **kwargs):
        pytest.fail("fit was called although the input is invalid")

    monkeypatch.setattr(latentscm.inference, "fit", fit)


def write_npz(path, **arrays):
    np.savez(path, **arrays)
    return path


def write_toml(path, text):
    path.write_text(text)
    return path


def run_cli(argv, capsys):
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


# ------------------------------------------------------------------------------------------ bad input


def _good_arrays(n=20, d=3, big_d=4):
    rng = np.random.default_rng(0)
    targets = np.zeros((n, d), np.int8)
    targets[n // 2:, 0] = 1
    return {"x": rng.normal(size=(n, big_d)), "targets": targets, "values": targets * 1.5}


def _bad_data_cases(tmp_path):
    good = _good_arrays()
    nan_x = good | {"x": np.where(np.arange(good["x"].size).reshape(good["x"].shape) == 5, np.nan, good["x"])}
    twos = good | {"targets": good["targets"] * 2}
    missing_values = {k: v for k, v in good.items() if k != "values"}
    nan_values = good | {"values": np.where(good["targets"] == 1, np.nan, 0.0)}
    empty = {"x": np.zeros((0, 4)), "targets": np.zeros((0, 3), np.int8), "values": np.zeros((0, 3))}
    return {
        "nonexistent": (tmp_path / "missing.npz", "no such file"),
        "nan_in_x": (write_npz(tmp_path / "nan.npz", **nan_x), "non-finite"),
        "targets_not_binary": (write_npz(tmp_path / "twos.npz", **twos), "only 0 and 1"),
        "values_array_missing": (write_npz(tmp_path / "novalues.npz", **missing_values),
                                 'intervention values are missing where targets are 1'),
        "values_nan_where_targeted": (write_npz(tmp_path / "nanvalues.npz", **nan_values),
                                      'unknown_values = "latent"'),
        "empty": (write_npz(tmp_path / "empty.npz", **empty), "empty"),
        "not_npz": (write_toml(tmp_path / "text.npz", "hello"), "not a readable .npz"),
    }


@pytest.mark.parametrize("case", ["nonexistent", "nan_in_x", "targets_not_binary", "values_array_missing",
                                  "values_nan_where_targeted", "empty", "not_npz"])
def test_fit_rejects_bad_data(case, tmp_path, capsys, no_fit):
    path, message = _bad_data_cases(tmp_path)[case]
    code, out, err = run_cli(["fit", "--data", path, "--out", tmp_path / "run"], capsys)
    assert code == 2
    assert err.startswith("error: ")
    assert message in err
    assert not (tmp_path / "run").exists()


def test_unknown_method_lists_the_available_ones(tiny_file, tmp_path, capsys, no_fit):
    from latentscm.inference import METHODS

    code, _, err = run_cli(["fit", "--data", tiny_file, "--method", "nope"], capsys)
    assert code == 2
    assert "unknown method 'nope'" in err
    assert all(name in err for name in METHODS)


def test_unknown_method_is_reported_before_the_data_is_read(tmp_path, capsys, no_fit):
    code, _, err = run_cli(["fit", "--data", tmp_path / "missing.npz", "--method", "nope"], capsys)
    assert code == 2 and "unknown method" in err


@pytest.mark.parametrize("toml, message", [
    ('[priors]\nbogus = {dist = "normal", scale = 1.0}\n', "unknown prior name(s) ['bogus']"),
    ('[priors]\nedge_weight = {dist = "nonsense", scale = 1.0}\n', "unknown distribution 'nonsense'"),
    ('[priors]\nnoise_scale = {dist = "normal", scale = 1.0}\n', "positive reals"),
    ("[fit]\nno_such_setting = 3\n", "unknown setting(s) ['no_such_setting']"),
    ("[fit]\nsteps = -1\n", "steps must be an integer >= 1"),
    ('method = "collapsed"\nsteps = 200\n', "unknown top-level key(s) ['steps']"),
    ('method = 3\n', "method must be a string"),
    ('d = "five"\n', "d must be a positive integer"),
    ("this is = not toml ]\n", "not valid TOML"),
    ("d = 4\n", "says d = 4 but"),
])
def test_fit_rejects_bad_config(toml, message, tiny_file, tmp_path, capsys, no_fit):
    config = write_toml(tmp_path / "c.toml", toml)
    code, _, err = run_cli(["fit", "--data", tiny_file, "--config", config], capsys)
    assert code == 2
    assert err.startswith("error: ")
    assert message in err


def test_missing_config_file(tiny_file, tmp_path, capsys, no_fit):
    code, _, err = run_cli(["fit", "--data", tiny_file, "--config", tmp_path / "none.toml"], capsys)
    assert code == 2 and "not found" in err


def test_unwritable_outputs_are_reported_before_fitting(tiny_file, tmp_path, capsys, no_fit):
    (tmp_path / "file").write_text("")
    code, _, err = run_cli(["fit", "--data", tiny_file, "--out", tmp_path / "file"], capsys)
    assert code == 2 and "not a folder" in err
    code, _, err = run_cli(["fit", "--data", tiny_file, "--json", tmp_path], capsys)
    assert code == 2 and "is a folder" in err


def test_run_rejects_d_mismatch(tmp_path, capsys, no_fit):
    config = write_toml(tmp_path / "c.toml", "d = 3\n")
    code, _, err = run_cli(["run", "--config", config, "--out", tmp_path / "run"], capsys)
    assert code == 2 and "embedded default problem has d = 5" in err


def test_argparse_errors_exit_2(capsys, tmp_path):
    code, _, err = run_cli(["fit"], capsys)
    assert code == 2 and "--data FILE.npz is required" in err
    code, _, err = run_cli(["fit", "--resume", tmp_path], capsys)
    assert code == 2 and "no run.json there" in err
    code, _, err = run_cli(["fit", "--resume", tmp_path, "--data", "x.npz"], capsys)
    assert code == 2 and "not both" in err
    with pytest.raises(SystemExit) as e:
        main(["simulate", "--out", "x.npz", "--design", "grid"])
    assert e.value.code == 2


def test_simulate_rejects_inconsistent_settings(tmp_path, capsys):
    code, _, err = run_cli(["simulate", "--out", tmp_path / "a.npz", "--targets", "single", "--d", "5",
                            "--n-regimes", "3"], capsys)
    assert code == 2 and "n_regimes >= 5" in err
    assert not (tmp_path / "a.npz").exists()


# ------------------------------------------------------------------------------------------ simulate


def test_simulate_writes_loadable_files(tmp_path, capsys):
    code, out, _ = run_cli(["simulate", "--out", tmp_path / "sub" / "train.npz", "--test-out", tmp_path / "test.npz",
                            "--d", 3, "--D", 10, "--n-regimes", 4, "--rows-per-regime", 50, "--seed", 3], capsys)
    assert code == 0 and "train.npz" in out
    train, test = Dataset.load(tmp_path / "sub" / "train.npz"), Dataset.load(tmp_path / "test.npz")
    assert (train.N, train.d, train.D) == (400, 3, 10)
    assert train.has_truth and train.pair is not None
    assert (test.N, test.d, test.D) == (5 * 50, 3, 10)
    # same as the Python API with the same seed
    expected, _ = simulate(TINY, 3)
    np.testing.assert_allclose(train.x, expected.x)


@pytest.mark.parametrize("flags, shape", [
    (["--design", "iid", "--n-rows", 90, "--n-regimes", 4, "--d", 3, "--D", 7], (90, 3, 7)),
    (["--projection", "so", "--d", 4, "--n-regimes", 4, "--rows-per-regime", 10, "--targets", "single"],
     (80, 4, 4)),
    (["--projection", "mlp", "--graph", "sf", "--values", "uniform", "--n-regimes", 2, "--rows-per-regime", 10,
      "--d", 3, "--D", 6, "--edges-per-node", 2], (40, 3, 6)),
])
def test_simulate_options(flags, shape, tmp_path, capsys):
    code, _, _ = run_cli(["simulate", "--out", tmp_path / "a.npz", *flags], capsys)
    assert code == 0
    data = Dataset.load(tmp_path / "a.npz")
    assert (data.N, data.d, data.D) == shape


# ------------------------------------------------------------------------------------------ run folders


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "a.json"
    target.write_text("old")

    def failing(tmp):
        with open(tmp, "w") as fh:
            fh.write("partial")
        raise RuntimeError("boom")

    with pytest.raises(RuntimeError):
        atomic_write(target, failing)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.json"]


def test_write_json_turns_nan_into_null(tmp_path):
    write_json(tmp_path / "m.json", {"auroc": float("nan"), "n": np.int64(3), "x": np.float32(0.5)})
    assert json.loads((tmp_path / "m.json").read_text()) == {"auroc": None, "n": 3, "x": 0.5}


def test_write_run_files(tiny, tmp_path):
    import xarray as xr

    train, _ = tiny
    post = fake_posterior(train)
    metrics = run_metrics(post, train, seed=0)
    assert TRUTH_KEYS <= set(metrics)
    assert metrics["e_shd"] == 0 and metrics["mcc"] > 0.99
    out = write_run(tmp_path / "run", post, metrics, train, info={"note": "test"})
    assert {p.name for p in out.iterdir()} == RUN_FILES | {"dataset.npz"}
    assert json.loads((out / "metrics.json").read_text())["method"] == "collapsed"
    np.testing.assert_allclose(Dataset.load(out / "dataset.npz").x, train.x)
    tree = xr.open_datatree(out / "posterior.nc", engine="h5netcdf")
    assert tree["posterior"]["W"].shape == (1, 20, 3, 3)
    assert tree["log_likelihood"]["x"].dims == ("chain", "draw", "pair")  # tiny is paired: one entry per pair
    written = json.loads((out / "metrics.json").read_text())
    assert {"loo", "loo_se", "loo_k_max", "ppc_min_p", "ppc_failed"} <= set(written)
    assert json.loads((out / "ppc.json").read_text())["regimes"]


def test_write_run_without_truth_or_elbo(tiny, tmp_path):
    train, _ = tiny
    post = fake_posterior(train)
    post = dataclasses.replace(post, elbo=np.zeros(0))
    bare = Dataset.from_arrays(train.x, train.targets, train.values)
    metrics = run_metrics(post, bare)
    assert set(metrics) == {"method", "n", "d", "D", "seconds", "peak_rss_mb"}
    out = write_run(tmp_path / "run", post, metrics, bare, save_dataset=False)
    assert {p.name for p in out.iterdir()} == {"posterior.nc", "metrics.json", "edge_probabilities.png",
                                                "order_probabilities.png", "ppc.png", "ppc.json"}


def test_fit_command_plumbing(tiny_file, tmp_path, capsys, fake_fit):
    from latentscm.inference.collapsed import CollapsedConfig
    from latentscm.models.priors import parse_priors

    config = write_toml(tmp_path / "c.toml", 'method = "collapsed"\nd = 3\n[fit]\nsteps = 123\n'
                                            '[priors]\nedge_weight = {dist = "horseshoe", scale = 0.1}\n')
    code, out, _ = run_cli(["fit", "--data", tiny_file, "--config", config, "--seed", 7, "--out", tmp_path / "run",
                            "--json", tmp_path / "m.json"], capsys)
    assert code == 0
    (call,) = fake_fit
    # the settings are built once and passed on; the run folder doubles as the checkpoint folder, so that
    # `fit --resume` can continue the run
    assert call["config"] == CollapsedConfig(steps=123, checkpoint_dir=str(tmp_path / "run"))
    assert call["seed"] == 7 and call["method"] == "collapsed"
    assert call["priors"] == parse_priors({"edge_weight": {"dist": "horseshoe", "scale": 0.1}})
    assert "e_shd" in out and "run folder" in out
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"method", "seconds", "n", "d", "D"} | TRUTH_KEYS <= set(metrics)
    assert {p.name for p in (tmp_path / "run").iterdir()} == RUN_FILES
    info = json.loads((tmp_path / "run" / "run.json").read_text())
    assert info["config"]["steps"] == 123 and info["priors"]["edge_weight"]["dist"] == "horseshoe"
    # --resume builds the same settings from run.json (JSON lists become tuples)
    code, out, _ = run_cli(["fit", "--resume", tmp_path / "run"], capsys)
    assert code == 0 and "(resuming)" in out
    assert fake_fit[1]["config"] == call["config"] and fake_fit[1]["priors"] == call["priors"]


def test_run_command_plumbing(tmp_path, capsys, fake_fit, monkeypatch):
    from latentscm.inference.collapsed import CollapsedConfig

    monkeypatch.chdir(tmp_path)
    config = write_toml(tmp_path / "c.toml", "[fit]\nsteps = 5000\nlearning_rate = 0.02\n")
    code, out, _ = run_cli(["run", "--quick", "--seed", 2, "--config", config], capsys)
    assert code == 0
    (call,) = fake_fit
    assert call["config"] == CollapsedConfig(steps=QUICK_FIT["steps"], learning_rate=0.02)  # --quick beats the file
    data = call["dataset"]
    assert (data.N, data.d, data.D) == (4000, 5, 100) and data.pair is not None
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert run_dir.name.endswith("-collapsed-seed2")
    assert {p.name for p in run_dir.iterdir()} == RUN_FILES | {"dataset.npz"}
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert np.isfinite(metrics["heldout_nll"]) and metrics["seed"] == 2


# ------------------------------------------------------------------------------------------ end to end


@pytest.mark.slow  # about 45 s on a CPU, nearly all of it compilation
def test_fit_end_to_end(tiny, tmp_path, capsys):
    train, test = tiny
    train.save(tmp_path / "train.npz")
    test.save(tmp_path / "test.npz")
    config = write_toml(tmp_path / "c.toml", "[fit]\nsteps = 200\n")
    code, _, err = run_cli(["fit", "--data", tmp_path / "train.npz", "--test", tmp_path / "test.npz", "--config",
                            config, "--out", tmp_path / "run", "--json", tmp_path / "m.json"], capsys)
    assert code == 0, err
    metrics = json.loads((tmp_path / "m.json").read_text())
    assert {"method", "seconds", "n", "d", "D", "heldout_nll"} | TRUTH_KEYS <= set(metrics)
    assert metrics["n"] == 400 and metrics["d"] == 3 and metrics["D"] == 10
    assert all(np.isfinite(metrics[k]) for k in TRUTH_KEYS | {"heldout_nll"})
    # a real fit also leaves its last checkpoint (for --resume) and, at d <= 5, the weighed order posterior
    assert {p.name for p in (tmp_path / "run").iterdir()} == RUN_FILES | {"checkpoint.npz", "order_posterior.json"}


def test_compare_rejects_bad_arguments(tiny_file, tmp_path, capsys, no_fit):
    code, _, err = run_cli(["compare", "--data", tiny_file, "--methods", "collapsed,nope"], capsys)
    assert code == 2 and "unknown or missing method(s) ['nope']" in err
    code, _, err = run_cli(["compare", "--data", tiny_file, "--methods", "collapsed", "--seeds", "a"], capsys)
    assert code == 2 and "--seeds must be comma-separated integers" in err
    code, _, err = run_cli(["compare", "--data", tmp_path / "none.npz", "--methods", "collapsed"], capsys)
    assert code == 2 and "no such file" in err


@pytest.mark.slow
def test_compare_end_to_end(tiny_file, tmp_path, capsys):
    import pandas as pd

    code, out, err = run_cli(["compare", "--data", tiny_file, "--methods", "collapsed,mcmc", "--out", tmp_path / "c"],
                             capsys)
    assert code == 0, err
    table = pd.read_csv(tmp_path / "c" / "comparison.csv")
    assert list(table["method"]) == ["collapsed", "mcmc"]
    assert {"e_shd", "auroc", "mcc", "loo", "loo_se", "loo_k_max", "seconds", "wall_s", "peak_rss_mb"} <= set(table.columns)
    assert (table["peak_rss_mb"] > 50).all() and np.isfinite(table["loo"]).all()
    assert (tmp_path / "c" / "comparison.png").stat().st_size > 0
    assert "az.compare" in (tmp_path / "c" / "comparison.md").read_text()


@pytest.mark.parametrize("path", sorted((Path(__file__).resolve().parents[1] / "examples" / "configs").glob("*.toml")),
                         ids=lambda p: p.stem)
def test_shipped_example_configs_are_valid(path):
    from latentscm.cli import load_config
    from latentscm.inference.api import make_config
    from latentscm.models.priors import parse_priors

    cfg = load_config(str(path))
    make_config(cfg.method or "collapsed", cfg.fit)
    parse_priors(cfg.priors)


# ------------------------------------------------------------------------------------------ start-up and cache

HEAVY = ("jax", "numpyro", "arviz", "matplotlib", "pandas", "xarray")
_REPO = Path(__file__).resolve().parents[1]
# main(argv) in a fresh interpreter; prints which heavy modules it imported, exits with main's code
_PROBE = """
import sys
from latentscm.cli import main
try:
    code = main(sys.argv[1:])
except SystemExit as e:
    code = e.code
print("IMPORTED=" + ",".join(m for m in %r if m in sys.modules))
sys.exit(code)
""" % (HEAVY,)


def _subprocess_env(tmp_path, **extra):
    import os

    env = {k: v for k, v in os.environ.items() if k not in ("JAX_COMPILATION_CACHE_DIR", "LATENTSCM_JAX_CACHE")}
    # XDG_CACHE_HOME in tmp_path: the default cache folder must stay untouched; matplotlib keeps its font cache
    return env | {"XDG_CACHE_HOME": str(tmp_path / "xdg"), "MPLCONFIGDIR": matplotlib.get_cachedir(),
                  "MPLBACKEND": "Agg"} | extra


def _python(args, tmp_path, **env):
    import subprocess
    import sys

    return subprocess.run([sys.executable, *args], cwd=_REPO, env=_subprocess_env(tmp_path, **env),
                          capture_output=True, text=True, timeout=300)


@pytest.fixture(autouse=True)
def _no_compilation_cache(monkeypatch):
    """In-process main() calls here must not turn on the persistent cache of the test process."""
    monkeypatch.setenv("LATENTSCM_JAX_CACHE", "off")


def test_method_names_match_the_registry():
    from latentscm.cli import METHOD_NAMES
    from latentscm.inference import METHODS

    assert sorted(METHOD_NAMES) == sorted(METHODS)


@pytest.mark.parametrize("argv, code, message", [
    (["--help"], 0, "usage: latentscm"),
    (["fit", "--help"], 0, "--resume"),
    (["fit", "--data", "{tmp}/missing.npz"], 2, "no such file"),
    (["fit", "--data", "{tmp}/text.npz"], 2, "not a readable .npz"),
    (["fit", "--data", "{tmp}/missing.npz", "--method", "nope"], 2, "unknown method 'nope'"),
    (["fit", "--data", "x.npz", "--seed", "-1"], 2, "non-negative integer"),
    (["fit", "--data", "{tmp}/missing.npz", "--config", "{tmp}/bad.toml"], 2, "not valid TOML"),
    (["run", "--config", "{tmp}/d3.toml", "--out", "{tmp}/run"], 2, "embedded default problem has d = 5"),
    (["compare", "--data", "{tmp}/missing.npz", "--methods", "collapsed,nope"], 2, "unknown or missing method"),
], ids=["help", "fit-help", "missing-data", "not-npz", "unknown-method", "negative-seed", "bad-toml", "d-mismatch",
        "compare-method"])
def test_help_and_input_errors_do_not_import_jax(argv, code, message, tmp_path):
    write_toml(tmp_path / "text.npz", "hello")
    write_toml(tmp_path / "bad.toml", "this is = not toml ]\n")
    write_toml(tmp_path / "d3.toml", "d = 3\n")
    proc = _python(["-c", _PROBE, *(a.format(tmp=tmp_path) for a in argv)], tmp_path)
    assert proc.returncode == code, proc.stderr
    assert message in proc.stdout + proc.stderr
    assert "IMPORTED=\n" in proc.stdout  # none of jax, numpyro, arviz, matplotlib, pandas, xarray
    assert not (tmp_path / "xdg" / "latentscm").exists()


@pytest.mark.parametrize("argv", [["--help"], ["fit", "--data", "missing.npz"]], ids=["help", "missing-data"])
def test_python_m_latentscm_does_not_import_jax(argv, tmp_path):
    proc = _python(["-X", "importtime", "-m", "latentscm", *argv], tmp_path)
    assert proc.returncode == (0 if argv == ["--help"] else 2)
    modules = {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines() if line.startswith("import time:")}
    assert "latentscm.cli" in modules
    assert not {m for m in modules if m.split(".")[0] in HEAVY}


def test_compilation_cache_dir_from_the_environment(tmp_path):
    from latentscm.cli import compilation_cache_dir

    home = Path.home() / ".cache" / "latentscm" / "jax"
    assert compilation_cache_dir({}) == home
    assert compilation_cache_dir({"XDG_CACHE_HOME": "/xdg"}) == Path("/xdg/latentscm/jax")
    assert compilation_cache_dir({"XDG_CACHE_HOME": "relative"}) == home  # XDG: relative paths are ignored
    assert compilation_cache_dir({"LATENTSCM_JAX_CACHE": str(tmp_path), "XDG_CACHE_HOME": "/xdg"}) == tmp_path
    for off in ("off", "OFF", "", " "):
        assert compilation_cache_dir({"LATENTSCM_JAX_CACHE": off, "XDG_CACHE_HOME": "/xdg"}) is None


def test_the_library_leaves_the_compilation_cache_alone(tmp_path):
    probe = ("import jax, latentscm.inference, latentscm.runs, latentscm.cli; "
             "assert jax.config.jax_compilation_cache_dir is None; "
             "assert jax.config.jax_persistent_cache_min_compile_time_secs == 1.0; print('ok')")
    proc = _python(["-c", probe], tmp_path)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@pytest.mark.parametrize("setting", ["folder", pytest.param("off", marks=pytest.mark.slow)])
def test_cli_fit_uses_the_persistent_compilation_cache(setting, tiny_file, tmp_path):
    """A tiny fit (d = 3, 10 steps) leaves compiled programs in LATENTSCM_JAX_CACHE, and its traced programs
    in its latentscm-programs folder; a second run reads them and gives the same numbers. None with off."""
    import json

    config = write_toml(tmp_path / "c.toml", "[fit]\nsteps = 10\nnum_restarts = 1\nnum_particles = 1\n"
                                            "num_draws = 10\nchunk = 10\n")
    cache = tmp_path / "cache"
    runs = ("run", "again") if setting == "folder" else ("run",)
    for run in runs:
        proc = _python(["-m", "latentscm", "fit", "--data", str(tiny_file), "--method", "collapsed", "--config",
                        str(config), "--out", str(tmp_path / run)], tmp_path,
                       LATENTSCM_JAX_CACHE=str(cache) if setting == "folder" else "off")
        assert proc.returncode == 0, proc.stderr
    metrics = [json.loads((tmp_path / run / "metrics.json").read_text()) for run in runs]
    entries = list(cache.glob("*-cache")) if cache.exists() else []
    assert len(entries) > 0 if setting == "folder" else entries == []
    if setting == "folder":
        assert len(list((cache / "latentscm-programs").glob("*.jaxexport"))) == 3  # step, draws, weighing
        costs = ("seconds", "wall_s", "peak_rss_mb")
        assert [{k: v for k, v in m.items() if k not in costs} for m in metrics][1:] == [
            {k: v for k, v in metrics[0].items() if k not in costs}]
    assert not (tmp_path / "xdg" / "latentscm").exists()  # nothing in the default folder either


def test_rough_inputs_get_one_line_errors(tmp_path, capsys):
    """Random bytes, a negative seed, an empty test set and a one-row dataset: each is refused with an
    ``error: ...`` line and exit code 2 (or a DataError from Python), before any work."""
    import numpy as np
    import pytest

    from latentscm.cli import main
    from latentscm.data import DataError, Dataset, SimulationConfig, simulate
    from latentscm.inference import fit

    junk = tmp_path / "junk.npz"
    junk.write_bytes(np.random.default_rng(0).bytes(2000))
    for argv, says in ((["fit", "--data", str(junk)], "neither a NumPy .npz archive nor a .npy array"),
                       (["fit", "--data", str(junk), "--seed", "-1"], "expected a non-negative integer"),
                       (["fit", "--data", str(junk), "--seed", "abc"], "expected a non-negative integer, got 'abc'"),
                       (["simulate", "--out", str(tmp_path / "s.npz"), "--n-test-regimes", "0", "--test-out",
                         str(tmp_path / "t.npz")], "--n-test-regimes 1 or more")):
        with pytest.raises(SystemExit) as stop:
            raise SystemExit(main(argv))
        assert stop.value.code == 2
        err = capsys.readouterr().err
        assert err.startswith("error: ") and says in err and "usage:" not in err and "allow_pickle" not in err
    train, test = simulate(SimulationConfig(d=3, D=6, n_pairs=40, n_regimes=4, rows_per_regime=10,
                                            n_test_regimes=0), 0)
    assert test is None
    with pytest.raises(DataError, match="at least d \\+ 2 = 5 rows"):
        fit(train.subset([5]), "collapsed", progress=False)
    narrow = Dataset.from_arrays(train.x[:, :2], train.targets, train.values)
    with pytest.raises(DataError, match="fewer than the d = 3 latents"):
        fit(narrow, "collapsed", progress=False)
    with pytest.raises(DataError, match="at most two rows"):
        Dataset.from_arrays(train.x, train.targets, train.values, pair=np.arange(train.N) // 3)


def test_a_fit_imports_only_what_it_needs(tmp_path):
    """`import latentscm.inference` (the start of every fit) leaves out what only other methods or the work
    after a fit use: Equinox (amortized), xarray (the ArviZ output), scipy.stats (checks and AUROC); the CLI
    imports them in a thread while the fit runs (cli_commands._preload). The registry still resolves every
    method's settings and fit."""
    probe = ("import sys, latentscm.inference as I\n"
             "late = [m for m in ('equinox', 'xarray', 'scipy.stats', 'matplotlib') if m in sys.modules]\n"
             "assert not late, late\n"
             "for name, m in I.METHODS.items():\n"
             "    assert m.config.__name__.lower() == name + 'config', (name, m.config)\n"
             "    assert callable(m.fit)\n"
             "print('OK')\n")
    proc = _python(["-c", probe], tmp_path)
    assert proc.returncode == 0 and "OK" in proc.stdout, proc.stderr
