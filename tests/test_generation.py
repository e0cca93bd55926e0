"""Generation under unseen interventions, against hand-worked mean images."""

import matplotlib
import numpy as np
import pytest

from latentscm.inference.decoders import LinearDecoder
from latentscm.data import Dataset
from latentscm.data.images import chemistry_projection
from latentscm.generation import generation_error, plot_generation_grid, single_node_interventions
from latentscm.inference.posterior import Posterior

matplotlib.use("Agg")

W_TRUE = np.array([[0.0, 1.5], [0.0, 0.0]])
SIGMA = np.array([0.5, 0.5])


def _truth_dataset():
    return Dataset.from_arrays(np.zeros((1, 2500)), np.zeros((1, 2)), weights=W_TRUE, noise_scales=SIGMA,
                               image_shape=(50, 50), meta={"config": {"projection": "chemistry", "tau": 0.1}})


def _posterior(S=20):
    A, b = chemistry_projection(2)
    return Posterior(method="hand", W=np.tile(W_TRUE, (S, 1, 1)), noise_scales=np.tile(SIGMA, (S, 1)),
                     orders=np.tile([0, 1], (S, 1)),
                     decoder=LinearDecoder(np.tile(A, (S, 1, 1)), np.tile(b, (S, 1)), np.full(S, 0.05)),
                     latent_mean=np.zeros((1, 2)), latent_scale=np.zeros((1, 2)), elbo=np.zeros(0), seconds=0.0)


def test_single_node_interventions():
    t, v = single_node_interventions(3, -7.0)
    assert t.tolist() == np.eye(3).tolist() and v[1].tolist() == [0.0, -7.0, 0.0]


def test_generation_error_by_hand():
    out = generation_error(_posterior(), _truth_dataset(), value=-7.0, num_samples=500, num_true=2000)
    # do(z0 = -7): z1 ~ N(-10.5, 0.52^2) is clipped to -8 by the renderer (block 1 black, 0.0), while the
    # linear decoder paints -10.5/16 + 0.5 = -0.15625: 100 pixels of 2500 off by 0.15625.
    assert out["per_node"][0] == pytest.approx(100 * 0.15625 / 2500, abs=2e-4)
    # the graph-blind baseline paints block 1 at E[z1] = 0 -> 0.5: off by 0.5 on 100 pixels
    assert out["baseline_per_node"][0] == pytest.approx(100 * 0.5 / 2500, abs=3e-4)
    # do(z1 = -7): node 0 has no parents, both get it right up to Monte Carlo error
    assert out["per_node"][1] < 3e-4 and out["baseline_per_node"][1] < 3e-4
    assert out["truth"].shape == (2, 2500) and out["truth"][0].reshape(50, 50)[5, 5] == pytest.approx(0.0625, abs=1e-3)
    assert out["error"] == pytest.approx(out["per_node"].mean())


def test_predict_returns_noiseless_mean():
    pred = _posterior().predict(np.eye(2), -7 * np.eye(2), num_samples=5, seed=1)
    assert pred["x_mean"].shape == (5, 2, 2500)
    assert np.all(pred["x_mean"].reshape(5, 2, 50, 50)[:, :, 30:, 30:] == 0)  # no block there, no noise
    assert 0.04 < (pred["x"] - pred["x_mean"]).std() < 0.06


def test_generation_needs_true_renderer():
    ds = Dataset.from_arrays(np.zeros((1, 2500)), np.zeros((1, 2)), weights=W_TRUE, noise_scales=SIGMA)
    with pytest.raises(ValueError, match="known image layout"):
        generation_error(_posterior(), ds)


def test_generation_grid_figure():
    imgs = np.random.default_rng(0).random((2, 2500))
    fig = plot_generation_grid(imgs, imgs, (50, 50), baseline=imgs, labels=["do(z0)", "do(z1)"])
    assert len(fig.axes) == 10
