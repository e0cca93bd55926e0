"""Diagnostic plots for posteriors over latent SCMs (matplotlib).

Every function returns the :class:`matplotlib.figure.Figure` it drew on and never calls
``plt.show``; pass ``ax`` (or ``axes``) to draw into an existing figure. Save with
:func:`save_figure`, which writes atomically and closes the figure. Works with any backend,
including the non-interactive ``Agg``.
"""

from __future__ import annotations

import math
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from latentscm._io import atomic_write
from latentscm.metrics import mcc

__all__ = [
    "plot_edge_probabilities",
    "plot_latents",
    "plot_elbo",
    "plot_order_probabilities",
    "plot_target_probabilities",
    "save_figure",
    "plot_comparison",
    "plot_scaling",
]

_ANNOTATE_MAX_D = 10


LATENT_POINTS = 2000  # plot_latents: rows drawn per panel at most (more only slow the drawing down)


def _root_figure(ax: Axes) -> Figure:
    fig = ax.figure
    while not isinstance(fig, Figure) and hasattr(fig, "figure"):  # SubFigure -> parent
        fig = fig.figure
    return fig


def _square(a, name: str) -> np.ndarray:
    arr = np.asarray(a, dtype=float)
    if arr.ndim != 2 or arr.shape[0] != arr.shape[1]:
        raise ValueError(f"{name} must have shape (d, d); got {arr.shape}.")
    return arr


def _labels(node_names, d: int) -> list[str]:
    if node_names is None:
        return [str(i) for i in range(d)]
    names = [str(n) for n in node_names]
    if len(names) != d:
        raise ValueError(f"node_names must have {d} entries (one per node); got {len(names)}.")
    return names


