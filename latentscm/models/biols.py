"""The BIOLS model ("Learning Latent Structural Causal Models", Subramanian et al. 2022).

Unlike the collapsed model, ``z`` is kept: every row's latents are drawn from the SCM given the
row's intervention and decoded by a linear or MLP decoder with Gaussian observation noise. The
decoder's parameters are point estimates (a ``numpyro.param``, no prior), as in the paper.

Model sample sites (public API):

===================  ==========================  ============================================
site                 shape                       distribution
===================  ==========================  ============================================
``edge_weight``      (d(d-1)/2,)                 :class:`MarginalHorseshoe` with the paper's
                                                 global scale (:func:`horseshoe_global_scale`),
                                                 or the priors spec's ``edge_weight``
``noise_scale``      (d,)                        ``LogNormal(0, noise_prior_scale)`` (the
                                                 paper: ``log sigma ~ N(0, 3^2)``), or the spec's
``P``                (d, d)                      :class:`UniformPermutation` (absent when the
                                                 order is known)
``W``                (d, d)                      deterministic, ``P^T L^T P``
``z``                (rows, d) in plate ``rows``  :class:`InterventionalLinearGaussian`
``x``                (rows, D) in plate ``rows``  ``Normal(decode(decoder, z), obs_scale)``
===================  ==========================  ============================================

Param ``decoder``: a dict of arrays, ``{"A": (d, D), "b": (D,)}`` for the linear decoder or
``{"w0": (d, h1), "b0": (h1,), ..., "wK": (hK, D), "bK": (D,)}`` for the MLP (GELU activations).
The rows may be a minibatch drawn by the caller (``row_scale = N / B`` multiplies their log-densities;
the fit draws one minibatch per step, shared by all particles). With the linear decoder the ``x``
site is :class:`LinearGaussianObservation`: the same Gaussian, its log-density evaluated from
``x A^T`` and ``A A^T`` (an exact identity), so no ``(particles, rows, D)`` mean is ever built.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions import constraints

from .scm import InterventionalLinearGaussian, sample_graph

_LOG_NORM = -0.5 * math.log(2.0 * math.pi**3)
_EULER_GAMMA = 0.5772156649015329


def horseshoe_global_scale(n, d, degree):
    """The paper's global scale ``tau_0`` of the horseshoe prior on edge weights.

    As in the BIOLS reference code (``utils.set_horseshoe_tau``), from BCD Nets' rule of thumb
    ``tau_0 = p0 / (P - p0) / sqrt(n)`` with ``P = d - 1`` candidate parents and ``p0 = 2 * degree``
    the expected number of neighbours (parents + children) of a node::

        tau_0 = (1 / sqrt(n)) * 2 degree / ((d - 1) - 2 degree)    if (d - 1) - 2 degree > 0
        tau_0 = 1 / (2 d)                                           otherwise

    n: number of rows of data; d: number of latent nodes; degree: expected parents per node
    (``1`` for ER-1). Returns a positive float.
    """
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise ValueError(f"horseshoe_global_scale: n must be a positive integer; got {n!r}")
    if isinstance(d, bool) or not isinstance(d, (int, np.integer)) or d < 2:
        raise ValueError(f"horseshoe_global_scale: d must be an integer >= 2; got {d!r}")
    if not (isinstance(degree, (int, float, np.number)) and degree > 0 and math.isfinite(degree)):
        raise ValueError(f"horseshoe_global_scale: degree must be a finite number > 0; got {degree!r}")
    room = (d - 1) - 2.0 * degree
    if room > 0:
        return float(2.0 * degree / room / math.sqrt(n))
    return 1.0 / (2.0 * d)


def log_scaled_exp1(u, terms=20):
    """``log(exp(u) * E1(u))`` for ``u > 0`` (E1: exponential integral), accurate to ~1e-7.

    ``u < 1``: the power series of E1; ``u >= 1``: its continued fraction
    ``exp(u) E1(u) = 1 / (u + 1 - 1 / (u + 3 - 4 / (u + 5 - ...)))``, ``terms`` levels deep.
    Elementwise arithmetic only (``jax.scipy.special.exp1`` compiles slowly under ``vmap``).
    """
    small = jnp.clip(u, 1e-30, 1.0)

    def series_term(k, carry):  # term_k = (-1)^k u^k / k!, sum of -term_k / k
        total, term = carry
        term = -term * small / k
        return total - term / k, term

    total, _ = jax.lax.fori_loop(1, terms + 1, series_term, (jnp.zeros_like(small), jnp.ones_like(small)))
    series = small + jnp.log(-_EULER_GAMMA - jnp.log(small) + total)
    big = jnp.maximum(u, 1.0)

    def fraction_level(i, t):
        k = terms - i
        return k * k / (big + 2 * k + 1 - t)

    t = jax.lax.fori_loop(0, terms, fraction_level, jnp.zeros_like(big))
    fraction = -jnp.log(big + 1.0 - t)
    return jnp.where(u < 1.0, series, fraction)


class MarginalHorseshoe(dist.Distribution):
    """Horseshoe distribution with the local scale integrated out (TensorFlow Probability's
    ``Horseshoe``, the prior of the BIOLS reference code).

    ``w | l ~ N(0, (scale * l)^2)``, ``l ~ HalfCauchy(1)``; density
    ``p(w) = exp(u) E1(u) / (scale sqrt(2 pi^3))`` with ``u = w^2 / (2 scale^2)`` (Carvalho et al.
    2010). TFP evaluates ``E1`` by the Barry et al. (2000) approximation; here it is exact
    (to ~1e-7, :func:`log_scaled_exp1`). The density is infinite at ``w = 0``.
    """

    arg_constraints = {"scale": constraints.positive}
    support = constraints.real
    reparametrized_params = ["scale"]

    def __init__(self, scale=1.0, *, validate_args=None):
        self.scale = scale
        super().__init__(batch_shape=jnp.shape(scale), validate_args=validate_args)

    def sample(self, key, sample_shape=()):
        k1, k2 = jax.random.split(key)
        shape = sample_shape + self.batch_shape
        local = jnp.abs(jax.random.cauchy(k1, shape))
        return self.scale * local * jax.random.normal(k2, shape)

    def log_prob(self, value):
        u = 0.5 * (value / self.scale) ** 2
        return _LOG_NORM - jnp.log(self.scale) + log_scaled_exp1(jnp.maximum(u, 1e-30))


def init_decoder(rng, kind, d, D, hidden=(16, 64, 64, 64)):
    """Initial decoder parameters (numpy float32): ``{"A", "b"}`` (linear) or ``{"w0", "b0", ...}``.

    Weights ``N(0, 1 / fan_in)``, biases 0 (the reference code's Haiku default, up to truncation).
    rng: numpy Generator; kind: ``"linear"`` or ``"mlp"``.
    """
    if kind == "linear":
        return {"A": (rng.normal(size=(d, D)) / np.sqrt(d)).astype(np.float32), "b": np.zeros(D, np.float32)}
    sizes = (d, *hidden, D)
    out = {}
    for k, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
        out[f"w{k}"] = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
        out[f"b{k}"] = np.zeros(b, np.float32)
    return out


def decode(params, z):
    """Decoder mean (..., D) of latents z (..., d): ``z A + b`` or the GELU MLP."""
    if "A" in params:
        return z @ params["A"] + params["b"]
    n_layers = len(params) // 2
    h = z
    for k in range(n_layers):
        h = h @ params[f"w{k}"] + params[f"b{k}"]
        if k < n_layers - 1:
            h = jax.nn.gelu(h)
    return h


def biols_model(targets, values, x=None, *, decoder_init, edge_prior, noise_prior, tau=0.1, obs_scale=0.1,
                order=None, row_scale=1.0):
    """NumPyro model of BIOLS (site names in the module docstring).

    targets: (N, d) 0/1; values: (N, d); x: (N, D) or None (prior predictive);
    decoder_init: initial decoder dict (see :func:`init_decoder`), the value of param ``decoder``
    unless substituted; edge_prior / noise_prior: objects with ``sample(site, shape)`` (a
    :class:`~latentscm.models.priors.Prior`, or :class:`SitePrior` around a distribution);
    tau: intervention noise scale; obs_scale: observation noise sd (fixed, 0.1 in the paper);
    order: optional known node order (d,) replacing the ``P`` site; row_scale: multiplies the rows'
    log-densities (``N / B`` when the given rows are a minibatch of B out of N).
    """
    N, d = targets.shape
    W, sigma, P = sample_graph(d, edge_prior, noise_prior, order)
    node_order = jnp.argmax(P, axis=-1)
    dec = numpyro.param("decoder", decoder_init)
    with numpyro.plate("rows", N), handlers.scale(scale=row_scale):
        z = numpyro.sample("z", InterventionalLinearGaussian(W, sigma, targets, values, tau, order=node_order))
        if "A" in dec:
            obs = LinearGaussianObservation(z, dec["A"], dec["b"], obs_scale)
        else:
            obs = dist.Normal(decode(dec, z), obs_scale).to_event(1)
        numpyro.sample("x", obs, obs=x)


class LinearGaussianObservation(dist.Distribution):
    """``Normal(z A + b, s^2 I_D)`` over one row's ``x`` (D,), with ``log_prob`` from inner products.

    ``||x - z A - b||^2 = ||x||^2 - 2 (x A^T) . z - 2 x . b + z (A A^T) z^T + 2 z . (A b) + ||b||^2``:
    ``x A^T`` (rows, d) does not depend on the particle, so under a vectorised ELBO it is computed once
    per step and the cost per particle is O(rows d^2) instead of O(rows D d). Float32 keeps ~1e-7 of
    ``||x||^2``, far below the residual term at any fit the data allow.
    z: (..., d); A: (d, D); b: (D,); scale: scalar s.
    """

    arg_constraints = {"scale": constraints.positive}
    support = constraints.real_vector
    reparametrized_params = ["z", "A", "b", "scale"]

    def __init__(self, z, A, b, scale, *, validate_args=None):
        self.z, self.A, self.b, self.scale = z, A, b, scale
        super().__init__(batch_shape=jnp.shape(z)[:-1], event_shape=(jnp.shape(A)[-1],),
                         validate_args=validate_args)

    @property
    def mean(self):
        return self.z @ self.A + self.b

    def sample(self, key, sample_shape=()):
        shape = sample_shape + self.batch_shape + self.event_shape
        return self.mean + self.scale * jax.random.normal(key, shape)

    def log_prob(self, value):
        z, A, b, s = self.z, self.A, self.b, self.scale
        D = A.shape[-1]
        cross = jnp.sum((value @ A.T) * z, -1) + value @ b
        quad = jnp.sum((z @ (A @ A.T)) * z, -1) + 2.0 * z @ (A @ b) + b @ b
        sq = jnp.sum(value**2, -1) - 2.0 * cross + quad
        return -0.5 * D * jnp.log(2.0 * jnp.pi * s**2) - 0.5 * sq / s**2


class SitePrior:
    """Adapter: a scalar NumPyro distribution as a prior with ``sample(site, shape)``."""

    def __init__(self, distribution):
        self.distribution = distribution

    def sample(self, site, shape):
        return numpyro.sample(site, self.distribution.expand(shape).to_event(len(shape)))
