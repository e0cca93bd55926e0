"""The calibrated order posterior of the SVI fit: the guide proposes orders, exact per-order evidence weighs them.

The guide's order distribution is close to a point mass (a Gumbel-matching distribution around one
permutation per draw of ``L``), so on problems whose data leave the order ambiguous its order frequencies
are far from the posterior (``docs/collapsed.md``, calibration). This module replaces them by a mixture
over orders whose weights are estimated against the model's exact joint density (latents integrated
out, as the collapsed model does):

    p(order | x)  ∝  p(order) ∫ p(x, theta | order) d theta,

with ``theta`` the SCM's continuous sites (edge weights in position space, noise scales, hierarchical
scales). For each candidate order:

1. **Laplace** (:func:`~latentscm.inference.laplace.laplace`, shared with the ``mcmc`` kernel): damped Newton
   steps from the guide's mean weights moved into that order's positions, in the unconstrained space; the
   Gaussian ``N(mode, H^-1)`` is the proposal;
2. **importance sampling**: ``draws_per_order`` proposals, log weights ``log p(x, theta | order) -
   log q(theta)``; the evidence is their mean weight, its Monte Carlo error their variance, and ArviZ's
   Pareto-smoothed importance sampling (PSIS) gives the smoothed weights and the shape ``k`` (above 0.7
   the estimate is not reliable: a warning).

Candidates: every order at d <= 4 (24); otherwise a search from the guide's own
orders that adds the adjacent transpositions of every order within ``log(1e4)`` of the best evidence, until
none is new or ``max_orders`` were weighed (then :meth:`OrderMixture.problems` says the search stopped
early). The posterior's draws are resampled: an order from the mixture weights, then that order's
continuous sites from its PSIS weights. Decoder sites (``decoder_weight``, ``decoder_bias``,
``obs_scale``) are held fixed while weighing (the caller's values, the guide's median in ``collapsed``: they
are shared by all orders and far more tightly determined than the SCM's sites), so with a linear decoder the
weights are ``p(order | x, decoder)`` (``collapsed.weighing_problem`` weighs them on x's coordinates in the
decoder's row space); with ``decoder = "identity"`` they are exact up to Monte Carlo error.
"""

from __future__ import annotations

import itertools
import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions.transforms import biject_to
from numpyro.infer.util import log_density

from ..models.scm import position_tril, tril_size, tril_to_matrix, weights_from_order
from .laplace import laplace
from .programs import program

KHAT_MAX = 0.7  # PSIS shape above which an order's evidence is unreliable (Vehtari et al. 2024)
_WINDOW = math.log(1e4)  # the search expands orders within this many nats of the best
_NEWTON = 6  # at most this many damped Newton steps per order (from the guide's weights: the log joint is close
# to quadratic in them)
_BATCH = 8  # orders weighed per call (a search weighs 10-40 orders at d = 5: little padding)
_ALL_D = 4  # every order weighed up to this d (24 orders)


