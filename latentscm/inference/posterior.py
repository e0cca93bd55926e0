"""The one posterior type every inference method returns."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from scipy.special import logsumexp

from ..metrics import edge_probabilities, order_probabilities
from ..models.scm import InterventionalLinearGaussian
from .decoders import Decoder


@dataclass(frozen=True, eq=False)
class Posterior:
    """Posterior draws and per-row latent summaries.

    W: (S, d, d) weighted adjacency draws (``W[s, i, j] != 0``: edge i -> j); noise_scales: (S, d);
    orders: (S, d) node orders (first to last); decoder: a :class:`~latentscm.inference.decoders.Decoder`
    (a mapping of its draws with leading S, e.g. linear ``A`` (S, d, D), ``b`` (S, D), ``obs_scale`` (S,),
    that knows its mean of x and its density: :class:`~latentscm.inference.decoders.LinearDecoder`,
    ``IdentityDecoder`` (x is z), ``NetworkDecoder``); latent_mean, latent_scale: (N, d)
    posterior mean and sd of each training row's latents; elbo: (steps,) ELBO trace (empty for
    MCMC); seconds: wall time of the fit; tau: intervention noise scale used; info: method details.
    diagnostics: human-readable problems the fit found in its own evidence (e.g. optimisation restarts
    that disagree, see :mod:`latentscm.inference.diagnostics`); empty when none. regimes (R,) and target_draws (S, R, d):
    when targets were inferred, the regime ids (sorted) and each draw's exact posterior probability that
    node j is a target of regime r (known targets as 0/1); :attr:`target_probs` averages them.
    """

    method: str
    W: np.ndarray
    noise_scales: np.ndarray
    orders: np.ndarray
    decoder: Decoder
    latent_mean: np.ndarray
    latent_scale: np.ndarray
    elbo: np.ndarray
    seconds: float
    tau: float = 0.1
    info: dict = field(default_factory=dict)
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

        The decoder's density (:mod:`latentscm.inference.decoders`): linear, the collapsed density (single
        rows grouped by pattern in precision form; pairs jointly); identity, the SCM's density of x = z;
        network, its per-draw estimate (amortized: importance sampling with the encoder, for the first
        ``heldout_draws`` draws only, so S is that number). Evaluated in padded chunks of draws and rows
        (one compiled shape). ValueError where there is no density.
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
        if by == "pair" and self.decoder.pairs:
            return self.decoder.pair_log_likelihood(self, dataset)
        ll = self.decoder.log_likelihood(self, dataset)
        return ll if by == "row" else _sum_by_pair(ll, dataset.pair)

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
        mean = self.decoder.mean(z, draws)
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
        import xarray as xr  # here, not at the top: a fit does not need it (0.3 s to import)
        from arviz_base import from_dict  # not ``arviz``, which imports arviz_plots too (no measurable time)

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
        tree = from_dict({"posterior": {k: shaped(v) for k, v in data.items()}}, dims=dims, coords=coords)
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
        import xarray as xr

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


def _sum_by_pair(ll, pair):
    """Per-row ``ll`` (S, N) summed over the rows of each pair id (S, P), ids in ``np.unique`` order."""
    ids, inverse = np.unique(pair, return_inverse=True)
    order = np.argsort(inverse, kind="stable")
    starts = np.searchsorted(inverse[order], np.arange(len(ids)))
    return np.add.reduceat(ll[:, order], starts, axis=1)
