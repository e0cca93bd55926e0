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
   a random ``1 - holdout`` of the units (pairs when the data have pair ids, else rows); its latent
   summaries cover every row. Both fits are judged on the held-out units by the same statistic, the
   regime check's excess misfit (:func:`prefer_network`): the MLP fit is kept when it lowers it by more
   than ``kl_threshold``, else the linear fit. The linear fit saw the held-out rows (it was fitted on all
   of them), which favours it. Both fits' held-out negative log predictive densities are reported too, not
   used: in pixel space they are dominated by how precisely each decoder reproduces D = 2500 pixels, where
   the exact linear model wins even when its latent structure is wrong (docs/criticism.md).

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

__all__ = ["AUTO_KL", "MLP_STEPS", "AutoConfig", "fit_auto", "heldout_nll", "linear_misfit", "prefer_network",
           "split_units"]

#: excess misfit (nats per row) of the regime check above which the linear decoder is refined: 4 times the
#: chemistry images' (0.06, a good linear fit), a fifth of the saturating images' (1.2; docs/criticism.md)
AUTO_KL = 0.25
#: optimisation steps of the MLP refinement unless ``mlp`` sets them (amortized's own default is 2000): on
#: saturating images (seed 0) 2000 steps left the posterior at E-SHD 2.5 (AUROC 1.0), 4000 reached 0.98
MLP_STEPS = 4000
_TABLE = Rule("a table of the method's settings (e.g. {steps = 3000})", lambda v: isinstance(v, Mapping))


@dataclass(frozen=True)
class AutoConfig:
    """Settings of ``auto`` (see the module docstring).

    ``linear``: settings of ``collapsed`` (None: its defaults); ``mlp``: settings of ``amortized`` (None:
    its defaults with ``steps = MLP_STEPS``, 4000; its decoder must be ``"mlp"``); ``refine``: ``"check"``
    (refine when the check fails), ``"never"`` (the linear fit and its check only) or ``"always"`` (refine
    and compare whatever the check says); ``kl_threshold``: the misfit above which the check fails, and the
    margin by which the MLP must lower it held out; ``holdout``: the fraction of units held out.
    """

    linear: Mapping | None = setting(None, optional(_TABLE, "for the defaults of collapsed"))
    mlp: Mapping | None = setting(None, optional(_TABLE, "for the defaults of amortized"))
    refine: str = setting("check", one_of("check", "never", "always"))
    kl_threshold: float = setting(AUTO_KL, number(gt=0))
    holdout: float = setting(0.2, number(gt=0, lt=1))

    def __post_init__(self):
        check_fields(self, "auto")
        self.configs()  # the two methods' settings, checked now: unknown names and bad values fail before work

    def configs(self):
        """The settings objects of ``collapsed`` and ``amortized``."""
        from .api import make_config

        linear = make_config("collapsed", dict(self.linear or {}))
        mlp = make_config("amortized", {"decoder": "mlp", "steps": MLP_STEPS} | dict(self.mlp or {}))
        if mlp.decoder != "mlp":
            raise ValueError(f"auto: mlp.decoder must be 'mlp' (the refinement is the MLP decoder); got "
                             f"{mlp.decoder!r}. Use method 'amortized' for a linear amortized fit")
        return linear, mlp

    def check_dataset(self, dataset):
        """Refuse, before any work, a dataset either fit cannot take (the MLP's only when it may run)."""
        linear, mlp = self.configs()
        linear.check_dataset(dataset)
        if self.refine != "never":
            try:
                mlp.check_dataset(dataset)
            except ValueError as e:  # DataError too
                raise type(e)(f"auto: the MLP refinement (amortized) cannot take this dataset: {e}. Set "
                              "refine = 'never' (the linear fit and its check only) or fit with method "
                              "'collapsed'") from None
            count = len(np.unique(_units(dataset)))
            if count < 10:
                raise ValueError(f"auto: the held-out comparison needs at least 10 units (pairs or rows); the "
                                 f"dataset has {count}. Use method 'collapsed' or refine = 'never'")


