"""Command line with images: `run --example images`, image-aware defaults of `fit`, `simulate` of images."""

import json

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402

from latentscm.inference.decoders import LinearDecoder
from latentscm.cli import IMAGE_METHOD, main  # noqa: E402
from latentscm.data import Dataset, image_config, simulate  # noqa: E402
from latentscm.data.images import chemistry_projection  # noqa: E402


def _near_truth(dataset, method, S=10):
    from latentscm.inference import Posterior

    A, b = chemistry_projection(dataset.d)
    d = dataset.d
    return Posterior(method=method, W=np.tile(dataset.weights, (S, 1, 1)),
                     noise_scales=np.tile(dataset.noise_scales, (S, 1)), orders=np.tile(np.arange(d), (S, 1)),
                     decoder=LinearDecoder(np.tile(A, (S, 1, 1)), np.tile(b, (S, 1)), np.full(S, 0.05)),
                     latent_mean=dataset.z, latent_scale=np.full(dataset.z.shape, 0.01),
                     elbo=-np.geomspace(1e4, 1e2, 20), seconds=1.0)


@pytest.fixture(autouse=True)
def _no_compilation_cache(monkeypatch):
    """In-process main() calls here must not turn on the persistent cache of the test process."""
    monkeypatch.setenv("LATENTSCM_JAX_CACHE", "off")


@pytest.fixture
def fake_fit(monkeypatch):
    import latentscm.inference

    calls = []

    def fit(dataset, method="collapsed", *, config=None, priors=None, seed=0, progress=True):
        calls.append({"dataset": dataset, "method": method, "config": config})
        return _near_truth(dataset, method)

    monkeypatch.setattr(latentscm.inference, "fit", fit)
    return calls


@pytest.mark.slow  # about 80 s on a loaded 2-core machine: 4000 x 2500 images, held-out NLL, run folder
def test_run_example_images(tmp_path, capsys, fake_fit):
    code = main(["run", "--example", "images", "--quick", "--out", str(tmp_path / "run")])
    assert code == 0, capsys.readouterr().err
    (call,) = fake_fit
    data = call["dataset"]
    assert call["method"] == IMAGE_METHOD and (data.N, data.d, data.D) == (4000, 5, 2500)
    assert data.image_shape == (50, 50)
    files = {p.name for p in (tmp_path / "run").iterdir()}
    assert {"generation.png", "metrics.json", "dataset.npz", "posterior.nc"} <= files
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    # the true SCM and (unclipped) renderer: small error, below the graph-blind baseline
    assert metrics["gen_error"] < metrics["gen_error_baseline"] and metrics["gen_error"] < 0.01
    assert Dataset.load(tmp_path / "run" / "dataset.npz").image_shape == (50, 50)


def test_fit_picks_image_method_for_image_files(tmp_path, capsys, fake_fit, monkeypatch):
    import dataclasses

    import latentscm.cli_commands

    assert IMAGE_METHOD == "auto"
    monkeypatch.setattr(latentscm.cli_commands, "IMAGE_METHOD", "amortized")  # a default distinct from DEFAULT_METHOD
    train, _ = simulate(image_config(d=3, n_pairs=40, n_regimes=4, rows_per_regime=10, n_test_regimes=1), 0)
    path = train.save(tmp_path / "img.npz")
    flat = dataclasses.replace(train, image_shape=None).save(tmp_path / "flat.npz")  # D = 2500 >> d = 3
    narrow = dataclasses.replace(train, image_shape=None, x=train.x[:, :29], projection=None)
    narrow = narrow.save(tmp_path / "narrow.npz")
    assert main(["fit", "--data", str(path), "--out", str(tmp_path / "a")]) == 0
    assert main(["fit", "--data", str(path), "--method", "biols", "--out", str(tmp_path / "b")]) == 0
    assert main(["fit", "--data", str(flat), "--out", str(tmp_path / "c")]) == 0
    assert main(["fit", "--data", str(narrow), "--out", str(tmp_path / "d")]) == 0  # D = 29 < 10 d
    assert [c["method"] for c in fake_fit] == ["amortized", "biols", "amortized", "collapsed"]
    info = json.loads((tmp_path / "a" / "run.json").read_text())
    assert info["method"] == "amortized" and info["config"]["decoder"] == "mlp"


def test_fit_says_which_decoder_auto_chose(tmp_path, capsys, monkeypatch):
    import dataclasses

    import latentscm.inference

    choice = {"decoder": "mlp", "method": "amortized", "reason": "mlp (amortized): because the evidence says so",
              "misfit": 3.0}

    def fit(dataset, method="collapsed", *, config=None, priors=None, seed=0, progress=True):
        assert method == "auto" and config.linear == {"steps": 300} and config.mlp == {"steps": 300}
        post = _near_truth(dataset, "amortized")
        return dataclasses.replace(post, info={"decoder_choice": choice})

    monkeypatch.setattr(latentscm.inference, "fit", fit)
    train, _ = simulate(image_config(d=3, n_pairs=40, n_regimes=4, rows_per_regime=10, n_test_regimes=1), 0)
    path = train.save(tmp_path / "img.npz")
    config = tmp_path / "auto.toml"
    config.write_text("[fit]\nlinear = {steps = 300}\nmlp = {steps = 300}\n")
    assert main(["fit", "--data", str(path), "--config", str(config), "--out", str(tmp_path / "a")]) == 0
    assert "decoder: mlp (amortized): because the evidence says so" in capsys.readouterr().out
    assert json.loads((tmp_path / "a" / "run.json").read_text())["decoder_choice"] == choice


def test_simulate_images(tmp_path, capsys):
    out = tmp_path / "img.npz"
    assert main(["simulate", "--out", str(out), "--projection", "chemistry_shift", "--d", "3",
                 "--n-regimes", "3", "--rows-per-regime", "4"]) == 0
    data = Dataset.load(out)
    assert data.D == 2500 and data.image_shape == (50, 50) and data.meta["config"]["obs_noise"] == 0.05
    assert main(["simulate", "--out", str(out), "--projection", "chemistry_shift", "--d", "6"]) == 2
    assert "room for 1..5" in capsys.readouterr().err
    assert main(["simulate", "--out", str(out), "--projection", "chemistry", "--scale", "saturating", "--d", "3",
                 "--n-regimes", "3", "--rows-per-regime", "4"]) == 0
    config = Dataset.load(out).meta["config"]
    assert config["value_scale"] == 1.0 and list(config["weight_range"]) == [1.0, 3.0]
    assert main(["simulate", "--out", str(out), "--scale", "saturating"]) == 2
    assert "--scale saturating is for images" in capsys.readouterr().err
