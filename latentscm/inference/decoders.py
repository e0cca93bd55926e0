"""A posterior's decoder: its draws and what it computes from them.

Each decoder is a read-only mapping of its draws (arrays with a leading draw axis S: what ArviZ and the run
folder show) and knows two things: :meth:`Decoder.mean`, the mean of x for latents z under given draws (for
``Posterior.predict`` and the posterior predictive checks), and :meth:`Decoder.log_likelihood`, each draw's
log density of a dataset's rows with the latents integrated out (for ``Posterior.log_likelihood``, so the
held-out NLL, the ArviZ ``log_likelihood`` group and LOO). The fit that builds a decoder gives it the
settings its density needs (``value_scale``, whether pairs were modelled), so nothing reads them back.

* :class:`LinearDecoder` ``x = z A + b + s * noise``: the exact collapsed density (single rows grouped by
  pattern in precision form; pairs jointly when the fit modelled them);
* :class:`IdentityDecoder` ``x = z``: the SCM's density of x;
* :class:`NetworkDecoder`: a network's ``decode`` and, where the method has one, its per-draw
  ``log_predictive`` estimate.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np

from ..models.collapsed import Units, group_block, group_rows, make_units, unit_log_likelihood
from ..models.precision_form import pattern_row_log_likelihood
from ..models.scm import InterventionalLinearGaussian

_LL_DRAWS = 16  # posterior draws per call of the log-likelihood
_LL_ROWS = 512  # rows (or units) per call: every data set of rows compiles to one shape


class Decoder(Mapping):
    """A read-only mapping of the decoder's draws plus :meth:`mean` and :meth:`log_likelihood`."""

    kind = "decoder"
    pairs = False  # True: the density of a pair of rows that share their noise is their joint one

    def __init__(self, arrays=None):
        self._arrays = {k: np.asarray(v) for k, v in (arrays or {}).items()}

    def __getitem__(self, key):
        return self._arrays[key]

    def __iter__(self):
        return iter(self._arrays)

    def __len__(self):
        return len(self._arrays)

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}: {np.shape(v)}' for k, v in self._arrays.items())})"

    def replace(self, **arrays):
        """A copy with some draws replaced (the settings kept), e.g. ``decoder.replace(A=A[:, ::-1])``."""
        out = copy.copy(self)
        out._arrays = {**self._arrays, **{k: np.asarray(v) for k, v in arrays.items()}}
        return out

    def mean(self, z, draws):
        """Mean of x (K, M, D) for latents ``z`` (K, M, d) under the draws with indices ``draws`` (K,)."""
        raise ValueError(f"this posterior's decoder ({self.kind}) gives no function of the latents")

    def log_likelihood(self, posterior, dataset):
        """``log p(x_n | targets_n, values_n, draw s)`` (S, N), the latents integrated out."""
        raise ValueError(f"this posterior's decoder ({self.kind}) has no density of x")

    def pair_log_likelihood(self, posterior, dataset):
        """(S, P) joint densities of the pairs of ``dataset.pair`` (only where :attr:`pairs`)."""
        raise ValueError(f"this posterior's decoder ({self.kind}) has no joint density of pairs")


class LinearDecoder(Decoder):
    """``x = z A + b + s * noise``: draws ``A`` (S, d, D), ``b`` (S, D), ``obs_scale`` (S,); ``value_scale``:
    the prior sd of unknown intervention values; ``pairs``: the fit modelled rows that share a pair id jointly."""

    kind = "linear"

    def __init__(self, A, b, obs_scale, *, value_scale=1.0, pairs=False):
        super().__init__({"A": A, "b": b, "obs_scale": obs_scale})
        self.value_scale, self.pairs = float(value_scale), bool(pairs)

    def mean(self, z, draws):
        return np.einsum("kmi,kiD->kmD", z, self["A"][draws]) + self["b"][draws][:, None, :]

    def _draws(self, posterior):
        S = posterior.num_draws
        return (posterior.W, posterior.noise_scales, self["A"], self["b"], self["obs_scale"],
                np.full(S, posterior.tau), np.full(S, self.value_scale))

    def log_likelihood(self, posterior, dataset):
        """Rows grouped by pattern (targets, known values), each group scored by
        :func:`~latentscm.models.precision_form.pattern_row_log_likelihood` (one d x d factor per draw and
        pattern, O(D d) per row), the pattern passed beside the draws so that every group runs the same
        compiled program."""
        S, d = posterior.num_draws, posterior.d
        draws = tuple(_pad(a, min(S, _LL_DRAWS)) for a in self._draws(posterior))  # padded once, not per pattern
        with jax.enable_x64(True):
            x, targets, values = (np.asarray(a, np.float64) for a in (dataset.x, dataset.targets, dataset.values))
            known = (targets > 0) & ~np.isnan(values)
            v = np.where(known, values, 0.0)
            out = np.empty((S, len(x)))
            patterns, group = group_rows(np.concatenate([targets > 0, known], 1))
            block = group_block(group, _LL_ROWS)  # the default problem's 250-row patterns: 256, not 512
            for g, pattern in enumerate(patterns.astype(np.float64)):
                rows = np.flatnonzero(group == g)
                masks = tuple(np.broadcast_to(m, (len(draws[0]), d)) for m in (pattern[:d], pattern[d:]))
                out[:, rows] = _chunked(_pattern_rows, (x[rows], v[rows]), masks + draws, rows=block)[:S]
            return out

    def pair_log_likelihood(self, posterior, dataset):
        if not self.pairs:
            return super().pair_log_likelihood(posterior, dataset)
        ids = np.unique(dataset.pair)
        out = np.empty((posterior.num_draws, len(ids)))
        for units in make_units(dataset.x, dataset.targets, dataset.values, dataset.pair):
            where = np.searchsorted(ids, dataset.pair[units.rows[:, 0]])
            if units.x.shape[1] == 1:
                out[:, where] = self.log_likelihood(posterior, dataset.subset(units.rows[:, 0]))
                continue
            with jax.enable_x64(True):
                out[:, where] = _chunked(_collapsed_units, (units.x, units.targets, units.values, units.known),
                                         self._draws(posterior))
        return out


