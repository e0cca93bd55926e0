"""Smoke and contract tests for latentscm.plots (Agg backend, no display)."""

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import pytest  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from latentscm.metrics import edge_probabilities, order_probabilities  # noqa: E402
from latentscm.plots import (  # noqa: E402
    plot_edge_probabilities,
    plot_elbo,
    plot_latents,
    plot_order_probabilities,
    plot_target_probabilities,
    save_figure,
)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@pytest.fixture
def rng():
    return np.random.default_rng(0)


@pytest.fixture(autouse=True)
def close_all():
    yield
    plt.close("all")


def assert_png(path):
    data = path.read_bytes()
    assert len(data) > 100
    assert data[:8] == PNG_MAGIC


def test_plot_edge_probabilities_with_truth(rng, tmp_path):
    W_draws = rng.normal(size=(20, 4, 4))
    W_true = np.triu(rng.normal(size=(4, 4)), k=1)
    fig = plot_edge_probabilities(
        edge_probabilities(W_draws), W_true, node_names=["a", "b", "c", "d"]
    )
    assert isinstance(fig, Figure)
    heatmap_axes = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(heatmap_axes) == 2
    # annotated for d <= 10: one text per cell in each panel
    assert all(len(ax.texts) == 16 for ax in heatmap_axes)
    out = save_figure(fig, tmp_path / "edges.png")
    assert_png(out)
    assert not plt.fignum_exists(fig.number)  # closed


def test_plot_edge_probabilities_single_panel_large_d_not_annotated(rng):
    probs = rng.random((12, 12))
    fig = plot_edge_probabilities(probs)
    heatmaps = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(heatmaps) == 1
    assert len(heatmaps[0].texts) == 0


def test_plot_edge_probabilities_into_given_axes(rng):
    fig, axes = plt.subplots(1, 2)
    out = plot_edge_probabilities(rng.random((3, 3)), np.eye(3, k=1), ax=axes)
    assert out is fig
    with pytest.raises(ValueError, match="two Axes"):
        plot_edge_probabilities(rng.random((3, 3)), np.eye(3, k=1), ax=axes[0])


def test_plot_edge_probabilities_validation():
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plot_edge_probabilities(np.full((2, 2), 1.5))
    with pytest.raises(ValueError, match="node_names"):
        plot_edge_probabilities(np.zeros((2, 2)), node_names=["x"])


def test_plot_latents(rng, tmp_path):
    z_true = rng.normal(size=(100, 5))
    z_pred = -2.0 * z_true[:, [3, 0, 4, 1, 2]] + 0.1 * rng.normal(size=(100, 5))
    fig = plot_latents(z_pred, z_true)
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert len(visible) == 5
    # the matching pairs true z0 with inferred column 1, and r is strongly negative
    assert visible[0].get_title().startswith("z0 vs ẑ1")
    assert "r = -0.99" in visible[0].get_title()
    assert_png(save_figure(fig, tmp_path / "latents.png"))


def test_plot_latents_explicit_matching_and_validation(rng):
    z = rng.normal(size=(30, 2))
    fig = plot_latents(z, z, matching=[0, 1])
    assert "r = +1.000" in fig.axes[0].get_title()
    with pytest.raises(ValueError, match="permutation"):
        plot_latents(z, z, matching=[0, 0])


def test_plot_elbo(rng, tmp_path):
    elbo = -1000.0 * np.exp(-np.arange(300) / 50.0) - 10.0 + rng.normal(size=300)
    elbo[7] = np.nan
    fig = plot_elbo(elbo, yscale="symlog")
    (ax,) = fig.axes
    assert len(ax.lines) == 2  # trace + running mean
    assert ax.get_yscale() == "symlog"
    assert_png(save_figure(fig, tmp_path / "elbo.png"))

    fig2, ax2 = plt.subplots()
    assert plot_elbo(np.zeros(5), ax=ax2) is fig2  # window 1: no overlay
    assert len(ax2.lines) == 1
    with pytest.raises(ValueError, match="yscale"):
        plot_elbo(elbo, yscale="log2")


def test_plot_order_probabilities(rng, tmp_path):
    orders = np.array([rng.permutation(4) for _ in range(50)])
    fig = plot_order_probabilities(order_probabilities(orders))
    assert isinstance(fig, Figure)
    assert_png(save_figure(fig, tmp_path / "orders.png"))


def test_plot_target_probabilities_with_truth(rng, tmp_path):
    probs = rng.random((3, 4))  # 3 regimes x 4 nodes
    truth = (probs > 0.5).astype(int)
    fig = plot_target_probabilities(probs, truth, regime_ids=[0, 5, 7], node_names="abcd")
    heatmaps = [ax for ax in fig.axes if ax.images and ax.get_label() != "<colorbar>"]
    assert len(heatmaps) == 2 and all(len(ax.texts) == 12 for ax in heatmaps)  # one text per cell
    assert [t.get_text() for t in heatmaps[0].get_yticklabels()] == ["0", "5", "7"]
    assert [t.get_text() for t in heatmaps[1].get_xticklabels()] == ["a", "b", "c", "d"]
    assert heatmaps[0].images[0].get_array().shape == (3, 4)
    assert_png(save_figure(fig, tmp_path / "targets.png"))


def test_plot_target_probabilities_single_panel_into_axes_and_validation(rng):
    fig, ax = plt.subplots()
    assert plot_target_probabilities(rng.random((12, 3)), ax=ax) is fig
    assert len(ax.texts) == 0  # 12 regimes: not annotated
    with pytest.raises(ValueError, match="two Axes"):
        plot_target_probabilities(rng.random((2, 3)), np.zeros((2, 3)), ax=ax)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        plot_target_probabilities(np.full((2, 2), 1.5))
    with pytest.raises(ValueError, match="regime_ids"):
        plot_target_probabilities(np.zeros((2, 2)), regime_ids=[1])
    with pytest.raises(ValueError, match="true_targets must be 0/1"):
        plot_target_probabilities(np.zeros((2, 2)), np.zeros((2, 3)))


def test_save_figure_atomic_and_validates(tmp_path):
    fig, ax = plt.subplots()
    ax.plot([0, 1], [0, 1])
    target = tmp_path / "x.png"
    target.write_bytes(b"old")
    save_figure(fig, target)
    assert_png(target)
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]  # no temp file left behind

    fig2, _ = plt.subplots()
    with pytest.raises(ValueError, match="extension"):
        save_figure(fig2, tmp_path / "noext")
    with pytest.raises(ValueError, match="does not exist"):
        save_figure(fig2, tmp_path / "missing" / "y.png")
    with pytest.raises(ValueError):  # unknown format: matplotlib's error, temp file cleaned
        save_figure(fig2, tmp_path / "y.notaformat")
    assert [p.name for p in tmp_path.iterdir()] == ["x.png"]