class OrderMixture(NamedTuple):
    """The weighed orders: ``orders`` (K, d), ``log_evidence`` (K,) (log p(x, order) up to one constant),
    ``probs`` (K,), ``khat`` (K,), ``ess`` (K,) (each order's importance-sampling effective size),
    ``relative_se`` (K,) (Monte Carlo standard error of each evidence, relative), ``complete`` (every
    order was weighed or the search closed), the resampled draws ``draws`` ({site: (num, ...)},
    ``W`` and ``order`` included) and ``left_out`` (K,): orders given no mass because PSIS could not fit their
    weights' tail (k NaN or inf: the evidence is one draw's weight, e.g. a Laplace proposal in a region where
    the density overflows), while other orders' weights could be smoothed."""

    orders: np.ndarray
    log_evidence: np.ndarray
    probs: np.ndarray
    khat: np.ndarray
    ess: np.ndarray
    relative_se: np.ndarray
    complete: bool
    draws: dict
    left_out: np.ndarray

    def problems(self, mass=0.01) -> list[str]:
        """Why the weights cannot be trusted, if they cannot: the search stopped with candidates left, or PSIS
        k above 0.7 for an order carrying at least ``mass`` of the posterior."""
        out = [] if self.complete else [
            f"order posterior: the search stopped after weighing {len(self.orders)} orders (mixture_orders) with "
            "candidates within reach of the best left unweighed; orders beyond them get no mass"]
        kept = np.where(self.left_out, -np.inf, self.log_evidence)
        if (self.left_out & (self.log_evidence > kept.max() + math.log(mass))).any():
            out.append(f"order posterior: {int(self.left_out.sum())} order(s) left out, their importance weights "
                       "beyond smoothing (PSIS k undefined) with an evidence estimate that would have carried mass")
        heavy = (self.probs >= mass) & (self.khat > KHAT_MAX)
        if not heavy.any():
            return out
        worst = int(np.argmax(np.where(heavy, self.khat, -np.inf)))
        return out + [f"order posterior: the importance weights of {int(heavy.sum())} order(s) carrying "
                f"{self.probs[heavy].sum():.2f} of the mass are unreliable (PSIS k up to {self.khat[worst]:.2f} "
                f"> {KHAT_MAX}, order {self.orders[worst].tolist()}); their probabilities are rough"]

    def summary(self, top=10) -> dict:
        """JSON-ready: the ``top`` orders with probability, k, effective size and relative error; every
        order with probability above 1e-9 (``weights``: [order, probability], most probable first); totals."""
        idx = np.argsort(self.probs)[::-1]
        return {"orders_weighed": len(self.orders), "complete": self.complete, "left_out": int(self.left_out.sum()),
                "max_khat": float(np.max(np.where(self.probs >= 0.01, self.khat, -np.inf), initial=-np.inf)),
                "top": [{"order": self.orders[i].tolist(), "prob": float(self.probs[i]),
                         "khat": float(self.khat[i]), "ess": float(self.ess[i]),
                         "relative_se": float(self.relative_se[i])} for i in idx[:top]],
                "weights": [[self.orders[i].tolist(), float(self.probs[i])] for i in idx if self.probs[i] > 1e-9]}


class LogJoint(NamedTuple):
    """:func:`make_log_joint`'s result: ``f(P, u, data, fixed)``, and ``constrain(u) -> {site: value}`` for flat
    ``u`` (both traceable)."""

    f: object
    constrain: object


def make_log_joint(model, specs):
    """The log joint ``f(P, u, data, fixed)`` of ``model(temperature, data)`` at permutation ``P`` (d, d), the flat
    unconstrained sites ``specs`` ``u`` (sorted by name, Jacobian included) and the other sites held at ``fixed``
    (constrained values). The data and the held sites are arguments, not constants: the compiled program
    depends on shapes only (the persistent compilation cache serves every fit of the same size)."""
    transforms = {name: biject_to(support) for name, (shape, support) in specs.items()}
    names = sorted(specs)
    ends = np.cumsum([math.prod(specs[n][0]) for n in names]).tolist()

    def unravel(u):  # static slices: no host-side array work, nothing compiled outside the weigher
        return {n: u[a:b].reshape(specs[n][0]) for n, a, b in zip(names, [0] + ends[:-1], ends)}

    def constrain(u):
        return {name: transforms[name](part) for name, part in unravel(u).items()}

    def f(P, u, data, fixed):
        parts = unravel(u)
        values = constrain(u)
        log_det = sum(jnp.sum(transforms[n].log_abs_det_jacobian(parts[n], values[n])) for n in parts)
        lp, _ = log_density(model, (1.0, data), {}, {**values, **fixed, "P": P})
        return lp + log_det

    return LogJoint(jax.jit(f), constrain)  # jitted: traced once, however many transformations use it


def _weigh_one(f, u0, key, num):
    """One order (``f`` its log joint): Laplace proposal, ``num`` draws, their log weights (num,) and the draws
    (num, n)."""
    mode, vecs, vals = laplace(lambda u: -f(u), u0, max_steps=_NEWTON)
    eps = jax.random.normal(key, (num, mode.shape[0]))
    u = mode + (eps / jnp.sqrt(vals)) @ vecs.T
    log_q = -0.5 * jnp.sum(eps**2, 1) + 0.5 * jnp.sum(jnp.log(vals)) - 0.5 * mode.shape[0] * math.log(2 * math.pi)
    log_w = jax.vmap(f)(u) - log_q
    return jnp.where(jnp.isfinite(log_w), log_w, -jnp.inf), u