class IdentityDecoder(Decoder):
    """``x = z`` (D = d, no draws): the SCM's density of x."""

    kind = "identity"

    def mean(self, z, draws):
        return np.asarray(z)

    def log_likelihood(self, posterior, dataset):
        if dataset.D != posterior.d:
            raise ValueError(f"log_likelihood: the posterior has an identity decoder (x is z, D = {posterior.d}); "
                             f"the dataset has D={dataset.D}")
        with jax.enable_x64(True):
            rows = tuple(np.asarray(a, np.float64) for a in (dataset.x, dataset.targets, dataset.values))
            return _chunked(_scm_rows, rows, (posterior.W, posterior.noise_scales,
                                              np.full(posterior.num_draws, posterior.tau)))


class NetworkDecoder(Decoder):
    """A network decoder: draws (at least ``obs_scale`` (S,)), ``decode(z, draws) -> (K, M, D)`` (None: the
    method gives no function of the latents) and ``log_predictive(dataset, per_draw=True) -> (S', N)``, the
    per-draw density estimates for its first S' draws (None: no density)."""

    kind = "network"

    def __init__(self, arrays, *, decode: Callable | None = None, log_predictive: Callable | None = None):
        super().__init__(arrays)
        self.decode, self.log_predictive = decode, log_predictive

    def mean(self, z, draws):
        if self.decode is None:
            return super().mean(z, draws)
        return np.asarray(self.decode(z, draws))

    def log_likelihood(self, posterior, dataset):
        if self.log_predictive is None:
            return super().log_likelihood(posterior, dataset)
        return np.asarray(self.log_predictive(dataset, per_draw=True), np.float64)


def _scm_rows(x, t, v, W, sigma, tau):
    return InterventionalLinearGaussian(W, sigma, t, jnp.nan_to_num(v), tau).log_prob(x)


def _pattern_rows(x, v, masks, known, W, sigma, A, b, obs_scale, tau, value_scale):
    return pattern_row_log_likelihood(masks, known, x, v, W, sigma, A, b, obs_scale, tau, value_scale)


def _collapsed_units(x, t, v, known, W, sigma, A, b, obs_scale, tau, value_scale):
    return unit_log_likelihood(Units(x, t, v, known, None), W, sigma, A, b, obs_scale, tau, value_scale)


@partial(jax.jit, static_argnums=0)
def _draw_chunk(f, data, draws):
    """``f`` over a chunk of draws (vmapped) and units: (draws, units)."""
    return jax.vmap(lambda *a: f(*data, *a))(*draws)


def _chunked(f, data, draws, rows=_LL_ROWS):
    """``f(*data_units, *one_draw) -> (U,)`` for every draw (S) and unit (U): (S, U) float64.

    Draws go in chunks of ``_LL_DRAWS`` and units in chunks of ``rows``, the last of each padded by
    repeating its final entry, so that every call has one shape (compiled once per ``f`` and unit shape).
    """
    S, U = len(draws[0]), len(data[0])
    chunk = min(S, _LL_DRAWS)
    draws = [_pad(np.asarray(a), chunk) for a in draws]
    data = [_pad(np.asarray(a), rows) for a in data]
    out = [[np.asarray(_draw_chunk(f, tuple(a[j:j + rows] for a in data), tuple(a[i:i + chunk] for a in draws)))
            for j in range(0, len(data[0]), rows)] for i in range(0, len(draws[0]), chunk)]
    return np.block(out)[:S, :U].astype(np.float64)


def _pad(a, size):
    """``a`` with its last entry repeated up to a multiple of ``size`` entries along axis 0."""
    n = -(-len(a) // size) * size
    return np.concatenate([a, np.repeat(a[-1:], n - len(a), 0)]) if n > len(a) else a
