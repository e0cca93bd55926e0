"""Run folders: what one fit leaves on disk, every file written atomically.

A run folder holds

================================  =====================================================================
``posterior.nc``                  ``posterior.to_arviz()`` as netCDF (h5netcdf engine)
``metrics.json``                  flat JSON object of metrics (see :func:`run_metrics`) plus
                                  ``diagnostics``: the fit's list of problems (``Posterior.diagnostics``)
``run.json``                      optional description of the run (settings, command line), when given
``dataset.npz``                   the training set in the external format, when requested
``edge_probabilities.png``        posterior edge probabilities, beside the true graph when known
``order_probabilities.png``       posterior probability of each node at each topological position
``order_posterior.json``          the weighed orders (``collapsed``'s order mixture: probability, PSIS k,
                                  effective size and relative error per order), when the fit made one
``elbo.png``                      ELBO trace (only when the method has one)
``latents.png``                   inferred against true latents (only when true latents are known)
``target_probabilities.png``      posterior target probabilities (regime x node), beside the true targets
                                  when known (only when the fit inferred targets)
``ppc.png``, ``ppc.json``         posterior predictive check of each regime's mean and covariance (plot;
                                  per-regime p-values and misfits), see :mod:`latentscm.criticism`
                                  (with the training data, when the posterior can replicate x)
================================  =====================================================================

With the training data, ``posterior.nc`` has a ``log_likelihood`` group (per pair when the data have pair
ids, else per row: see :meth:`latentscm.inference.Posterior.to_arviz`), and ``metrics.json`` adds the
model criticism of :func:`latentscm.criticism.criticise`: ``loo``, ``loo_se``, ``loo_p``, ``loo_k_max``
(PSIS-LOO on the training data), ``ppc_min_p`` and ``ppc_failed``; its problems (misfits) join
``diagnostics``, its notes (e.g. that LOO is unreliable, Pareto k > 0.7) go to ``notes``.

Every file is first written to a temporary file in the same folder and then moved into place with
:func:`os.replace`, so a reader never sees a half-written file.
"""

from __future__ import annotations

import json
import math
import resource
import os
from collections.abc import Mapping
from pathlib import Path

import numpy as np

from ._io import atomic_write

__all__ = ["atomic_write", "write_json", "run_metrics", "write_run"]


def _jsonable(obj):
    """Plain-Python copy of ``obj`` for JSON: numpy scalars and arrays converted, nan/inf -> None."""
    if isinstance(obj, Mapping):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, np.generic):
        obj = obj.item()
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj


def write_json(path: str | os.PathLike, obj) -> Path:
    """Write ``obj`` as indented JSON, atomically. Non-finite floats become ``null`` (valid JSON)."""
    text = json.dumps(_jsonable(obj), indent=2, allow_nan=False) + "\n"
    return atomic_write(path, lambda tmp: Path(tmp).write_text(text, encoding="utf-8"))