def make_weigher(joint, num, identity=None):
    """The jitted ``(Ps (B, d, d), u0 (B, n), key (2,), index, data, fixed) -> (log_w (B, num), sites)``: each
    order's proposals weighed; ``sites`` {site: (B, num, ...)} their constrained values with ``W`` (the weights
    placed by the order). The batch's keys come from ``key`` folded with ``index``: one program, no host-side
    random-number work between batches. ``identity``: kept across processes (:func:`.programs.program`)."""
    def one(P, u0, key, data, fixed):
        log_w, u = _weigh_one(lambda u: joint.f(P, u, data, fixed), u0, key, num)
        sites = jax.vmap(joint.constrain)(u)
        d = P.shape[0]
        sites["W"] = jax.vmap(lambda l_vec: weights_from_order(tril_to_matrix(l_vec, d), P))(sites["edge_weight"])
        return log_w, sites

    def batch(Ps, u0, key, index, data, fixed):
        keys = jax.random.split(jax.random.fold_in(key, index), Ps.shape[0])
        return jax.vmap(one, in_axes=(0, 0, 0, None, None))(Ps, u0, keys, data, fixed)

    return program(batch, identity)


def _psis(log_w):
    """PSIS-smoothed normalised log weights (K, num) and k (K,) of K orders' raw log weights (K, num); an order
    with fewer than 10 finite weights gets its raw weights and k = inf."""
    from .psis import psislw

    finite = np.isfinite(log_w)
    floor = np.min(np.where(finite, log_w, np.inf), 1, keepdims=True) - 50.0
    smoothed, khat = psislw(np.where(finite, log_w, np.where(np.isfinite(floor), floor, 0.0)))
    few = finite.sum(1) < 10
    smoothed = np.where(few[:, None], log_w - np.max(log_w, 1, keepdims=True, initial=0.0), smoothed)
    return np.where(finite, smoothed, -np.inf), np.where(few, np.inf, khat)


def _evidence(log_w):
    """log mean weight, effective sample size, relative standard error of the mean weight."""
    finite = log_w[np.isfinite(log_w)]
    if finite.size == 0:
        return -np.inf, 0.0, np.inf
    w = np.exp(finite - finite.max())
    ess = w.sum() ** 2 / (w**2).sum()
    log_z = float(finite.max() + np.log(w.sum() / log_w.size))
    return log_z, float(ess), float(np.sqrt(max(1.0 / ess - 1.0 / log_w.size, 0.0)))


def _neighbours(order):
    for k in range(len(order) - 1):
        o = list(order)
        o[k], o[k + 1] = o[k + 1], o[k]
        yield tuple(o)


def weigh_orders(weighing, data, start, seeds, key, *, d, num_draws, max_orders=256, seed=0):
    """Weigh candidate orders (module docstring) and resample ``num_draws`` posterior draws.

    weighing: a :class:`Weighing`; data: its model's data; start: ``order (tuple) -> u0`` (flat unconstrained
    start); seeds: orders (S, d) to search from (the guide's draws); key: a raw JAX key (2,). Returns an
    :class:`OrderMixture`.
    """
    weigher, fixed = weighing.weigher, weighing.fixed
    everything = math.factorial(d) <= max_orders and d <= _ALL_D  # every order (d <= 4)
    pending = list(itertools.permutations(range(d))) if everything else list(dict.fromkeys(map(tuple, seeds)))
    done, results = [], []
    key = np.asarray(key, np.uint32)
    while pending and len(done) < max_orders:
        batch = pending[:min(_BATCH, max_orders - len(done))]
        pending = pending[len(batch):]
        padded = batch + [batch[0]] * (_BATCH - len(batch))  # one compiled shape
        log_w, sites = jax.device_get(weigher(np.eye(d)[np.array(padded)], np.stack([start(o) for o in padded]),
                                              key, len(done), data, fixed))
        lw = np.asarray(log_w[:len(batch)], np.float64)
        smoothed, khat = _psis(lw)
        for i, order in enumerate(batch):
            results.append((*_evidence(lw[i]), khat[i], smoothed[i], {n: v[i] for n, v in sites.items()}))
            done.append(order)
        if not everything:  # expand the orders within the window of the best
            log_z = np.array([r[0] for r in results])
            seen = set(done) | set(pending)
            for order, lz in zip(done, log_z):
                if lz >= log_z.max() - _WINDOW:
                    new = [o for o in _neighbours(order) if o not in seen]
                    pending += new
                    seen.update(new)
    log_z, ess, rse, khat = (np.array([r[i] for r in results]) for i in range(4))
    left_out = ~np.isfinite(khat) & np.isfinite(khat).any()  # one draw's weight: no estimate (OrderMixture)
    kept = np.where(left_out, -np.inf, log_z)
    probs = np.exp(kept - kept.max())
    probs /= probs.sum()
    draws = _resample(np.array(done), probs, [r[4] for r in results], [r[5] for r in results], num_draws,
                      np.random.default_rng(seed))
    return OrderMixture(np.array(done), log_z, probs, khat, ess, rse, not pending, draws, left_out)


