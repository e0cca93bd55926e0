"""The one posterior type every inference method returns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from functools import partial
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import xarray as xr
from scipy.special import logsumexp

from ..metrics import edge_probabilities, order_probabilities
from ..models.collapsed import Units, make_units, unit_log_likelihood
from ..models.precision_form import pattern_row_log_likelihood
from ..models.scm import InterventionalLinearGaussian

_LL_DRAWS = 16  # posterior draws per call of the log-likelihood
_LL_ROWS = 512  # rows (or units) per call: every data set of rows compiles to one shape


@dataclass(frozen=True, eq=False)
class Posterior:
    """Posterior draws and per-row latent summaries.

    W: (S, d, d) weighted adjacency draws (``W[s, i, j] != 0``: edge i -> j); noise_scales: (S, d);
    orders: (S, d) node orders (first to last); decoder: dict of draws with leading S (linear
    decoder: ``A`` (S, d, D), ``b`` (S, D), ``obs_scale`` (S,)); latent_mean, latent_scale: (N, d)
    posterior mean and sd of each training row's latents; elbo: (steps,) ELBO trace (empty for
    MCMC); seconds: wall time of the fit; tau: intervention noise scale used; info: method details.
    decode: optional ``decode(z, draws) -> (K, M, D)`` mean of x for latents z (K, M, d) under the
    posterior draws with indices ``draws`` (K,); None means the linear decoder of ``decoder["A"]``,
    ``decoder["b"]`` (or ``x = z`` when there is none). log_predictive: optional
    ``log_predictive(dataset, per_draw=False) -> (N,)`` per-row log predictive density estimate, with
    ``per_draw=True`` its per-draw estimates (S', N) for its first S' draws; :meth:`log_likelihood` (so
    ``heldout_nll`` and the ArviZ ``log_likelihood`` group) uses them when the decoder is not linear.
    diagnostics: human-readable problems the fit found in its own evidence (e.g. optimisation restarts
    that disagree, see :mod:`latentscm.inference.diagnostics`); empty when none. regimes (R,) and target_draws (S, R, d):
    when targets were inferred, the regime ids (sorted) and each draw's exact posterior probability that
    node j is a target of regime r (known targets as 0/1); :attr:`target_probs` averages them.
    """

    method: str
    W: np.ndarray
    noise_scales: np.ndarray
    orders: np.ndarray
    decoder: dict
    latent_mean: np.ndarray
    latent_scale: np.ndarray
    elbo: np.ndarray
    seconds: float
    tau: float = 0.1
    info: dict = field(default_factory=dict)
    decode: Callable | None = None
    log_predictive: Callable | None = None
    diagnostics: list = field(default_factory=list)
    regimes: np.ndarray | None = None
    target_draws: np.ndarray | None = None

    @property
    def target_probs(self):
        """(R, d) posterior probability that regime ``regimes[r]`` targets node j; None unless the fit
        inferred targets."""
        return None if self.target_draws is None else self.target_draws.mean(0)

    @property
    def num_draws(self):
        return self.W.shape[0]

    @property
    def d(self):
        return self.W.shape[-1]

    def edge_probs(self, threshold=0.3):
        """(d, d) posterior probability of each edge, ``P(|W_ij| > threshold)``."""
        return edge_probabilities(self.W, threshold)

    def order_probs(self):
        """(d, d) posterior probability that node i sits at position p (``[node, position]``)."""
        return order_probabilities(self.orders)

    def heldout_nll(self, dataset):
        """Mean per-row negative log predictive density of ``dataset`` (e.g. unseen regimes).

        ``-mean_n log mean_s p(x_n | targets_n, values_n, theta_s)``, z integrated out exactly: the
        per-row, per-draw :meth:`log_likelihood` reduced over draws and rows.
        """
        ll = self.log_likelihood(dataset)
        return float(-np.mean(logsumexp(ll, axis=0) - np.log(len(ll))))

    def log_likelihood(self, dataset, *, by="row"):
        """Per-draw log-likelihood ``log p(x_u | targets, values, theta_s)`` (S, U), latents integrated out.

        by="row": U = N, one entry per row, rows taken as independent given the draw. by="pair": one
        entry per unit of rows that share their exogenous noise, in the order of ``np.unique(dataset.pair)``
        (a row whose pair id no other row carries is a unit of one); the exact joint density of the pair
        where the fit modelled the pairing (``use_pairs`` with a linear decoder), else the sum of its rows'
        entries (the model treats them as independent given the draw).

        Linear decoders: the collapsed density (single rows grouped by pattern and scored in precision form,
        :func:`latentscm.models.precision_form.pattern_row_log_likelihood`; pairs by
        ``unit_log_likelihood``); identity decoder: the SCM's density of x = z; network decoders
        (``log_predictive``): its per-draw estimate (amortized: importance sampling with the encoder, for
        the first ``heldout_draws`` draws only, so S is that number). Evaluated in padded chunks of draws
        and rows (one compiled shape, memory O(16 x 512 x D x d)). ValueError where there is no density.
        """
        if dataset.d != self.d:
            raise ValueError(f"log_likelihood: dataset has d={dataset.d}, the posterior d={self.d}")
        if dataset.target_unknown is not None:
            raise ValueError("log_likelihood needs the rows' targets; this dataset has "
                             f"{dataset.num_unknown_targets} unknown target entries")
        if by not in ("row", "pair"):
            raise ValueError(f"log_likelihood: by must be 'row' or 'pair'; got {by!r}")
        if by == "pair" and dataset.pair is None:
            raise ValueError("log_likelihood(by='pair') needs pair ids (dataset.pair); this dataset has none")
        if "A" not in self.decoder and self.log_predictive is not None:
            ll = np.asarray(self.log_predictive(dataset, per_draw=True), np.float64)
            return ll if by == "row" else _sum_by_pair(ll, dataset.pair)
        observed = not self.decoder and self.decode is None  # identity decoder: x is z
        if observed and dataset.D != self.d:
            raise ValueError(f"log_likelihood: the posterior has an identity decoder (x is z, D = {self.d}); the "
                             f"dataset has D={dataset.D}")
        if "A" not in self.decoder and not observed:
            raise ValueError(f"log_likelihood needs a linear decoder or a predictive density; method "
                             f"{self.method!r} has {sorted(self.decoder)}")
        joint = by == "pair" and not observed and bool(self.info.get("config", {}).get("use_pairs"))
        if joint:
            return self._pair_log_likelihood(dataset)
        ll = self._row_log_likelihood(dataset.x, dataset.targets, dataset.values, observed)
        return ll if by == "row" else _sum_by_pair(ll, dataset.pair)

    def _draws(self):
        return (self.W, self.noise_scales, self.decoder["A"], self.decoder["b"], self.decoder["obs_scale"])

    def _value_scale(self):
        return float(self.info.get("config", {}).get("value_scale", 1.0))  # prior sd of unknown values

    def _row_log_likelihood(self, x, targets, values, observed):
        """(S, N) per-row densities of rows (x, targets, values): the one place they are computed.

        Linear decoders: rows grouped by pattern (targets, known values), each group scored by
        :func:`~latentscm.models.precision_form.pattern_row_log_likelihood` (one d x d factor per draw and
        pattern, O(D d) per row), the pattern passed beside the draws so that every group runs the same
        compiled program."""
        S = self.num_draws
        with jax.enable_x64(True):
            x, targets, values = (np.asarray(a, np.float64) for a in (x, targets, values))
            if observed:
                return _chunked(_scm_rows, (x, targets, values), (self.W, self.noise_scales, np.full(S, self.tau)))
            known = (targets > 0) & ~np.isnan(values)
            v = np.where(known, values, 0.0)
            out = np.empty((S, len(x)))
            patterns, group = np.unique(np.concatenate([targets > 0, known], 1), axis=0, return_inverse=True)
            scalars = (np.full(S, self.tau), np.full(S, self._value_scale()))
            for g, pattern in enumerate(patterns.astype(np.float64)):
                rows = np.flatnonzero(group.reshape(-1) == g)
                masks = (np.broadcast_to(pattern[:self.d], (S, self.d)), np.broadcast_to(pattern[self.d:], (S, self.d)))
                out[:, rows] = _chunked(_pattern_rows, (x[rows], v[rows]), masks + self._draws() + scalars)
            return out

    def _pair_log_likelihood(self, dataset):
        """(S, P) joint densities of the units of ``dataset.pair`` under a linear decoder with pairs modelled."""
        ids = np.unique(dataset.pair)
        out = np.empty((self.num_draws, len(ids)))
        for units in make_units(dataset.x, dataset.targets, dataset.values, dataset.pair):
            where = np.searchsorted(ids, dataset.pair[units.rows[:, 0]])
            if units.x.shape[1] == 1:
                rows = units.rows[:, 0]
                out[:, where] = self._row_log_likelihood(dataset.x[rows], dataset.targets[rows],
                                                         dataset.values[rows], False)
                continue
            with jax.enable_x64(True):
                scalars = (np.full(self.num_draws, self.tau), np.full(self.num_draws, self._value_scale()))
                out[:, where] = _chunked(_collapsed_units, (units.x, units.targets, units.values, units.known),
                                         self._draws() + scalars)
        return out

    def predict(self, targets, values=None, *, num_samples=None, seed=0):
        """Posterior predictive samples of z and x under a (new) intervention.

        targets: (M, d) or (d,) 0/1 target masks; values: same shape, the intervention values (None:
        zeros). num_samples: K samples, each from a posterior draw picked at random (None: one per
        draw, in order). Returns ``{"z": (K, M, d), "x": (K, M, D), "x_mean": (K, M, D), "draw": (K,)}``:
        z from the SCM of the draw (``InterventionalLinearGaussian``), x_mean = decoder(z), x = x_mean +
        obs_scale * noise.
        """
        t = np.atleast_2d(np.asarray(targets))
        v = np.zeros(t.shape) if values is None else np.atleast_2d(np.asarray(values, np.float64))
        if t.ndim != 2 or t.shape[-1] != self.d or v.shape != t.shape:
            raise ValueError(f"predict: targets and values must have shape (M, {self.d}) (or ({self.d},)); "
                             f"got {t.shape} and {v.shape}")
        if not np.isin(t, (0, 1)).all() or not np.isfinite(v).all():
            raise ValueError("predict: targets must be 0/1 and values finite")
        if num_samples is not None and (isinstance(num_samples, bool) or not isinstance(num_samples, int)
                                        or num_samples < 1):
            raise ValueError(f"predict: num_samples must be a positive integer or None; got {num_samples!r}")
        S = self.num_draws
        draws = np.arange(S) if num_samples is None else np.random.default_rng(seed).integers(S, size=num_samples)
        k_z, k_x = jax.random.split(jax.random.PRNGKey(seed))
        t32, v32 = jnp.asarray(t, jnp.float32), jnp.asarray(np.where(t > 0, v, 0.0), jnp.float32)
        z = np.asarray(_sample_interventional(jax.random.split(k_z, len(draws)),
                                              jnp.asarray(self.W[draws], jnp.float32),
                                              jnp.asarray(self.noise_scales[draws], jnp.float32), t32, v32,
                                              jnp.float32(self.tau)))
        if self.decode is not None:
            mean = np.asarray(self.decode(z, draws))
        elif "A" in self.decoder:
            mean = np.einsum("kmi,kiD->kmD", z, self.decoder["A"][draws]) + self.decoder["b"][draws][:, None, :]
        else:
            mean = z
        scale = np.asarray(self.decoder.get("obs_scale", np.zeros(S)))[draws]
        x = mean + scale[:, None, None] * np.asarray(jax.random.normal(k_x, mean.shape))
        return {"z": z, "x": x, "x_mean": mean, "draw": draws}

    def to_arviz(self, dataset=None, *, by=None):
        """ArviZ DataTree: group ``posterior`` (one chain unless the method ran several) with dims
        ``parent``, ``child``, ``node``, ``position``, ``feature`` (and ``target_prob`` over ``regime``,
        ``node`` when targets were inferred: each draw's conditional target probabilities); group ``latents`` with ``z_mean``,
        ``z_sd`` over ``obs``, ``node``. The root's attrs hold ``method``, ``seconds`` and ``diagnostics``
        (the list of problems as a JSON string, ``"[]"`` when none).

        With ``dataset`` (usually the training data) also group ``log_likelihood``: variable ``x``, the
        per-draw :meth:`log_likelihood` of ``dataset``, dims (``chain``, ``draw``, ``obs``) per row or
        (``chain``, ``draw``, ``pair``) per pair (coordinate: the pair ids), ``by`` (default: ``"pair"``
        when ``dataset.pair`` is set, else ``"row"``); its attrs name the ``unit``. This is what
        ``az.loo`` and ``az.compare`` read. ValueError where the posterior has no density for ``dataset``
        (e.g. ``biols`` with an MLP decoder, unknown targets).
        """
        import arviz as az

        chains = int(self.info.get("num_chains", 1))

        def shaped(a):
            a = np.asarray(a)
            return a.reshape((chains, a.shape[0] // chains) + a.shape[1:])

        data = {"W": self.W, "noise_scale": self.noise_scales, "order": self.orders}
        dims = {"W": ["parent", "child"], "noise_scale": ["node"], "order": ["position"]}
        decoder_dims = {"A": ["node", "feature"], "b": ["feature"], "obs_scale": []}
        for k, v in self.decoder.items():
            data[f"decoder_{k}"] = v
            dims[f"decoder_{k}"] = decoder_dims.get(k, [f"decoder_{k}_dim_{i}" for i in range(np.ndim(v) - 1)])
        nodes = np.arange(self.d)
        coords = {"parent": nodes, "child": nodes, "node": nodes, "position": nodes}
        if self.target_draws is not None:
            data["target_prob"], dims["target_prob"] = self.target_draws, ["regime", "node"]
            coords["regime"] = np.asarray(self.regimes)
        tree = az.from_dict({"posterior": {k: shaped(v) for k, v in data.items()}}, dims=dims, coords=coords)
        tree.attrs.update({"method": self.method, "seconds": float(self.seconds),
                           "diagnostics": json.dumps([str(p) for p in self.diagnostics])})
        tree["posterior"].attrs.update({"method": self.method})
        latents = xr.Dataset(
            {"z_mean": (("obs", "node"), self.latent_mean), "z_sd": (("obs", "node"), self.latent_scale)},
            coords={"node": nodes},
        )
        tree["latents"] = xr.DataTree(dataset=latents)
        if dataset is not None:
            tree["log_likelihood"] = xr.DataTree(dataset=self._log_likelihood_group(dataset, by, chains))
        if len(self.elbo):
            tree["optimization"] = xr.DataTree(dataset=xr.Dataset({"elbo": (("step",), np.asarray(self.elbo))}))
        return tree

    def _log_likelihood_group(self, dataset, by, chains):
        """The ``log_likelihood`` group's Dataset (see :meth:`to_arviz`)."""
        by = by or ("pair" if dataset.pair is not None else "row")
        ll = self.log_likelihood(dataset, by=by)
        chains = chains if len(ll) == self.num_draws else 1  # a network's density covers its first draws only
        ll = ll.reshape(chains, len(ll) // chains, ll.shape[1])
        dim, coords = ("obs", np.arange(dataset.N)) if by == "row" else ("pair", np.unique(dataset.pair))
        unit = ("row: log p(x_n | draw), rows independent given the draw" if by == "row" else
                "pair: log p(x_a, x_b | draw) of the rows that share a pair id (their exogenous noise); the exact "
                "joint where the fit modelled the pairing (use_pairs), else the sum of the two rows' densities")
        return xr.Dataset({"x": (("chain", "draw", dim), ll)},
                          coords={"chain": np.arange(chains), "draw": np.arange(ll.shape[1]), dim: coords},
                          attrs={"unit": by, "description": unit})


@jax.jit
def _sample_interventional(keys, W, sigma, targets, values, tau):
    """One draw of z (M, d) per posterior draw (S,): (S, M, d); jitted once per shape, not per call."""
    return jax.vmap(lambda k, W, s: InterventionalLinearGaussian(W, s, targets, values, tau).sample(k))(keys, W, sigma)


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


def _chunked(f, data, draws):
    """``f(*data_units, *one_draw) -> (U,)`` for every draw (S) and unit (U): (S, U) float64.

    Draws go in chunks of ``_LL_DRAWS`` and units in chunks of ``_LL_ROWS``, the last of each padded by
    repeating its final entry, so that every call has one shape (compiled once per ``f`` and unit shape).
    """
    S, U = len(draws[0]), len(data[0])
    chunk = min(S, _LL_DRAWS)
    draws = [_pad(np.asarray(a), chunk) for a in draws]
    data = [_pad(np.asarray(a), _LL_ROWS) for a in data]
    out = [[np.asarray(_draw_chunk(f, tuple(a[j:j + _LL_ROWS] for a in data), tuple(a[i:i + chunk] for a in draws)))
            for j in range(0, len(data[0]), _LL_ROWS)] for i in range(0, len(draws[0]), chunk)]
    return np.block(out)[:S, :U].astype(np.float64)


def _pad(a, size):
    """``a`` with its last entry repeated up to a multiple of ``size`` entries along axis 0."""
    n = -(-len(a) // size) * size
    return np.concatenate([a, np.repeat(a[-1:], n - len(a), 0)]) if n > len(a) else a


def _sum_by_pair(ll, pair):
    """Per-row ``ll`` (S, N) summed over the rows of each pair id (S, P), ids in ``np.unique`` order."""
    ids, inverse = np.unique(pair, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(ids)))
    return np.add.reduceat(ll[:, order], starts, axis=1)
