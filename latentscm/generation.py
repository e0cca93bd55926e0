"""Generation under unseen interventions: images a posterior predicts, against the true renderer.

For each intervention (e.g. node j set to -7, outside the training range) we compare two *mean
images* over the interventional distribution of the latents:

* truth: the average of the true renderer's noiseless output over ``num_true`` latents drawn from
  the true SCM under the intervention (:func:`true_mean_images`);
* generated: the average of the decoder's mean over ``num_samples`` posterior predictive draws
  (each draw: a posterior sample of the SCM and decoder, latents from that SCM under the
  intervention; ``Posterior.predict(...)["x_mean"]``), no pixel noise (:func:`generated_mean_images`).

The error is the mean per-pixel absolute difference. The graph-blind baseline is the *same* fitted
posterior with every edge weight set to 0 at prediction time (``W = 0``): same decoder, same noise
scales, but an intervention then moves only its own block (:func:`generation_error`).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from .data.images import IMAGE_LAYOUTS, render
from .data.scm import sample_latents

__all__ = ["single_node_interventions", "true_mean_images", "generated_mean_images", "generation_error",
           "plot_generation_grid"]


def single_node_interventions(d: int, value: float = -7.0) -> tuple[np.ndarray, np.ndarray]:
    """Targets and values (d, d) of the d single-node interventions ``do(z_j = value)``."""
    return np.eye(d, dtype=np.int8), value * np.eye(d)


def _layout(dataset) -> str:
    layout = (dataset.meta.get("config") or {}).get("projection")
    if layout not in IMAGE_LAYOUTS:
        raise ValueError(f"the dataset was not rendered by a known image layout (meta config projection is "
                         f"{layout!r}, expected one of {IMAGE_LAYOUTS}); generation error needs the true renderer")
    if dataset.weights is None or dataset.noise_scales is None:
        raise ValueError("generation error needs the true SCM: the dataset must carry weights and noise_scales")
    return layout


def true_mean_images(dataset, targets, values, *, num_true=20000, seed=0, chunk=2000) -> np.ndarray:
    """(M, D) mean noiseless image under each intervention (rows of targets/values, (M, d)), from the
    dataset's true SCM and renderer (its ``meta["config"]``: projection and tau)."""
    layout = _layout(dataset)
    tau = float(dataset.meta["config"].get("tau", 0.1))
    rng = np.random.default_rng(seed)
    out = np.zeros((len(targets), dataset.D))
    for m, (t, v) in enumerate(zip(np.atleast_2d(targets), np.atleast_2d(values))):
        total, done = np.zeros(dataset.D), 0
        while done < num_true:
            n = min(chunk, num_true - done)
            z = sample_latents(rng, dataset.weights, dataset.noise_scales, np.tile(t, (n, 1)),
                               np.tile(v, (n, 1)), tau=tau)
            total += render(z, layout).sum(0)
            done += n
        out[m] = total / num_true
    return out


def generated_mean_images(posterior, targets, values, *, num_samples=2000, seed=0) -> np.ndarray:
    """(M, D) mean of the decoder's output over ``num_samples`` posterior predictive draws."""
    pred = posterior.predict(targets, values, num_samples=num_samples, seed=seed)
    return pred["x_mean"].mean(0)


def generation_error(posterior, dataset, *, value=-7.0, num_samples=2000, num_true=20000, seed=0) -> dict:
    """Mean per-pixel absolute error of generated mean images under the d single-node interventions
    ``do(z_j = value)``, and that of the graph-blind baseline (the same posterior with ``W = 0``).

    Returns a dict: ``error`` and ``baseline_error`` (floats, mean over interventions and pixels),
    ``per_node`` and ``baseline_per_node`` (d,), and the images ``truth``, ``generated``,
    ``baseline`` (d, D).
    """
    targets, values = single_node_interventions(posterior.d, value)
    truth = true_mean_images(dataset, targets, values, num_true=num_true, seed=seed)
    gen = generated_mean_images(posterior, targets, values, num_samples=num_samples, seed=seed)
    blind = dataclasses.replace(posterior, W=np.zeros_like(posterior.W))
    base = generated_mean_images(blind, targets, values, num_samples=num_samples, seed=seed)
    per_node = np.abs(gen - truth).mean(1)
    base_node = np.abs(base - truth).mean(1)
    return {"value": float(value), "error": float(per_node.mean()), "baseline_error": float(base_node.mean()),
            "per_node": per_node, "baseline_per_node": base_node, "truth": truth, "generated": gen,
            "baseline": base}


def plot_generation_grid(truth, generated, image_shape, *, baseline=None, labels=None):
    """Figure with one row per intervention: truth | generated mean | |difference| (| baseline |
    its |difference| when ``baseline`` is given). Images (M, D) on the [0, 1] scale."""
    import matplotlib.pyplot as plt

    truth, generated = np.atleast_2d(truth), np.atleast_2d(generated)
    cols = [("truth", truth), ("generated mean", generated), ("|difference|", np.abs(generated - truth))]
    if baseline is not None:
        baseline = np.atleast_2d(baseline)
        cols += [("baseline (W = 0)", baseline), ("|baseline difference|", np.abs(baseline - truth))]
    M = len(truth)
    shape = tuple(image_shape)[:2] if len(image_shape) == 2 or image_shape[-1] in (1,) else tuple(image_shape)
    fig, axes = plt.subplots(M, len(cols), figsize=(2.0 * len(cols), 2.0 * M), squeeze=False)
    for i in range(M):
        for c, (name, imgs) in enumerate(cols):
            ax = axes[i, c]
            ax.imshow(np.clip(imgs[i].reshape(shape), 0, 1), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([]), ax.set_yticks([])
            if i == 0:
                ax.set_title(name, fontsize=8)
            if c == 0 and labels is not None:
                ax.set_ylabel(labels[i], fontsize=8)
    fig.tight_layout()
    return fig
