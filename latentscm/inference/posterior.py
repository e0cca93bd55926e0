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
from ..models.collapsed import row_log_likelihood
from ..models.scm import InterventionalLinearGaussian

_NLL_DRAWS = 16  # posterior draws per call of the held-out likelihood


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
    ``log_predictive(dataset) -> (N,)`` per-row log predictive density estimate, used by
    ``heldout_nll`` when the decoder is not linear. diagnostics: human-readable problems the fit found
    in its own evidence (e.g. optimisation restarts that disagree, see
    :mod:`latentscm.inference.diagnostics`); empty when none. regimes (R,) and target_draws (S, R, d):
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

        ``-mean_n log mean_s p(x_n | targets_n, values_n, theta_s)``, z integrated out exactly.
        """
        if dataset.d != self.d:
            raise ValueError(f"heldout_nll: dataset has d={dataset.d}, the posterior d={self.d}")
        if dataset.target_unknown is not None:
            raise ValueError("heldout_nll needs the held-out rows' targets; this dataset has "
                             f"{dataset.num_unknown_targets} unknown target entries")
        if "A" not in self.decoder and self.log_predictive is not None:
            return float(-np.mean(self.log_predictive(dataset)))
        observed = not self.decoder and self.decode is None  # identity decoder: x is z
        if observed and dataset.D != self.d:
            raise ValueError(f"heldout_nll: the posterior has an identity decoder (x is z, D = {self.d}); the "
                             f"dataset has D={dataset.D}")
        if "A" not in self.decoder and not observed:
            raise ValueError(f"heldout_nll needs a linear decoder; method {self.method!r} has {sorted(self.decoder)}")
        value_scale = float(self.info.get("config", {}).get("value_scale", 1.0))  # prior sd of unknown values
        with jax.enable_x64(True):
            x, t, v = (np.asarray(a, np.float64) for a in (dataset.x, dataset.targets, dataset.values))
            if observed:
                def scm_rows(x, t, v, W, sigma):
                    return InterventionalLinearGaussian(W, sigma, t, jnp.nan_to_num(v), self.tau).log_prob(x)

                f = jax.jit(jax.vmap(scm_rows, in_axes=(None,) * 3 + (0,) * 2))
                draws = (self.W, self.noise_scales)
            else:
                f = jax.jit(jax.vmap(partial(row_log_likelihood, tau=self.tau, value_scale=value_scale),
                                     in_axes=(None,) * 3 + (0,) * 5))
                draws = (self.W, self.noise_scales, self.decoder["A"], self.decoder["b"], self.decoder["obs_scale"])
            S = self.num_draws
            chunk = min(S, _NLL_DRAWS)  # draws per call (the last chunk padded: one shape): memory O(chunk N D d)
            padded = -(-S // chunk) * chunk
            draws = [np.concatenate([a, np.repeat(a[-1:], padded - S, 0)]) for a in draws]
            ll = np.concatenate([np.asarray(f(x, t, v, *(a[i:i + chunk] for a in draws)))
                                 for i in range(0, padded, chunk)])[:S]
        return float(-np.mean(logsumexp(ll, axis=0) - np.log(S)))

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

    def to_arviz(self):
        """ArviZ DataTree: group ``posterior`` (one chain unless the method ran several) with dims
        ``parent``, ``child``, ``node``, ``position``, ``feature`` (and ``target_prob`` over ``regime``,
        ``node`` when targets were inferred: each draw's conditional target probabilities); group ``latents`` with ``z_mean``,
        ``z_sd`` over ``obs``, ``node``. The root's attrs hold ``method``, ``seconds`` and ``diagnostics``
        (the list of problems as a JSON string, ``"[]"`` when none)."""
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
        if len(self.elbo):
            tree["optimization"] = xr.DataTree(dataset=xr.Dataset({"elbo": (("step",), np.asarray(self.elbo))}))
        return tree


@jax.jit
def _sample_interventional(keys, W, sigma, targets, values, tau):
    """One draw of z (M, d) per posterior draw (S,): (S, M, d); jitted once per shape, not per call."""
    return jax.vmap(lambda k, W, s: InterventionalLinearGaussian(W, s, targets, values, tau).sample(k))(keys, W, sigma)
