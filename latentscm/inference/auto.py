"""``auto``: the decoder chosen by the evidence, for images and other data with many more dimensions than latents.

One mechanism, three steps (docs/criticism.md, "The decoder chosen by the evidence"):

1. **Linear fit.** ``collapsed`` (linear decoder, z integrated out exactly) on every row, with the
   settings ``linear``.
2. **Check.** The regime check of :mod:`latentscm.criticism` on the training data. The statistic is
   :func:`linear_misfit`: per regime, the KL divergence of the model's replicated Gaussian from the regime's
   own (``kl_mean + kl_cov``) less the same misfit of data the model generated (the replicates' average:
   sampling noise), averaged over the rows. The linear fit is kept, with no further work, when it is at
   most ``kl_threshold`` (:data:`AUTO_KL`, 0.25 nats per row; measured: 0.06 on the chemistry images,
   whose linear fit is good, 1.2 on saturating images, whose linear fit is wrong; docs/criticism.md).
   No checkable regime (NaN): the linear fit is kept.
3. **Refinement.** Otherwise ``amortized`` with the MLP decoder (settings ``mlp``) is fitted on the rows of
   a random ``1 - holdout`` of the units (pairs when the data have pair ids, else rows), and both fits'
   held-out negative log predictive densities are computed on the other units (:func:`prefer_network`).
   The MLP fit is kept when its NLL is lower by more than ``margin`` standard errors of the per-unit
   difference, else the linear one. The linear fit saw the held-out rows (it was fitted on all of them)
   and the MLP's NLL is an importance-sampling estimate, biased high: both favour the linear decoder, so
   the MLP must win clearly. The kept MLP fit is the one the evidence is about (fitted on the split); its
   latent summaries cover every row.

The returned posterior is the kept fit's (``method`` ``"collapsed"`` or ``"amortized"``) with
``info["decoder_choice"]``: the decoder, the method, the statistic and threshold, the held-out NLLs,
and a sentence saying why (:func:`describe_choice`).
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
from scipy.special import logsumexp

from .._validate import Rule, check_fields, number, one_of, optional, setting

__all__ = ["AUTO_KL", "AUTO_RATIO", "AutoConfig", "default_method", "fit_auto", "linear_misfit", "prefer_network",
           "split_units"]

#: excess misfit (nats per row) of the regime check above which the linear decoder is refined: 4 times the
#: chemistry images' (0.06, a good linear fit), a fifth of the saturating images' (1.2; docs/criticism.md)
AUTO_KL = 0.25
#: data with at least this many dimensions per latent (``D >= AUTO_RATIO * d``), and images, get ``auto`` by
#: default on the command line
AUTO_RATIO = 10
_TABLE = Rule("a table of the method's settings (e.g. {steps = 3000})", lambda v: isinstance(v, Mapping))


def default_method(dataset) -> str:
    """``"auto"`` for images (an ``image_shape``) and data with ``D >= AUTO_RATIO * d``, else ``"collapsed"``."""
    return "auto" if dataset.image_shape or dataset.D >= AUTO_RATIO * dataset.d else "collapsed"


@dataclass(frozen=True)
class AutoConfig:
    """Settings of ``auto`` (see the module docstring).

    ``linear``: settings of ``collapsed`` (None: its defaults); ``mlp``: settings of ``amortized`` (None:
    its defaults; its decoder must be ``"mlp"``); ``refine``: ``"check"`` (refine when the check fails),
    ``"never"`` (the linear fit and its check only) or ``"always"`` (refine and compare whatever the
    check says); ``kl_threshold``: the misfit above which the check fails; ``holdout``: the fraction of
    units held out for the comparison; ``margin``: standard errors by which the MLP must win.
    """

    linear: Mapping | None = setting(None, optional(_TABLE, "for the defaults of collapsed"))
    mlp: Mapping | None = setting(None, optional(_TABLE, "for the defaults of amortized"))
    refine: str = setting("check", one_of("check", "never", "always"))
    kl_threshold: float = setting(AUTO_KL, number(gt=0))
    holdout: float = setting(0.2, number(gt=0, lt=1))
    margin: float = setting(2.0, number(ge=0))

    def __post_init__(self):
        check_fields(self, "auto")
        self.configs()  # the two methods' settings, checked now: unknown names and bad values fail before work

    def configs(self):
        """The settings objects of ``collapsed`` and ``amortized``."""
        from .api import make_config

        linear = make_config("collapsed", dict(self.linear or {}))
        mlp = make_config("amortized", {"decoder": "mlp"} | dict(self.mlp or {}))
        if mlp.decoder != "mlp":
            raise ValueError(f"auto: mlp.decoder must be 'mlp' (the refinement is the MLP decoder); got "
                             f"{mlp.decoder!r}. Use method 'amortized' for a linear amortized fit")
        return linear, mlp

    def check_dataset(self, dataset):
        """Refuse, before any work, a dataset either fit cannot take (the MLP's only when it may run)."""
        linear, mlp = self.configs()
        linear.check_dataset(dataset)
        if self.refine != "never":
            mlp.check_dataset(dataset)
            units = dataset.pair if dataset.pair is not None else np.arange(dataset.N)
            if len(np.unique(units)) < 10:
                raise ValueError(f"auto: the held-out comparison needs at least 10 units (pairs or rows); the "
                                 f"dataset has {len(np.unique(units))}. Use method 'collapsed' or refine = 'never'")


def linear_misfit(check) -> float:
    """The check's statistic: :meth:`RegimeCheck.excess_misfit <latentscm.criticism.RegimeCheck.excess_misfit>`,
    the nats per row by which the data's regime moments miss the model's beyond the model's own sampling
    noise (row-weighted over the checked regimes); NaN when no regime could be checked."""
    return check.excess_misfit()


def split_units(dataset, holdout, seed):
    """(train_rows, heldout_rows) index arrays: a random ``holdout`` fraction of the units (pair ids when the
    data have them, else rows), at least one unit on each side; a pair's rows stay together."""
    units = dataset.pair if dataset.pair is not None else np.arange(dataset.N)
    ids = np.unique(units)
    rng = np.random.default_rng([seed, 12])
    k = min(max(1, round(holdout * len(ids))), len(ids) - 1)
    held = np.isin(units, rng.choice(ids, size=k, replace=False))
    return np.flatnonzero(~held), np.flatnonzero(held)


def unit_nll(posterior, dataset) -> np.ndarray:
    """(U,) negative log predictive density of each unit of ``dataset`` (summed over a pair's rows, rows
    taken as independent given the draw): ``-log mean_s p(x_n | theta_s)`` per row."""
    ll = posterior.log_likelihood(dataset)
    nll = -(logsumexp(ll, axis=0) - np.log(len(ll)))
    if dataset.pair is None:
        return nll
    return np.bincount(np.unique(dataset.pair, return_inverse=True)[1], weights=nll)


def prefer_network(nll_linear, nll_network, margin) -> tuple[bool, float, float]:
    """Whether the held-out evidence prefers the network decoder: per-unit NLLs (U,) of both fits on the same
    units; the mean difference ``linear - network`` must exceed ``margin`` times its standard error (and 0).
    Returns (prefer, mean difference, standard error), the last two per unit (nats)."""
    nll_linear, nll_network = np.asarray(nll_linear, np.float64), np.asarray(nll_network, np.float64)
    if nll_linear.shape != nll_network.shape or nll_linear.ndim != 1 or len(nll_linear) < 2:
        raise ValueError(f"prefer_network: need two (U,) arrays with U >= 2; got {np.shape(nll_linear)} and "
                         f"{np.shape(nll_network)}")
    diff = nll_linear - nll_network
    if not np.isfinite(diff).all():  # a density that failed: keep the linear fit
        return False, float("nan"), float("nan")
    mean, se = float(diff.mean()), float(diff.std(ddof=1) / np.sqrt(len(diff)))
    return bool(mean > 0 and mean > margin * se), mean, se


def describe_choice(choice: Mapping) -> str:
    """The sentence the command line prints after ``decoder:``."""
    head = f"{choice['decoder']} ({choice['method']})"
    check = (f"the linear fit's regime check misfit (excess over sampling noise) {choice['misfit']:.3g} nats per row "
             f"{'>' if choice['misfit'] > choice['kl_threshold'] else '<='} {choice['kl_threshold']:g}")
    if choice.get("nll_linear") is None:
        return f"{head}: {check}" + ("" if choice["refine"] != "never" else " (refine = 'never')")
    unit = choice["unit"]
    return (f"{head}: {check}; held-out NLL per {unit} on {choice['heldout_units']} {unit}s: linear "
            f"{choice['nll_linear']:.6g}, mlp {choice['nll_mlp']:.6g} (difference {choice['nll_difference']:.3g} "
            f"± {choice['nll_se']:.2g}; the MLP is kept when it wins by more than {choice['margin']:g} se)")


def fit_auto(dataset, *, config: AutoConfig, priors=None, seed=0, progress=True):
    """Fit the linear decoder, check it, refine with the MLP decoder when the check fails, keep the fit the
    held-out evidence prefers (see the module docstring); returns that fit's :class:`Posterior` with
    ``info["decoder_choice"]``."""
    from ..criticism import regime_check
    from .amortized import fit_amortized
    from .collapsed import fit_collapsed

    start = time.perf_counter()
    linear_cfg, mlp_cfg = config.configs()
    linear = fit_collapsed(dataset, config=linear_cfg, priors=priors, seed=seed, progress=progress)
    misfit = linear_misfit(regime_check(linear, dataset, seed=seed))
    choice = {"decoder": "linear", "method": "collapsed", "misfit": misfit, "kl_threshold": config.kl_threshold,
              "refine": config.refine, "nll_linear": None, "linear_seconds": linear.seconds}
    refine = config.refine == "always" or (config.refine == "check" and misfit > config.kl_threshold)
    kept = linear
    if refine:
        train_rows, held_rows = split_units(dataset, config.holdout, seed)
        held = dataset.subset(held_rows)
        network = fit_amortized(dataset.subset(train_rows), config=mlp_cfg, priors=priors, seed=seed,
                                progress=progress, latents_for=dataset)
        nll_linear, nll_network = unit_nll(linear, held), unit_nll(network, held)
        prefer, diff, se = prefer_network(nll_linear, nll_network, config.margin)
        choice |= {"unit": "pair" if held.pair is not None else "row", "heldout_units": len(nll_linear),
                   "heldout_rows": int(held.N), "margin": config.margin, "nll_linear": float(nll_linear.mean()),
                   "nll_mlp": float(nll_network.mean()), "nll_difference": diff, "nll_se": se}
        choice["mlp_seconds"] = network.seconds
        if prefer:
            kept = network
            choice |= {"decoder": "mlp", "method": "amortized"}
    choice["reason"] = describe_choice(choice)
    choice["seconds"] = time.perf_counter() - start
    return dataclasses.replace(kept, info=dict(kept.info) | {"decoder_choice": choice},
                               seconds=time.perf_counter() - start)