def _heatmap(
    ax: Axes, values: np.ndarray, labels: list[str], *, title, xlabel, ylabel, cmap, fmt=".2f",
    ylabels: list[str] | None = None,
):
    """``values`` (rows, cols) in [0, 1]; ``labels`` name the columns, ``ylabels`` the rows
    (default: ``labels``)."""
    n_rows, n_cols = values.shape
    im = ax.imshow(values, vmin=0.0, vmax=1.0, cmap=cmap, interpolation="nearest")
    ax.set_xticks(range(n_cols), labels)
    ax.set_yticks(range(n_rows), labels if ylabels is None else ylabels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if max(n_rows, n_cols) <= _ANNOTATE_MAX_D:
        for i in range(n_rows):
            for j in range(n_cols):
                v = values[i, j]
                ax.text(
                    j, i, format(v, fmt), ha="center", va="center", fontsize=8,
                    color="white" if v < 0.5 else "black",  # colormaps here are dark at 0
                )
    return im


def _panels(ax, n_panels: int, given: str, figsize) -> tuple[Figure, list[Axes]]:
    """A new row of ``n_panels`` Axes, or the given ``ax`` checked to hold that many (``given``: the
    argument that adds the second panel, for the error)."""
    if ax is None:
        fig, axes = plt.subplots(1, n_panels, figsize=figsize, layout="constrained", squeeze=False)
        return fig, list(axes[0])
    axes = [ax] if isinstance(ax, Axes) else list(ax)
    if len(axes) != n_panels:
        raise ValueError(
            f"ax must be {'one Axes' if n_panels == 1 else 'a sequence of two Axes'} "
            f"{'without' if n_panels == 1 else 'when'} {given} is given; got {len(axes)} Axes."
        )
    return _root_figure(axes[0]), axes


def plot_edge_probabilities(probs, true_weights=None, *, node_names=None, ax=None) -> Figure:
    """Heatmap of posterior edge probabilities, beside the true adjacency when given.

    Parameters
    ----------
    probs : array_like, shape (d, d)
        ``probs[i, j]`` = posterior probability of the edge ``i -> j`` (rows: parent, columns:
        child), e.g. from :func:`latentscm.metrics.edge_probabilities`; values in [0, 1].
    true_weights : array_like, shape (d, d), optional
        True weighted adjacency; its 0/1 pattern (``!= 0``) is drawn in a second panel.
    node_names : sequence of str, optional
        ``d`` tick labels; defaults to ``0..d-1``.
    ax : matplotlib.axes.Axes or sequence of two Axes, optional
        Where to draw: one Axes without ``true_weights``, two (posterior, truth) with it.
        A new figure is created when omitted.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Cell values are written into the heatmap when ``d <= 10``.
    """
    p = _square(probs, "probs")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("probs must hold probabilities in [0, 1] (finite).")
    d = p.shape[0]
    labels = _labels(node_names, d)
    truth = None
    if true_weights is not None:
        tw = _square(true_weights, "true_weights")
        if tw.shape != p.shape:
            raise ValueError(
                f"true_weights must have the same shape as probs {p.shape}; got {tw.shape}."
            )
        truth = (tw != 0).astype(float)
        np.fill_diagonal(truth, 0.0)
    n_panels = 1 if truth is None else 2
    fig, axes = _panels(ax, n_panels, "true_weights", (4.2 * n_panels + 0.8, 4.0))
    im = _heatmap(
        axes[0], p, labels, title="Posterior edge probability", xlabel="child (to)",
        ylabel="parent (from)", cmap="viridis",
    )
    if truth is not None:
        _heatmap(
            axes[1], truth, labels, title="True graph", xlabel="child (to)",
            ylabel="parent (from)", cmap="viridis", fmt=".0f",
        )
    fig.colorbar(im, ax=axes, shrink=0.8, label="P(edge)")
    return fig


def plot_target_probabilities(
    probs, true_targets=None, *, regime_ids=None, node_names=None, ax=None
) -> Figure:
    """Heatmap (regime x node) of posterior target probabilities, beside the truth when given.

    Parameters
    ----------
    probs : array_like, shape (R, d)
        ``probs[r, j]``: posterior probability that regime ``r`` intervenes on node ``j``.
    true_targets : array_like, shape (R, d), optional
        True 0/1 targets per regime (e.g. :func:`latentscm.metrics.regime_table` of
        ``Dataset.true_targets``), drawn in a second panel.
    regime_ids : sequence, optional
        ``R`` row labels; defaults to ``0..R-1``.
    node_names : sequence of str, optional
        ``d`` column labels; defaults to ``0..d-1``.
    ax : matplotlib.axes.Axes or sequence of two Axes, optional
        Where to draw: one Axes without ``true_targets``, two (posterior, truth) with it.
        A new figure is created when omitted.

    Returns
    -------
    matplotlib.figure.Figure

    Notes
    -----
    Cell values are written into the heatmap when ``R`` and ``d`` are both at most 10.
    """
    p = np.asarray(probs, dtype=float)
    if p.ndim != 2:
        raise ValueError(f"probs must have shape (R, d) (regimes x nodes); got {p.shape}.")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("probs must hold probabilities in [0, 1] (finite).")
    n_regimes, d = p.shape
    labels = _labels(node_names, d)
    rows = [str(r) for r in (range(n_regimes) if regime_ids is None else regime_ids)]
    if len(rows) != n_regimes:
        raise ValueError(
            f"regime_ids must have {n_regimes} entries (one per row of probs); got {len(rows)}."
        )
    truth = None
    if true_targets is not None:
        truth = np.asarray(true_targets, dtype=float)
        if truth.shape != p.shape or not np.all((truth == 0) | (truth == 1)):
            raise ValueError(
                f"true_targets must be 0/1 with the shape of probs {p.shape}; got {truth.shape}."
            )
    n_panels = 1 if truth is None else 2
    size = (n_panels * (0.45 * d + 1.6) + 0.8, 0.4 * n_regimes + 1.6)
    fig, axes = _panels(ax, n_panels, "true_targets", size)
    style = dict(xlabel="node", ylabel="regime", cmap="viridis", ylabels=rows)
    im = _heatmap(axes[0], p, labels, title="Posterior target probability", **style)
    if truth is not None:
        _heatmap(axes[1], truth, labels, title="True targets", fmt=".0f", **style)
    fig.colorbar(im, ax=axes, shrink=0.8, label="P(target)")
    return fig


def plot_latents(z_pred, z_true, *, matching=None, axes=None) -> Figure:
    """Scatter plots of each true latent against its matched inferred latent.

    Parameters
    ----------
    z_pred : array_like, shape (N, d)
        Inferred latents (e.g. ``Posterior.latent_mean``).
    z_true : array_like, shape (N, d)
        True latents.
    matching : array_like of int, shape (d,), optional
        ``matching[j]`` is the column of ``z_pred`` matched to true latent ``j``; computed with
        :func:`latentscm.metrics.mcc` (Hungarian matching on absolute correlation) when omitted.
    axes : sequence of matplotlib.axes.Axes, optional
        At least ``d`` Axes to draw into (flattened); a new grid is created when omitted.

    Returns
    -------
    matplotlib.figure.Figure
        One panel per true latent, titled with the Pearson r of the matched pair (over all rows) and the MCC in
        the figure title (new figures only); at most about ``LATENT_POINTS`` rows are drawn (every k-th).
    """
    zp = np.asarray(z_pred, dtype=float)
    zt = np.asarray(z_true, dtype=float)
    if zp.ndim != 2 or zp.shape != zt.shape:
        raise ValueError(
            f"z_pred and z_true must both have shape (N, d); got {zp.shape} and {zt.shape}."
        )
    d = zt.shape[1]
    if matching is None:
        score, match = mcc(zp, zt, return_matching=True)
    else:
        match = np.asarray(matching)
        if match.shape != (d,) or not np.array_equal(np.sort(match), np.arange(d)):
            raise ValueError(f"matching must be a permutation of 0..{d - 1} with shape ({d},).")
        score = None

    if axes is None:
        ncols = min(d, 4)
        nrows = math.ceil(d / ncols)
        width, height = 3.0 * ncols, 3.0 * nrows
        fig, grid = plt.subplots(nrows, ncols, figsize=(width, height), squeeze=False)
        # fixed margins in inches (a uniform grid needs no layout solver, which took most of the drawing time)
        fig.subplots_adjust(left=0.6 / width, right=1 - 0.15 / width, bottom=0.5 / height, top=1 - 0.6 / height,
                            wspace=0.4, hspace=0.55)
        axs = list(grid.ravel())
        for extra in axs[d:]:
            extra.set_visible(False)
        if score is not None:
            fig.suptitle(f"Inferred vs true latents (MCC = {score:.3f})", y=1 - 0.12 / height, va="top")
    else:
        axs = list(np.ravel(np.asarray(axes, dtype=object)))
        if len(axs) < d:
            raise ValueError(f"axes must hold at least d = {d} Axes; got {len(axs)}.")
        fig = _root_figure(axs[0])

    shown = slice(None, None, max(1, math.ceil(len(zt) / LATENT_POINTS)))  # every k-th row: the cloud, drawn fast
    for j in range(d):
        ax = axs[j]
        x, y = zt[:, j], zp[:, match[j]]
        r = np.corrcoef(x, y)[0, 1]
        ax.scatter(x[shown], y[shown], s=6, alpha=0.5, linewidths=0)
        ax.set_title(f"z{j} vs ẑ{match[j]}  (r = {r:+.3f})", fontsize=9)
        ax.set_xlabel(f"true z{j}")
        ax.set_ylabel(f"inferred ẑ{match[j]}")
    return fig


def _running_mean(values: np.ndarray, window: int) -> np.ndarray:
    """Trailing running mean over finite values (NaN where a window has none)."""
    finite = np.isfinite(values)
    csum = np.r_[0.0, np.cumsum(np.where(finite, values, 0.0))]
    ccount = np.r_[0, np.cumsum(finite)]
    idx = np.arange(values.size)
    lo = np.maximum(idx + 1 - window, 0)
    total = csum[idx + 1] - csum[lo]
    count = ccount[idx + 1] - ccount[lo]
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def plot_elbo(elbo, *, ax=None, window=None, yscale="linear") -> Figure:
    """ELBO trace against optimisation step, with a running mean overlay.

    Parameters
    ----------
    elbo : array_like, shape (steps,)
        ELBO per step (``Posterior.elbo``); non-finite steps are drawn as gaps.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is created when omitted.
    window : int, optional
        Running-mean window in steps; defaults to ``max(1, steps // 50)``.
    yscale : {"linear", "symlog"}, default "linear"
        ``"symlog"`` helps when early steps are orders of magnitude worse.

    Returns
    -------
    matplotlib.figure.Figure
    """
    values = np.asarray(elbo, dtype=float)
    if values.ndim != 1 or values.size == 0:
        raise ValueError(f"elbo must be a non-empty 1-D array (steps,); got shape {values.shape}.")
    if yscale not in ("linear", "symlog"):
        raise ValueError(f"yscale must be 'linear' or 'symlog'; got {yscale!r}.")
    if window is None:
        window = max(1, values.size // 50)
    if not isinstance(window, (int, np.integer)) or window < 1:
        raise ValueError(f"window must be a positive integer; got {window!r}.")

    if ax is None:
        fig, ax = plt.subplots(figsize=(6.0, 3.5), layout="constrained")
    else:
        fig = _root_figure(ax)
    steps = np.arange(values.size)
    ax.plot(steps, values, lw=0.8, alpha=0.4, label="ELBO")
    if window > 1:
        ax.plot(steps, _running_mean(values, window), lw=1.6, label=f"running mean ({window})")
    ax.set_yscale(yscale)
    ax.set_xlabel("step")
    ax.set_ylabel("ELBO")
    ax.legend(loc="lower right")
    return fig


def plot_order_probabilities(order_probs, *, node_names=None, ax=None) -> Figure:
    """Heatmap of the posterior probability of each node at each topological position.

    Parameters
    ----------
    order_probs : array_like, shape (d, d)
        ``order_probs[node, position]`` in [0, 1], e.g. from
        :func:`latentscm.metrics.order_probabilities` applied to ``Posterior.orders``.
    node_names : sequence of str, optional
        ``d`` row labels; defaults to ``0..d-1``.
    ax : matplotlib.axes.Axes, optional
        Where to draw; a new figure is created when omitted.

    Returns
    -------
    matplotlib.figure.Figure
    """
    p = _square(order_probs, "order_probs")
    if not np.all(np.isfinite(p)) or p.min() < 0 or p.max() > 1:
        raise ValueError("order_probs must hold probabilities in [0, 1] (finite).")
    d = p.shape[0]
    labels = _labels(node_names, d)
    if ax is None:
        fig, ax = plt.subplots(figsize=(4.8, 4.0), layout="constrained")
    else:
        fig = _root_figure(ax)
    im = _heatmap(
        ax, p, [str(k) for k in range(d)], title="Posterior order probability",
        xlabel="position in topological order", ylabel="node", cmap="magma",
    )
    ax.set_yticks(range(d), labels)
    fig.colorbar(im, ax=ax, shrink=0.8, label="P(node at position)")
    return fig


def save_figure(fig: Figure, path, **savefig_kwargs) -> Path:
    """Save ``fig`` atomically and close it.

    The figure is written to a temporary file in the destination directory and moved into place
    with :func:`os.replace`, so readers never see a partial file. The format follows the file
    extension (e.g. ``.png``, ``.pdf``, ``.svg``). On success the figure is closed; if saving
    fails, the temporary file is removed, the figure is left open and the error propagates.

    Parameters
    ----------
    fig : matplotlib.figure.Figure
        Figure to save.
    path : str or os.PathLike
        Destination file; its directory must exist.
    **savefig_kwargs
        Passed to :meth:`matplotlib.figure.Figure.savefig` (e.g. ``dpi``, ``bbox_inches``).

    Returns
    -------
    pathlib.Path
        The destination path.
    """
    if not isinstance(fig, Figure):
        raise ValueError(f"fig must be a matplotlib Figure; got {type(fig).__name__}.")
    path = Path(path)
    fmt = path.suffix.lstrip(".").lower()
    if not fmt:
        raise ValueError(f"path needs a file extension naming the format (e.g. .png); got {path}.")
    if not path.parent.is_dir():
        raise ValueError(f"directory {path.parent} does not exist; create it first.")
    atomic_write(path, lambda tmp: fig.savefig(tmp, format=fmt, **savefig_kwargs))
    plt.close(fig)
    return path


def plot_comparison(table, *, metrics=("e_shd", "auroc", "mcc", "heldout_nll", "wall_s", "peak_rss_mb")) -> Figure:
    """One panel per metric: each method's fits (dots) and mean (bar). ``table``: one row per fit."""
    metrics = [m for m in metrics if m in table and table[m].notna().any()]
    fig, axes = plt.subplots(1, len(metrics), figsize=(3.0 * len(metrics), 3.2), squeeze=False)
    methods = list(dict.fromkeys(table["method"]))
    for ax, metric in zip(axes[0], metrics):
        for i, method in enumerate(methods):
            values = table.loc[table["method"] == method, metric].to_numpy(dtype=float)
            ax.bar(i, np.nanmean(values) if np.isfinite(values).any() else 0.0, color="C0", alpha=0.35)
            ax.plot(np.full(len(values), i), values, "o", color="C0")
        ax.set_xticks(range(len(methods)), methods, rotation=30, ha="right")
        ax.set_title(metric)
    fig.tight_layout()
    return fig


def plot_scaling(table, *, x="d", group=("method",), metrics=("e_shd", "auroc", "mcc"),
                 costs=("wall_s", "peak_rss_mb")) -> Figure:
    """Metrics and costs against problem size: one panel per column, one line per group.

    ``table``: one row per fit (e.g. a grid benchmark's CSV) with a numeric column ``x`` and the
    columns in ``group`` (e.g. method, graph, targets), whose distinct combinations become lines of
    the mean over fits (dots: single fits). ``metrics`` panels have linear axes; ``costs`` panels
    (seconds, memory) are log-log.
    """
    metrics = [m for m in metrics if m in table and table[m].notna().any()]
    costs = [m for m in costs if m in table and table[m].notna().any()]
    panels = [(m, False) for m in metrics] + [(m, True) for m in costs]
    if not panels:
        raise ValueError("plot_scaling: the table has none of the metric or cost columns to plot")
    group = [g for g in group if g in table]
    fig, axes = plt.subplots(1, len(panels), figsize=(3.4 * len(panels), 3.4), squeeze=False)
    keys = table[group].astype(str).agg(" ".join, axis=1) if group else None
    labels = list(dict.fromkeys(keys)) if group else [""]
    for ax, (column, loglog) in zip(axes[0], panels):
        for i, label in enumerate(labels):
            part = table if keys is None else table[keys == label]
            part = part[np.isfinite(part[column].to_numpy(dtype=float))]
            if part.empty:
                continue
            mean = part.groupby(x)[column].mean()
            ax.plot(mean.index, mean.to_numpy(), "-", color=f"C{i % 10}", label=label or None)
            ax.plot(part[x], part[column], "o", ms=3, alpha=0.5, color=f"C{i % 10}")
        if loglog:
            ax.set_xscale("log")
            ax.set_yscale("log")
        ax.set_xlabel(x)
        ax.set_title(column)
    if group and len(labels) > 1:
        axes[0][0].legend(fontsize=7)
    fig.tight_layout()
    return fig
