"""Plots of model checks (matplotlib): the posterior predictive check of each regime's moments.

Like :mod:`latentscm.plots`, every function returns the :class:`~matplotlib.figure.Figure` it drew on
and never calls ``plt.show``; save it with :func:`latentscm.plots.save_figure`.
"""

from __future__ import annotations

import matplotlib.pyplot as plt
import numpy as np
from matplotlib.figure import Figure

__all__ = ["plot_regime_check"]


def plot_regime_check(check, *, max_coords: int = 4, level: float = 0.95) -> Figure:
    """Observed against replicated regime moments, with the per-regime p-values.

    One row of panels per coordinate of the check's basis (the first ``max_coords``): the regime's
    mean (left) and standard deviation (right) of the data (dots; red where outside the interval)
    against the central ``level`` interval of the replicates (bars). The bottom panel shows each
    regime's p-values of the mean and covariance discrepancies as ``-log10 p`` (capped at 300) with the
    failure threshold (dashed) and shades the regimes that fail.

    check : :class:`latentscm.criticism.RegimeCheck`
    """
    q = min(check.mean.shape[1], max_coords)
    R = len(check.regimes)
    width, height = min(max(8.0, 0.35 * R + 4), 16.0), 1.9 * (q + 1) + 0.6
    fig = plt.figure(figsize=(width, height))
    # fixed margins in inches (tight_layout's solver took about a third of the figure's time)
    gs = fig.add_gridspec(q + 1, 2, left=0.75 / width, right=1 - 0.15 / width, bottom=0.55 / height,
                          top=1 - 0.85 / height, wspace=0.75 / ((width - 0.9) / 2), hspace=0.45 / 1.9)
    axes = np.array([[fig.add_subplot(gs[j, i]) for i in range(2)] for j in range(q)]).reshape(q, 2)
    x = np.arange(R)
    ticks = x[:: -(-R // 40)]  # at most 40 labelled regimes per axis
    bar = min(4.0, 36 * (width - 0.9) / 2 / R)  # points: at most half a regime's share of a panel's width
    lo, hi = (1 - level) / 2, 1 - (1 - level) / 2
    sd = np.sqrt(np.diagonal(check.cov, axis1=-2, axis2=-1))
    sd_rep = np.sqrt(np.diagonal(check.cov_rep, axis1=-2, axis2=-1))
    coord = "node" if check.basis.startswith("nodes") else "PC"
    for j in range(q):
        for ax, obs, rep, name in ((axes[j, 0], check.mean[:, j], check.mean_rep[:, :, j], "mean"),
                                   (axes[j, 1], sd[:, j], sd_rep[:, :, j], "sd")):
            low, high = np.quantile(rep, [lo, hi], axis=0)
            ax.vlines(x, low, high, color="0.6", lw=bar, label=f"replicated {level:.0%}")
            outside = (obs < low) | (obs > high)
            ax.plot(x[~outside], obs[~outside], "o", color="C0", ms=4, label="observed")
            ax.plot(x[outside], obs[outside], "o", color="C3", ms=4, label="observed, outside")
            ax.set_ylabel(f"{coord} {j} {name}", fontsize=8)
            ax.set_xlim(-0.6, R - 0.4)
            if j == q - 1:  # ticks on the bottom row only (matplotlib's ticks were most of the figure's time)
                ax.set_xticks(ticks, [str(check.regimes[r]) for r in ticks], fontsize=7)
            else:
                ax.set_xticks([])
    if q:  # one legend for the panels, in the top margin under the title
        fig.legend(*axes[0, 0].get_legend_handles_labels(), loc="upper center", ncol=3, fontsize=7, frameon=False,
                   bbox_to_anchor=(0.5, 1 - 0.5 / height))
    ax = fig.add_subplot(gs[q, :])
    with np.errstate(divide="ignore"):  # p = 0 (beyond float precision) is drawn at the top
        score = [np.fmin(-np.log10(p), 300.0) for p in (check.p_mean, check.p_cov)]
    ax.plot(x - 0.1, score[0], "o", color="C0", ms=4, label="mean")
    ax.plot(x + 0.1, score[1], "s", color="C1", ms=4, label="covariance")
    ax.axhline(-np.log10(check.threshold), ls="--", color="C3", lw=1, label=f"p = {check.threshold:.1e}")
    for r in np.flatnonzero(check.failed):
        ax.axvspan(r - 0.45, r + 0.45, color="C3", alpha=0.15)
    ax.set_xticks(ticks, [str(check.regimes[r]) for r in ticks], fontsize=7)
    ax.set_xlim(-0.6, R - 0.4)
    ax.set_xlabel("regime")
    ax.set_ylabel("-log10 p")
    ax.set_ylim(bottom=0)
    ax.legend(fontsize=7, loc="upper right", ncol=3)
    failed = int(check.failed.sum())
    fig.suptitle(f"Posterior predictive check of regime moments: {failed} of {R} regimes fail (shaded)\n"
                 f"{len(check.mean_rep)} replicates; coordinates: {check.basis}", fontsize=9, y=1 - 0.1 / height,
                 va="top")
    return fig
