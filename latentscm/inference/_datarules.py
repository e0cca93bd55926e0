"""Rules that a method's settings impose on a dataset, shared by the configs' ``check_dataset``.

Each raises ``DataError`` (the data cannot be fitted so) or ``ValueError`` (the settings do not fit the
data) with a message that names the method and the fix; all run before any work.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from ..data import DataError


def check_decoder(method, decoder, dataset):
    """A linear decoder needs ``D >= d``; the identity decoder (x is z) ``D == d``; others nothing."""
    if decoder == "linear" and dataset.D < dataset.d:
        raise DataError(f"{method}: x has D = {dataset.D} dimensions, fewer than the d = {dataset.d} latents, so a "
                        "linear decoder cannot identify them; fit fewer latents or give more observed dimensions")
    if decoder == "identity" and dataset.D != dataset.d:
        raise ValueError(f"{method}: decoder='identity' needs x to be the latents themselves (D == d); the "
                         f"dataset has D={dataset.D}, d={dataset.d}. Use decoder='linear'.")


def check_known_order(method, order, d):
    """A known order (or None) must be a permutation of the nodes ``0..d-1``."""
    if order is not None and sorted(order) != list(range(d)):
        raise ValueError(f"{method}: known_order must be a permutation of 0..{d - 1}; got {tuple(order)}")


def check_pairs(method, use_pairs, dataset):
    """``use_pairs`` needs pair ids, some shared by two rows (the loader refuses ids of three rows or more)."""
    if not use_pairs:
        return
    if dataset.pair is None:
        raise DataError(f"{method}: use_pairs = true needs pair ids (dataset.pair: rows that share their "
                        "exogenous noise carry the same id); this dataset has none. Fit with use_pairs = false")
    _, counts = np.unique(dataset.pair, return_counts=True)
    if counts.max() < 2:
        raise DataError(f"{method}: use_pairs = true, but no pair id is shared by two rows; fit with "
                        "use_pairs = false")


def check_unknowns(method, dataset, *, targets=False, values=False, use_pairs=False, precision="float64"):
    """Unknown intervention targets / values need settings that infer them (``targets`` / ``values``: whether
    these settings do; the message lists the methods with such a setting); inferred targets need single rows
    (``use_pairs`` false) and float64."""
    if dataset.num_unknown_targets:
        if not targets:
            raise DataError(f"{dataset.num_unknown_targets} intervention targets (row, node) are unknown. Give "
                            f"them, or infer them with the setting unknown_targets = \"latent\" (methods that "
                            f"support it: {_methods_with('unknown_targets')})")
        if use_pairs:
            raise DataError(f"{method}: use_pairs = true cannot be combined with unknown targets (a pair's two "
                            "regimes would have to be enumerated jointly); fit with use_pairs = false")
        if precision != "float64":
            raise ValueError(f"{method}: unknown targets need precision = \"float64\" (the enumerated target "
                             "sets' densities differ by amounts float32 does not resolve)")
    if dataset.num_unknown_values and not values:
        first = int(np.argwhere(np.isnan(dataset.values))[0, 0])
        raise DataError(f"{dataset.num_unknown_values} intervention values are missing where targets are 1 "
                        f"(first in row {first}). Provide them, or infer them as latent variables with the "
                        f"setting unknown_values = \"latent\" (methods that support it: "
                        f"{_methods_with('unknown_values')})")


def _methods_with(name):
    """The registered methods whose settings include ``name``."""
    from .api import METHODS  # the registry imports every config, so it is read here, when a message needs it

    return sorted(m for m, spec in METHODS.items() if name in {f.name for f in dataclasses.fields(spec.config)})