def linear_misfit(check) -> float:
    """The check's statistic: :meth:`RegimeCheck.excess_misfit <latentscm.criticism.RegimeCheck.excess_misfit>`,
    the nats per row by which the data's regime moments miss the model's beyond the model's own sampling
    noise (row-weighted over the checked regimes); NaN when no regime could be checked."""
    return check.excess_misfit()


def _units(dataset):
    """Each row's unit: its pair id when the data have them, else the row itself."""
    return dataset.pair if dataset.pair is not None else np.arange(dataset.N)


def split_units(dataset, holdout, seed):
    """(train_rows, heldout_rows) index arrays: a random ``holdout`` fraction of the units (pair ids when the
    data have them, else rows), at least one unit on each side; a pair's rows stay together."""
    units = _units(dataset)
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


def prefer_network(misfit_linear, misfit_network, threshold) -> bool:
    """Whether the held-out evidence prefers the network decoder: both fits' excess misfits (nats per row, on
    the same held-out rows) and the network's must be lower by more than ``threshold``. NaN (no checkable
    regime, or a failed check): False, the linear fit stays."""
    return bool(np.isfinite(misfit_linear) and np.isfinite(misfit_network)
                and misfit_linear - misfit_network > threshold)


def heldout_nll(posterior, dataset) -> tuple[float, float]:
    """Mean and standard error over units of the per-unit held-out NLL (reported beside the decision)."""
    nll = unit_nll(posterior, dataset)
    return float(nll.mean()), float(nll.std(ddof=1) / np.sqrt(len(nll)))


def describe_choice(choice: Mapping) -> str:
    """The sentence the command line prints after ``decoder:``."""
    head = f"{choice['decoder']} ({choice['method']})"
    check = (f"the linear fit's regime check misfit (excess over sampling noise) {choice['misfit']:.3g} nats per row "
             f"{'>' if choice['misfit'] > choice['kl_threshold'] else '<='} {choice['kl_threshold']:g}")
    if choice.get("heldout_linear") is None:
        return f"{head}: {check}" + ("" if choice["refine"] != "never" else " (refine = 'never')")
    return (f"{head}: {check}; on {choice['heldout_rows']} held-out rows the misfit is {choice['heldout_linear']:.3g} "
            f"(linear) and {choice['heldout_mlp']:.3g} (mlp); the MLP is kept when lower by more than "
            f"{choice['kl_threshold']:g} (held-out NLL per {choice['unit']}, not used: linear "
            f"{choice['nll_linear']:.6g}, mlp {choice['nll_mlp']:.6g})")


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
              "refine": config.refine, "heldout_linear": None, "linear_seconds": linear.seconds}
    refine = config.refine == "always" or (config.refine == "check" and misfit > config.kl_threshold)
    kept = linear
    if refine:
        train_rows, held_rows = split_units(dataset, config.holdout, seed)
        held = dataset.subset(held_rows)
        network = fit_amortized(dataset.subset(train_rows), config=mlp_cfg, priors=priors, seed=seed,
                                progress=progress, latents_for=dataset)
        heldout = [linear_misfit(regime_check(post, held, seed=seed)) for post in (linear, network)]
        nlls = [heldout_nll(post, held) for post in (linear, network)]
        choice |= {"unit": "pair" if held.pair is not None else "row", "heldout_rows": int(held.N),
                   "heldout_linear": heldout[0], "heldout_mlp": heldout[1], "nll_linear": nlls[0][0],
                   "nll_linear_se": nlls[0][1], "nll_mlp": nlls[1][0], "nll_mlp_se": nlls[1][1],
                   "mlp_seconds": network.seconds}
        if prefer_network(*heldout, config.kl_threshold):
            kept = network
            choice |= {"decoder": "mlp", "method": "amortized"}
    choice["reason"] = describe_choice(choice)
    choice["seconds"] = time.perf_counter() - start
    return dataclasses.replace(kept, info=dict(kept.info) | {"decoder_choice": choice},
                               seconds=time.perf_counter() - start)