def _resample(orders, probs, smoothed, sites, num, rng):
    """``num`` draws: an order from ``probs``, then one of its proposals from its smoothed weights; ``sites``
    holds each order's proposals' constrained values ({site: (num_proposals, ...)}, ``W`` included); the
    draws get ``order`` (num, d) too."""
    pick = np.sort(rng.choice(len(orders), size=num, p=probs))
    parts = []
    for k, count in zip(*np.unique(pick, return_counts=True)):
        w = np.exp(smoothed[k] - np.max(smoothed[k]))
        rows = rng.choice(len(w), size=count, p=w / w.sum())
        parts.append({n: v[rows] for n, v in sites[k].items()})
    perm = rng.permutation(num)  # draws in random order, as a sampler's
    out = {n: np.concatenate([p[n] for p in parts])[perm] for n in parts[0]}
    out["order"] = orders[pick[perm]]
    return out


class Weighing(NamedTuple):
    """:func:`prepare_weighing`'s result: the weighed sites' specs, the held sites' values and the weigher
    (:func:`make_weigher`: jitted, or lowered / compiled for the data's shapes)."""

    sites: dict
    fixed: dict
    weigher: object


def prepare_weighing(model, data, fixed, *, draws_per_order=256, lower=False, identity=None) -> Weighing:
    """The weighing program of ``model(temperature, data)``: every continuous site but the held ones (``fixed``,
    constrained values, e.g. the decoder at the guide's median: :func:`~.collapsed.weighing_problem`). ``lower=True``
    traces and lowers the weigher now for ``data``'s shapes (``weigher`` is then a ``jax.stages.Lowered``):
    its program depends on shapes only, so it can be compiled before the fit ends (``collapsed`` compiles it
    in a thread while the SVI runs: XLA's compilation touches no NumPyro handler) and used with other data
    and held values of the same shapes. ``identity``: the weigher's key across processes
    (:func:`.programs.program`: names the model's settings and ``draws_per_order``)."""
    from .guide import site_specs

    sites = {name: spec for name, spec in site_specs(model, 1.0, data).items() if name not in fixed}
    weigher = make_weigher(make_log_joint(model, sites), draws_per_order, identity)
    if lower:
        d = sites["noise_scale"][0][0]
        n = sum(math.prod(shape) for shape, _ in sites.values())
        weigher = weigher.lower(np.zeros((_BATCH, d, d)), np.zeros((_BATCH, n)), np.zeros(2, np.uint32), 0, data,
                                fixed)
    return Weighing(sites, fixed, weigher)


def mixture_from_guide(weighing, data, params, draws, key, *, seeds=None, num_draws, max_orders=256, seed=0):
    """:func:`weigh_orders` for a fitted mean-field guide: ``weighing`` from :func:`prepare_weighing` (its model's
    ``data``), ``params`` one restart's variational parameters (``{site}_loc`` unconstrained), ``draws`` the
    guide's draws (``W``, ``order``), ``seeds`` the orders to search from (default: the draws'; e.g. every
    restart's). Every search starts from the guide's mean ``W`` moved into the candidate order's positions
    (``edge_weight``), other position-space sites at 0 (unconstrained), the rest at the guide's locations."""
    W_mean = np.mean(np.asarray(draws["W"], np.float64), 0)
    d = W_mean.shape[0]
    tril = (tril_size(d),)

    def start(order):  # flat, sites in sorted name order (make_log_joint's), numpy
        parts = {name: position_tril(W_mean, order) if name == "edge_weight"
                 else np.zeros(shape) if shape == tril else np.asarray(params[f"{name}_loc"])
                 for name, (shape, _) in weighing.sites.items()}
        return np.concatenate([np.ravel(parts[name]) for name in sorted(parts)])

    seeds = np.asarray(draws["order"] if seeds is None else seeds)
    return weigh_orders(weighing, data, start, seeds, key, d=d, num_draws=num_draws, max_orders=max_orders,
                        seed=seed)