def run_metrics(posterior, dataset, test=None, *, seed=None) -> dict:
    """Flat dict of a fit's summary and, where the truth is known, its metrics.

    Parameters
    ----------
    posterior : latentscm.inference.Posterior
        The fit of ``dataset``.
    dataset : latentscm.data.Dataset
        The training data; its ``weights`` and ``z`` (when present) are the ground truth.
    test : latentscm.data.Dataset, optional
        Held-out rows; adds ``heldout_nll`` (mean per-row negative log predictive density).
    seed : int, optional
        Recorded as ``seed``.

    Returns
    -------
    dict
        ``method``, ``seed`` (when given), ``n`` (rows), ``d``, ``D``, ``seconds``; with true weights
        ``e_shd``, ``e_shd_double``, ``auroc``, ``auprc``, ``edge_rmse`` (see
        :func:`latentscm.metrics.structure_metrics`); with true latents ``mcc`` (of
        ``posterior.latent_mean``); with inferred targets and ``true_targets`` ``target_auroc`` and
        ``target_auprc`` (latents, graph and targets aligned with the truth by the MCC matching first:
        unknown targets name the latents only up to relabelling); with ``test`` ``heldout_nll`` (NaN when the method has no
        predictive density); ``peak_rss_mb``, the process's peak resident memory.
    """
    from .metrics import mcc, regime_table, structure_metrics, target_auprc, target_auroc

    out = {"method": posterior.method}
    if seed is not None:
        out["seed"] = int(seed)
    out |= {"n": dataset.N, "d": dataset.d, "D": dataset.D, "seconds": float(posterior.seconds)}
    if "refits" in posterior.info:  # fits redone with twice the steps after failing their moment check
        out["refits"] = len(posterior.info["refits"])
    W, probs, z_pred = posterior.W, posterior.target_probs, posterior.latent_mean
    if dataset.target_unknown is not None and dataset.z is not None:
        # inferred targets name the latents only up to relabelling: align them with the truth by the MCC matching
        _, match = mcc(z_pred, dataset.z, return_matching=True)
        W, z_pred = W[:, match][:, :, match], z_pred[:, match]
        probs = None if probs is None else probs[:, match]
    if dataset.weights is not None:
        z = {} if dataset.z is None else {"z_pred": z_pred, "z_true": dataset.z}
        out |= structure_metrics(W, dataset.weights, **z)
    elif dataset.z is not None:
        out["mcc"] = mcc(posterior.latent_mean, dataset.z)
    if probs is not None and dataset.true_targets is not None:
        ids, truth = regime_table(dataset.regime, dataset.true_targets)
        if np.array_equal(ids, posterior.regimes):
            out["target_auroc"] = target_auroc(probs, truth)
            out["target_auprc"] = target_auprc(probs, truth)
    if test is not None:
        try:
            out["heldout_nll"] = float(posterior.heldout_nll(test))
        except (ValueError, NotImplementedError):  # e.g. no predictive density for this decoder
            out["heldout_nll"] = float("nan")
    # peak resident memory of this process so far (the fit's peak when one process runs one fit)
    out["peak_rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0
    return {k: (float(v) if isinstance(v, np.floating) else v) for k, v in out.items()}


def write_run(out_dir: str | os.PathLike, posterior, metrics: Mapping, dataset=None, *,
              save_dataset: bool = True, info: Mapping | None = None, criticism=None) -> Path:
    """Write a run folder (see the module docstring for its files).

    Parameters
    ----------
    out_dir : str or os.PathLike
        The folder; created (with parents) when missing. Existing files of the same names are replaced.
    posterior : latentscm.inference.Posterior
    metrics : mapping
        Written as ``metrics.json``, e.g. from :func:`run_metrics`, with ``diagnostics`` added: the list
        of problems the fit found in its own evidence (``posterior.diagnostics``; empty when none).
    dataset : latentscm.data.Dataset, optional
        The training data. Its ground truth (``weights``, ``z``) goes into the plots; it is saved as
        ``dataset.npz`` unless ``save_dataset`` is False.
    save_dataset : bool, default True
    info : mapping, optional
        Written as ``run.json`` (e.g. the settings and command line that produced the run).
    criticism : latentscm.criticism.Criticism, optional
        The model criticism of ``posterior`` on ``dataset`` when already computed; by default computed
        here (:func:`latentscm.criticism.criticise`) whenever ``dataset`` is given.

    Returns
    -------
    pathlib.Path
        The run folder.
    """
    from .metrics import order_probabilities, regime_table
    from .plots import (plot_edge_probabilities, plot_elbo, plot_latents, plot_order_probabilities,
                        plot_target_probabilities, save_figure)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if criticism is None and dataset is not None:
        from .criticism import criticise

        criticism = criticise(posterior, dataset)
    tree = posterior.to_arviz() if criticism is None else criticism.tree
    atomic_write(out / "posterior.nc", lambda tmp: tree.to_netcdf(tmp, engine="h5netcdf"))
    diagnostics, notes = [str(p) for p in getattr(posterior, "diagnostics", [])], []
    if criticism is not None:
        metrics = {**metrics, **criticism.metrics}
        diagnostics += [p for p in criticism.problems if p not in diagnostics]
        notes = list(criticism.notes)
    write_json(out / "metrics.json", {**metrics, "diagnostics": diagnostics, "notes": notes})
    if criticism is not None and criticism.check is not None:
        from .plots_checks import plot_regime_check

        write_json(out / "ppc.json", criticism.check.to_json())
        save_figure(plot_regime_check(criticism.check), out / "ppc.png")
    if info is not None:
        write_json(out / "run.json", info)
    if "order_mixture" in posterior.info:
        write_json(out / "order_posterior.json", posterior.info["order_mixture"])
    if dataset is not None and save_dataset:
        dataset.save(out / "dataset.npz")

    if posterior.target_probs is not None:
        truth = None
        if dataset is not None and dataset.true_targets is not None:
            truth = regime_table(dataset.regime, dataset.true_targets)[1]
        save_figure(plot_target_probabilities(posterior.target_probs, truth, regime_ids=posterior.regimes),
                    out / "target_probabilities.png")
    true_w = None if dataset is None else dataset.weights
    save_figure(plot_edge_probabilities(posterior.edge_probs(), true_w), out / "edge_probabilities.png")
    save_figure(plot_order_probabilities(order_probabilities(np.asarray(posterior.orders))),
                out / "order_probabilities.png")
    elbo = np.asarray(posterior.elbo if posterior.elbo is not None else [])
    if elbo.size:
        save_figure(plot_elbo(elbo), out / "elbo.png")
    if dataset is not None and dataset.z is not None and np.shape(posterior.latent_mean) == dataset.z.shape:
        save_figure(plot_latents(posterior.latent_mean, dataset.z), out / "latents.png")
    return out
