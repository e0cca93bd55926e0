"""``mcmc``: HMC-within-Gibbs on the collapsed model, with Metropolis moves on the node order.

Target: the joint posterior of the collapsed model (:mod:`latentscm.models.collapsed`; z integrated
out, linear decoder) or, with ``decoder="identity"``, of the SCM with z observed (``x = z``,
:func:`identity_model`). One MCMC iteration, per chain:

0. With the linear decoder and ``decoder_update="gibbs"`` (the default): draw the latents
   ``z ~ p(z | x, rest)`` exactly, then the decoder ``A, b ~ p(A, b | z, x, s)`` (conjugate), and
   let steps 1-2 target :func:`augmented_model` (the SCM's sites and ``obs_scale`` given z, A, b).
   A Gibbs sampler on ``(z, A, b, rest)`` whose marginal is the collapsed posterior; NUTS then never
   sees the 600-dimensional, tightly determined decoder (see ``docs/mcmc.md``).
   ``decoder_update="nuts"`` keeps the decoder in the NUTS step on the collapsed model instead.
1. ``order_moves`` Metropolis-Hastings updates of the node order ``P`` (and, for one move type,
   a coordinate permutation of ``L``) targeting ``p(P, L | rest)``; the continuous sites other
   than ``L`` stay fixed. Two symmetric proposals, chosen with probability ``swap_prob`` and
   ``1 - swap_prob``:

   * **random swap**: exchange the positions of two uniformly chosen nodes, ``L`` fixed. With
     ``L`` in position space this relabels which nodes the weights connect (the graph changes);
     the proposal is symmetric, so the acceptance ratio is the ratio of the joint densities.
   * **adjacent reversal**: exchange the nodes at positions ``k, k+1`` (``k`` uniform) and permute
     ``L`` consistently, ``L' = Q L Q^T`` with the one entry that would leave the lower triangle,
     ``L[k+1, k]``, kept in place. In node space this keeps every edge weight except that the edge
     between the two swapped nodes is *reversed* with the same weight (``W'[j, i] = W[i, j]``).
     A plain graph-preserving swap (``L' = Q L Q^T``) is valid only when ``L[k+1, k] == 0``, which
     has probability zero for continuous weights; the reversal variant is always valid. It is a
     deterministic involution that permutes coordinates of ``L`` (and of the horseshoe's local
     scales, if used): unit Jacobian in the unconstrained space too, so with ``k`` uniform the
     acceptance ratio is again the joint-density ratio (the i.i.d. edge prior cancels).

   The uniform order prior cancels in both.
2. One NUTS step on all continuous sites (``edge_weight``, ``noise_scale``, ``obs_scale``, the
   decoder unless step 0 draws it, horseshoe scales) of the model conditioned on the current order, with step size and diagonal mass matrix
   adapted during warmup (the adaptation sees the order changing, which is fine: the adapted
   kernel is fixed after warmup and each step leaves the conditional invariant).

Chains run vectorised (``jax.vmap`` over one jitted step; ``chain_method="vectorized"``), one
after another (``"sequential"``, same code with a chain batch of one), or vectorised with the chain
axis split over JAX devices (``"parallel"``: the chains' states sharded with a ``NamedSharding``,
as many devices as divide ``num_chains``; same draws as ``"vectorized"`` up to float error). numpyro's ``HMCGibbs`` is not
used because its Gibbs function may only return the Gibbs sites, while the adjacent reversal also
moves ``L``; the loop here is numpyro's functional ``hmc(..., algo="NUTS")`` kernel plus a
``lax.fori_loop`` of order moves, run in jitted chunks of ``chunk`` iterations under a progress bar.

Initialisation: the data-driven initialisation (:func:`~latentscm.inference.initialise.initialise`;
for the identity decoder the order proposal and regressions on ``x`` itself) in every chain, with
Gaussian jitter ``init_jitter`` on ``L`` and ``log sigma``; ``order_init="random"`` starts each chain
from a random order instead (weights refitted in that order), and ``svi_init_steps > 0`` starts chain
``c`` from draw ``c`` of a short ``collapsed`` SVI fit.

Exactness check: :func:`exact_order_posterior` enumerates ``p(order | z)`` in closed form for the
identity decoder with Normal edge priors and fixed noise scales (Bayesian linear regression per node).
"""

from __future__ import annotations

import itertools
import math
import time
import warnings
from dataclasses import dataclass
from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import jax.scipy.linalg
import numpyro
import numpyro.distributions as dist
from numpyro import handlers
from numpyro.distributions.transforms import biject_to
from numpyro.infer.hmc import hmc
from numpyro.infer.util import constrain_fn, potential_energy
from tqdm.auto import tqdm

from .._validate import KNOWN_ORDER, check_fields, flag, integer, number, one_of, optional, sequence, setting
from ..models.collapsed import _singles, _unit_terms, collapsed_model, sufficient_stats
from ..models.observed import identity_log_likelihood, identity_model, identity_stats
from ..models.priors import parse_priors
from ..models.scm import LOG_2PI, sample_graph
from .guide import site_specs
from ._datarules import check_decoder, check_known_order, check_unknowns
from .collapsed import latent_summaries
from .sharding import shard_leading
from .initialise import _node_fit, initialise
from .posterior import Posterior

DECODERS = ("linear", "identity")
_DECODER_WHY = ("mcmc integrates z out exactly, which needs a linear decoder ('identity': x is z itself); for a "
                "nonlinear decoder such as 'mlp' use a variational method")
_PERMUTED_SITES = ("edge_weight", "edge_weight_local_scale")  # tril-shaped sites the reversal permutes


@dataclass(frozen=True)
class MCMCConfig:
    """Settings of the ``mcmc`` method (bounds declared per field, checked in ``__post_init__``).

    num_warmup, num_samples: iterations per chain (draws kept: ``num_chains * num_samples``);
    num_chains; chain_method: ``"vectorized"``, ``"sequential"`` or ``"parallel"`` (over devices); decoder: ``"linear"`` (collapsed
    model) or ``"identity"`` (``x`` is ``z``, needs ``D == d``); order_moves: Metropolis order
    proposals per iteration (None: d); swap_prob: probability that a proposal is a random swap (else
    an adjacent reversal); target_accept_prob, max_tree_depth, dense_mass: NUTS; tau: intervention
    noise scale; fixed_noise_scales: (d,) known SCM noise scales (no ``noise_scale`` site then);
    known_order: fixes the order (no order moves); order_init: ``"proposal"`` or ``"random"``;
    init_jitter: sd of the Gaussian jitter of each chain's start (unconstrained L and log sigma);
    svi_init_steps: > 0 runs a short ``collapsed`` SVI fit first and starts each chain from one of its
    draws (linear decoder only); chunk: iterations per jitted call (progress-bar granularity).
    """

    num_warmup: int = setting(500, integer(0))
    num_samples: int = setting(500, integer(1))
    num_chains: int = setting(4, integer(1))
    chain_method: str = setting("vectorized", one_of("vectorized", "sequential", "parallel"))
    decoder: str = setting("linear", one_of(*DECODERS), why=_DECODER_WHY)
    decoder_update: str = setting("gibbs", one_of("gibbs", "nuts"))
    order_moves: int | None = setting(None, optional(integer(0), "for d moves"))
    swap_prob: float = setting(0.5, number(ge=0, le=1))
    target_accept_prob: float = setting(0.8, number(gt=0, lt=1))
    max_tree_depth: int = setting(8, integer(1))
    dense_mass: bool = setting(False, flag())
    tau: float = setting(0.1, number(gt=0))
    fixed_noise_scales: tuple[float, ...] | None = setting(None, optional(
        sequence(number(gt=0), "positive finite numbers, one per latent"), "to sample the noise scales"))
    known_order: tuple[int, ...] | None = setting(None, KNOWN_ORDER)
    order_init: str = setting("proposal", one_of("proposal", "random"))
    init_jitter: float = setting(0.1, number(ge=0))
    svi_init_steps: int = setting(0, integer(0))
    chunk: int = setting(50, integer(1))

    def __post_init__(self):
        check_fields(self, "mcmc")
        if self.svi_init_steps and self.decoder != "linear":
            raise ValueError("mcmc: svi_init_steps needs decoder='linear' (the collapsed SVI fit)")

    def check_dataset(self, dataset):
        """Refuse, before any work, a dataset these settings cannot fit (DataError / ValueError)."""
        check_decoder("mcmc", self.decoder, dataset)
        check_known_order("mcmc", self.known_order, dataset.d)
        if self.fixed_noise_scales is not None and len(self.fixed_noise_scales) != dataset.d:
            raise ValueError(f"mcmc: fixed_noise_scales needs {dataset.d} values (one per latent); got "
                             f"{len(self.fixed_noise_scales)}")
        check_unknowns("mcmc", dataset)


# ---------------------------------------------------------------------------------------------------
# exact order posterior (identity decoder, Normal edge prior, known noise scales)
# ---------------------------------------------------------------------------------------------------


def _log_evidence_node(y, X, prior_scale, sigma):
    """log N(y; 0, sigma^2 I + s^2 X X^T) (Bayesian linear regression evidence), via Woodbury."""
    n, k = len(y), X.shape[1]
    out = -0.5 * n * (LOG_2PI + 2 * math.log(sigma)) - 0.5 * (y @ y) / sigma**2
    if k:
        A = np.eye(k) / prior_scale**2 + X.T @ X / sigma**2
        c = np.linalg.cholesky(A)
        u = np.linalg.solve(c, X.T @ y / sigma**2)
        out += 0.5 * (u @ u) - np.sum(np.log(np.diag(c))) - k * math.log(prior_scale)
    return out


def exact_order_posterior(z, targets, values, prior_scale, noise_scales, tau):
    """Exact posterior over node orders for observed latents, by enumeration of all d! orders.

    Model: uniform order prior; in position space i.i.d. ``Normal(0, prior_scale)`` weights on all
    pairs (earlier -> later), the ``edge_weight`` prior of :func:`identity_model`; noise scales known.
    Then ``p(z | order)`` factorises over nodes into Bayesian linear regressions of ``z_j`` on all its
    predecessors over the rows where j is not intervened (intervened rows contribute a factor that does
    not depend on the order; ``values`` and ``tau`` enter only there and cancel).

    z: (N, d); targets, values: (N, d); noise_scales: (d,).
    Returns ``orders`` (d!, d) int (lexicographic) and ``probs`` (d!,).
    """
    z = np.asarray(z, np.float64)
    m = np.asarray(targets) > 0
    d = z.shape[1]
    sigma = np.broadcast_to(np.asarray(noise_scales, np.float64), (d,))
    del values, tau  # order-independent factors
    orders = np.array(list(itertools.permutations(range(d))), dtype=np.int64)
    cache = {}
    logp = np.zeros(len(orders))
    for o, order in enumerate(orders):
        for p, j in enumerate(order):
            key = (int(j), frozenset(int(i) for i in order[:p]))
            if key not in cache:
                rows = ~m[:, j]
                cache[key] = _log_evidence_node(z[rows, j], z[rows][:, sorted(key[1])], prior_scale, sigma[j])
            logp[o] += cache[key]
    probs = np.exp(logp - logp.max())
    return orders, probs / probs.sum()


def order_total_variation(order_draws, orders, probs):
    """Total variation distance between the empirical distribution of ``order_draws`` (S, d) and the
    distribution ``probs`` over ``orders`` (K, d) (e.g. from :func:`exact_order_posterior`)."""
    d = orders.shape[1]
    base = d ** np.arange(d)[::-1]
    index = {int(k): i for i, k in enumerate(orders @ base)}
    counts = np.zeros(len(orders))
    for key in np.asarray(order_draws) @ base:
        counts[index[int(key)]] += 1
    return 0.5 * float(np.abs(counts / counts.sum() - probs).sum())


# ---------------------------------------------------------------------------------------------------
# the sampler
# ---------------------------------------------------------------------------------------------------


class ChainState(NamedTuple):
    """State of one chain: the NUTS state (unconstrained continuous sites), the order (d,), the
    augmentation (:func:`aux_from`; ``{}`` unless ``decoder_update="gibbs"``) and a key."""

    hmc_state: object
    order: jax.Array
    aux: dict
    rng_key: jax.Array


class StepInfo(NamedTuple):
    """Per-iteration output of one chain."""

    z: dict  # unconstrained continuous sites after the step
    order: jax.Array  # (d,)
    dec: dict  # Gibbs-updated decoder sites, or {}
    diverging: jax.Array
    accept_prob: jax.Array  # NUTS mean acceptance probability of the step
    num_steps: jax.Array  # leapfrog steps
    swap_accepted: jax.Array  # accepted random swaps in this iteration
    swap_proposed: jax.Array
    reversal_accepted: jax.Array  # accepted adjacent reversals
    reversal_proposed: jax.Array


def reversal_index(d):
    """(d-1, d(d-1)/2) int: ``l'[t] = l[idx[k, t]]`` implements the adjacent reversal at positions k, k+1.

    ``L' = Q L Q^T`` (Q swaps k and k+1) except ``L'[k+1, k] = L[k+1, k]``; an involution.
    """
    rows, cols = np.tril_indices(d, -1)
    pos = {(int(r), int(c)): t for t, (r, c) in enumerate(zip(rows, cols))}
    out = np.zeros((max(d - 1, 0), len(rows)), np.int64)
    for k in range(d - 1):
        q = np.arange(d)
        q[k], q[k + 1] = k + 1, k
        for t, (r, c) in enumerate(zip(rows, cols)):
            out[k, t] = t if (r, c) == (k + 1, k) else pos[(int(q[r]), int(q[c]))]
    return out


# ---------------------------------------------------------------------------------------------------
# data augmentation: exact Gibbs draws of z and of the linear decoder
# ---------------------------------------------------------------------------------------------------

GIBBS_SITES = ("decoder_weight", "decoder_bias")


def normal_prior_params(prior):
    """``(loc, scale)`` of a Normal prior; a clear error for any other family (the conjugate decoder
    update needs Normal decoder priors)."""
    if prior.distribution is None and prior.family == "normal":
        return float(prior.params["loc"]), float(prior.params["scale"])
    if isinstance(prior.distribution, dist.Normal):
        return float(prior.distribution.loc), float(prior.distribution.scale)
    raise ValueError(
        f"mcmc: decoder_update='gibbs' needs a normal prior on {prior.name!r} (conjugate given z); got "
        f"{prior.family}. Use a normal prior or set decoder_update='nuts'.")


def gibbs_latents(key, x, targets, values, W, sigma, A, b, obs_scale, tau):
    """One exact draw of the latents z (N, d) from ``p(z | x, targets, values, W, sigma, A, b, s)``,
    rows independent: through the noise coordinates ``xi | x ~ N(K^{-1} U e, s^2 K^{-1})``, then
    ``z = xi Gamma + v Gz`` (as :func:`~latentscm.models.collapsed.unit_latent_posterior`)."""
    gamma, gz, Ue, _, K, V = _unit_terms(_singles(x, targets, values), W, sigma, A, b, obs_scale, tau, 1.0)
    n, r = Ue.shape
    d = W.shape[-1]
    chol = jnp.linalg.cholesky(K)  # K = C C^T
    mean = jax.scipy.linalg.cho_solve((chol, True), Ue[..., None])
    noise = jax.random.normal(key, (n, r, 1), K.dtype)
    xi = (mean + obs_scale * jax.scipy.linalg.solve_triangular(chol, noise, lower=True, trans="T"))[..., 0]
    return jnp.einsum("nr,nrq->nq", xi, gamma.reshape(n, r, d)) + jnp.einsum("nq,nqp->np", V, gz.reshape(n, d, d))


def sample_decoder(key, z, x, obs_scale, weight_prior, bias_prior):
    """One exact draw of the linear decoder ``A (d, D), b (D,)`` from ``p(A, b | z, x, s)``: for each
    output dimension a Bayesian linear regression of ``x[:, j]`` on ``[z, 1]`` with independent normal
    priors ``(loc, scale)`` (``weight_prior`` on A, ``bias_prior`` on b); all columns share one
    precision matrix, so one Cholesky factor serves the whole decoder."""
    n, d = z.shape
    F = jnp.concatenate([z, jnp.ones((n, 1), z.dtype)], axis=1)
    prec0 = jnp.concatenate([jnp.full(d, weight_prior[1] ** -2.0), jnp.full(1, bias_prior[1] ** -2.0)])
    loc0 = jnp.concatenate([jnp.full(d, weight_prior[0]), jnp.full(1, bias_prior[0])])
    s2 = obs_scale**2
    chol = jnp.linalg.cholesky(F.T @ F / s2 + jnp.diag(prec0))
    mean = jax.scipy.linalg.cho_solve((chol, True), F.T @ x / s2 + (prec0 * loc0)[:, None])
    noise = jax.random.normal(key, mean.shape, mean.dtype)
    draw = mean + jax.scipy.linalg.solve_triangular(chol, noise, lower=True, trans="T")
    return draw[:d], draw[d]


def aux_from(z, A, b, raw):
    """The augmentation for latents z (N, d) and decoder ``(A, b)`` on ``raw = (x, targets, values)``:
    the decoder, z's :class:`~latentscm.models.observed.IdentityStats`, the residual sum of squares and its count ``N D``."""
    x, targets, values = raw
    return {"decoder_weight": A, "decoder_bias": b, "zstats": identity_stats(z, targets, values),
            "rss": jnp.sum((x - z @ A - b) ** 2), "n_obs": jnp.asarray(x.size, x.dtype)}


def augmented_model(data, order, aux, *, priors, tau):
    """Target of the NUTS and order updates under ``decoder_update="gibbs"``: the SCM's sites and
    ``obs_scale`` given the augmentation ``aux`` (:func:`aux_from`): ``p(z | W, sigma)`` through z's
    statistics and ``p(x | z, A, b, s)`` through the residual sum of squares."""
    W, sigma, _ = sample_graph(aux["zstats"].gram.shape[-1], priors["edge_weight"], priors["noise_scale"], order)
    s = priors["obs_scale"].sample("obs_scale", ())
    numpyro.factor("z", identity_log_likelihood(aux["zstats"], W, sigma, tau))
    numpyro.factor("x", -0.5 * (aux["n_obs"] * (LOG_2PI + 2 * jnp.log(s)) + aux["rss"] / s**2))


def make_augmentation(priors, tau, fixed_noise):
    """``augment(key, params, raw) -> aux``: draw z from ``p(z | x, W, sigma, A, b, s)`` (z integrated
    out of nothing: the collapsed model's exact conditional), then ``(A, b)`` from
    ``p(A, b | z, x, s)``. With the NUTS and order updates of :func:`augmented_model` this is a Gibbs
    sampler on ``(z, A, b, rest)`` whose marginal over everything but z is the collapsed model's
    posterior; NUTS then moves only the SCM's sites and ``obs_scale`` (no 500-dimensional decoder)."""
    wp = normal_prior_params(priors["decoder_weight"])
    bp = normal_prior_params(priors["decoder_bias"])

    def augment(key, params, raw):
        sigma = params["noise_scale"] if fixed_noise is None else fixed_noise
        k_z, k_dec = jax.random.split(key)
        x, targets, values = raw
        z = gibbs_latents(k_z, x, targets, values, params["W"], sigma, params["decoder_weight"],
                           params["decoder_bias"], params["obs_scale"], tau)
        A, b = sample_decoder(k_dec, z, x, params["obs_scale"], wp, bp)
        return aux_from(z, A, b, raw)

    return augment


# ---------------------------------------------------------------------------------------------------
# the sampler
# ---------------------------------------------------------------------------------------------------


def make_sampler(model, data, init_values, order0, config, num_warmup, augment=None):
    """Build the HMC-within-Gibbs chain on ``model(data, order, aux)``.

    init_values: constrained starting values of the continuous sites, one dict per chain; order0:
    (C, d) starting orders; augment: optional ``augment(key, params, raw) -> aux``
    (:func:`make_augmentation`), run first in every iteration. Returns ``(init_one, z0, aux0, step,
    postprocess)``: ``init_one(z, order, aux, key, data) -> (hmc_state, aux)``, ``step(state, data)
    -> (state, StepInfo)`` for one chain (vmap them), ``postprocess(z, order, data)`` the constrained
    values and ``W``.
    """
    d = order0.shape[1]
    if augment is None:
        aux0 = [{} for _ in init_values]
    else:  # a placeholder (z = 0) carrying the start decoder; init_one draws the first real augmentation
        zero = jnp.zeros((data["raw"][0].shape[0], d), jnp.float64)
        aux0 = [aux_from(zero, *(jnp.asarray(vals[k], jnp.float64) for k in GIBBS_SITES), data["raw"])
                for vals in init_values]
    template = aux0[0]
    specs = site_specs(model, data, jnp.asarray(order0[0]), template, exclude=())
    z0 = []
    for vals in init_values:
        zc = {}
        for name, (shape, support) in specs.items():
            if name in vals:
                value = biject_to(support).inv(jnp.asarray(vals[name], jnp.float64))
            else:  # hierarchical scales: start at 1 (0.1 for global scales), as the collapsed method does
                value = jnp.full(shape, np.log(0.1) if name.endswith("global_scale") else 0.0)
            zc[name] = jnp.asarray(value, jnp.float64).reshape(shape)
        z0.append(zc)
    z0 = jax.tree.map(lambda *xs: jnp.stack(xs), *z0)
    aux0 = jax.tree.map(lambda *xs: jnp.stack(xs), *aux0)

    def pe_gen(data, order, aux):
        return partial(potential_energy, model, (data, order, aux), {})

    def constrained(z, order, aux, data):
        return constrain_fn(model, (data, order, aux), {}, z, return_deterministic=True)

    def augmented(key, z, order, aux, data):
        params = {**constrained(z, order, aux, data), **{k: aux[k] for k in GIBBS_SITES}}
        return augment(key, params, data["raw"])

    init_kernel, sample_kernel = hmc(potential_fn_gen=pe_gen, algo="NUTS")
    n_moves = d if config.order_moves is None else config.order_moves
    if config.known_order is not None or d < 2:
        n_moves = 0
    rev = jnp.asarray(reversal_index(d))
    permuted = [k for k in _PERMUTED_SITES if k in specs]

    def init_one(z, order, aux, key, data):
        if augment is not None:
            key, k_aux = jax.random.split(key)
            aux = augmented(k_aux, z, order, aux, data)
        state = init_kernel(z, num_warmup, adapt_step_size=True, adapt_mass_matrix=True,
                            dense_mass=config.dense_mass, target_accept_prob=config.target_accept_prob,
                            max_tree_depth=config.max_tree_depth, model_args=(data, order, aux), rng_key=key)
        return state, aux

    def order_moves(key, z, order, aux, U, data):
        def body(_, carry):
            z, order, U, key, counts = carry
            key, k_type, k_pair, k_adj, k_acc = jax.random.split(key, 5)
            is_swap = jax.random.uniform(k_type) < config.swap_prob
            pair = jax.random.choice(k_pair, d, (2,), replace=False)
            k = jax.random.randint(k_adj, (), 0, d - 1)
            a = jnp.where(is_swap, pair[0], k)
            b = jnp.where(is_swap, pair[1], k + 1)
            new_order = order.at[a].set(order[b]).at[b].set(order[a])
            new_z = dict(z)
            for name in permuted:
                new_z[name] = jnp.where(is_swap, z[name], z[name][rev[k]])
            new_U = pe_gen(data, new_order, aux)(new_z)
            log_alpha = U - new_U
            accept = jnp.log(jax.random.uniform(k_acc)) < jnp.where(jnp.isfinite(log_alpha), log_alpha, -jnp.inf)
            z = jax.tree.map(lambda n, o: jnp.where(accept, n, o), new_z, z)
            order = jnp.where(accept, new_order, order)
            U = jnp.where(accept, new_U, U)
            counts = counts + jnp.array([accept & is_swap, is_swap, accept & ~is_swap, ~is_swap], jnp.int32)
            return z, order, U, key, counts

        z, order, U, _, counts = jax.lax.fori_loop(0, n_moves, body, (z, order, U, key, jnp.zeros(4, jnp.int32)))
        return z, order, counts

    def step(state, data):
        key, k_moves, k_aux = jax.random.split(state.rng_key, 3)
        hs, order, aux = state.hmc_state, state.order, state.aux
        z, U = hs.z, hs.potential_energy
        if augment is not None:
            aux = augmented(k_aux, z, order, aux, data)
            U = pe_gen(data, order, aux)(z)
        z, order, counts = order_moves(k_moves, z, order, aux, U, data)
        if n_moves or augment is not None:
            U, grad = jax.value_and_grad(pe_gen(data, order, aux))(z)
            hs = hs._replace(z=z, potential_energy=U, z_grad=grad)
        hs = sample_kernel(hs, model_args=(data, order, aux))
        dec = {k: aux[k] for k in GIBBS_SITES if k in aux}
        out = StepInfo(hs.z, order, dec, hs.diverging, hs.accept_prob, hs.num_steps, *counts)
        return ChainState(hs, order, aux, key), out

    def postprocess(z, order, data):  # the factors' values do not matter here, only W and the sites
        return constrained(z, order, template, data)

    return init_one, z0, aux0, step, postprocess


def _chain_starts(dataset, config, rng, d):
    """Per-chain constrained start values and orders (C, d); the proposal order; the SVI posterior or None."""
    C = config.num_chains
    x, t = dataset.x, dataset.targets
    v = np.where(t > 0, np.nan_to_num(np.asarray(dataset.values, np.float64)), 0.0)
    svi = None
    identity = config.decoder == "identity"
    ini = initialise(x, t, v, order=config.known_order, observed=identity, tau=config.tau,
                     seed=0)
    z_hat, proposal = ini.z, ini.order
    dec = {} if identity else {"decoder_weight": ini.A, "decoder_bias": ini.b, "obs_scale": ini.obs_scale}
    if config.svi_init_steps:
        from .collapsed import CollapsedConfig, fit_collapsed

        svi = fit_collapsed(dataset, config=CollapsedConfig(
            steps=config.svi_init_steps, num_draws=max(C, 2), tau=config.tau, known_order=config.known_order),
            priors=None, seed=int(rng.integers(2**31)), progress=False)
    starts, orders = [], []
    for c in range(C):
        if svi is not None:
            order = svi.orders[c]
            W, sigma = svi.W[c], svi.noise_scales[c]
            vals = {"decoder_weight": svi.decoder["A"][c], "decoder_bias": svi.decoder["b"][c],
                    "obs_scale": svi.decoder["obs_scale"][c]}
        else:
            order = proposal if (config.order_init == "proposal" or config.known_order) else rng.permutation(d)
            W, sigma = np.zeros((d, d)), np.ones(d)
            for p, j in enumerate(order):
                _, coef, sigma[j] = _node_fit(z_hat, t, j, list(order[:p]))
                W[order[:p], j] = coef
            vals = dict(dec)
        L = W[np.ix_(order, order)].T[np.tril_indices(d, -1)]
        vals["edge_weight"] = L + config.init_jitter * rng.normal(size=L.shape)
        if config.fixed_noise_scales is None:
            vals["noise_scale"] = sigma * np.exp(config.init_jitter * rng.normal(size=d))
        starts.append(vals)
        orders.append(np.asarray(order))
    return starts, np.stack(orders).astype(np.int32), np.asarray(proposal), svi


def _run_chains(run, init_fn, z0, aux0, orders, keys, data, num_warmup, total, config, progress):
    """Run a chain batch; returns stacked StepInfo with leading (chain, iteration) of the kept draws."""
    state, aux = jax.jit(jax.vmap(init_fn, in_axes=(0, 0, 0, 0, None)))(z0, jnp.asarray(orders), aux0, keys, data)
    hkeys = jax.vmap(lambda k: jax.random.fold_in(k, 1))(keys)
    state = ChainState(state, jnp.asarray(orders), aux, hkeys)
    n_chunks = -(-total // config.chunk)
    size = -(-total // n_chunks)
    outs = []
    bar = tqdm(total=total, desc="mcmc", disable=not progress, leave=False)
    done = divergences = 0
    try:
        while done < total:
            state, out = run(state, data, size)
            out = jax.tree.map(np.asarray, out)
            outs.append(out)
            divergences += int(out.diverging[:, max(num_warmup - done, 0):].sum())
            bar.update(min(size, total - done))
            done += size
            bar.set_postfix(phase="warmup" if done <= num_warmup else "sampling", divergences=divergences)
    finally:
        bar.close()
    out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=1), *outs)
    return jax.tree.map(lambda a: a[:, num_warmup:total], out)


def fit_mcmc(dataset, *, config: MCMCConfig, priors=None, seed=0, progress=True):
    """Sample the posterior of ``dataset`` by HMC-within-Gibbs; returns a :class:`Posterior`.

    All input checks run before any compilation.
    """
    start = time.perf_counter()
    priors = parse_priors(priors)
    d = dataset.d
    gibbs = config.decoder == "linear" and config.decoder_update == "gibbs"
    fixed = None if config.fixed_noise_scales is None else np.asarray(config.fixed_noise_scales, np.float64)
    # built before any work: it checks that the decoder priors are normal (conjugate given z)
    augment = make_augmentation(priors, config.tau, fixed) if gibbs else None
    rng = np.random.default_rng(seed)
    C, tau = config.num_chains, config.tau
    with jax.enable_x64(True):
        starts, orders0, proposal, svi = _chain_starts(dataset, config, rng, d)
        raw = None
        if config.decoder == "identity":
            stats = identity_stats(jnp.asarray(dataset.x, jnp.float64), dataset.targets, dataset.values)
            base_model = identity_model
        elif gibbs:
            stats = None
            raw = (jnp.asarray(dataset.x, jnp.float64), jnp.asarray(dataset.targets),
                   jnp.asarray(np.where(dataset.targets > 0, np.nan_to_num(dataset.values), 0.0), jnp.float64))
        else:
            stats = jax.tree.map(jnp.asarray, sufficient_stats(dataset.x, dataset.targets, dataset.values))
            base_model = collapsed_model
        data = {"stats": stats, "raw": raw}

        def model(data, order, aux):
            with handlers.condition(data={} if fixed is None else {"noise_scale": fixed}):
                if gibbs:
                    augmented_model(data, order, aux, priors=priors, tau=tau)
                else:
                    base_model(data["stats"], priors=priors, tau=tau, order=order)

        init_fn, z0, aux0, step, postprocess = make_sampler(model, data, starts, orders0, config,
                                                            config.num_warmup, augment)

        def run(state, data, n):
            state, out = jax.lax.scan(lambda s, _: jax.vmap(step, in_axes=(0, None))(s, data), state, None, length=n)
            return state, jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), out)  # (chain, iteration, ...)

        run = jax.jit(run, static_argnums=2)
        keys = jax.random.split(jax.random.PRNGKey(seed), C)
        total = config.num_warmup + config.num_samples
        if config.chain_method in ("vectorized", "parallel"):
            if config.chain_method == "parallel":  # the chain axis split over the devices (jit follows)
                devs = jax.devices()[:max(k for k in range(1, len(jax.devices()) + 1) if C % k == 0)]
                z0, aux0, keys = shard_leading((z0, aux0, keys), devs)
            out = _run_chains(run, init_fn, z0, aux0, orders0, keys, data, config.num_warmup, total, config, progress)
        else:
            one = lambda tree, c: jax.tree.map(lambda a: a[c:c + 1], tree)  # noqa: E731
            parts = [_run_chains(run, init_fn, one(z0, c), one(aux0, c), orders0[c:c + 1], keys[c:c + 1], data,
                                 config.num_warmup, total, config, progress) for c in range(C)]
            out = jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *parts)
        draws = _constrain(postprocess, out, data)
        draws.update({k: v.reshape((-1,) + v.shape[2:]) for k, v in out.dec.items()})
        S = C * config.num_samples
        noise = draws["noise_scale"] if fixed is None else np.broadcast_to(np.asarray(fixed), (S, d)).copy()
        if config.decoder == "linear":
            decoder = {"A": draws["decoder_weight"], "b": draws["decoder_bias"], "obs_scale": draws["obs_scale"]}
            latent_mean, latent_sd = latent_summaries(
                dataset, {"W": draws["W"], "noise_scale": noise, "decoder_weight": decoder["A"],
                          "decoder_bias": decoder["b"], "obs_scale": decoder["obs_scale"]}, tau)
        else:
            decoder = {}
            latent_mean, latent_sd = np.asarray(dataset.x, np.float64), np.zeros((dataset.N, d))
    orders = out.order.reshape(S, d)
    counts = {k: int(getattr(out, k).sum()) for k in ("swap_accepted", "swap_proposed", "reversal_accepted",
                                                      "reversal_proposed")}
    post = Posterior(
        method="mcmc", W=draws["W"], noise_scales=noise, orders=orders, decoder=decoder,
        latent_mean=latent_mean, latent_scale=latent_sd, elbo=np.zeros(0), seconds=0.0, tau=tau,
        info={"num_chains": C, "config": config.__dict__, "priors": priors.describe(),
              "proposal_order": proposal.tolist(), "divergences": int(out.diverging.sum()),
              "mean_accept_prob": float(out.accept_prob.mean()), "mean_leapfrog_steps": float(out.num_steps.mean()),
              "order_acceptance": _rate(counts["swap_accepted"] + counts["reversal_accepted"],
                                        counts["swap_proposed"] + counts["reversal_proposed"]),
              "swap_acceptance": _rate(counts["swap_accepted"], counts["swap_proposed"]),
              "reversal_acceptance": _rate(counts["reversal_accepted"], counts["reversal_proposed"]),
              "svi_init": svi is not None},
    )
    post.info.update(diagnostics(post))
    object.__setattr__(post, "seconds", time.perf_counter() - start)
    return post


def _rate(a, b):
    return float(a / b) if b else float("nan")


def _constrain(postprocess, out, data, chunk=500):
    """Constrained draws (chain-major flattened, leading C * S) from the unconstrained chain output."""
    z = jax.tree.map(lambda a: a.reshape((-1,) + a.shape[2:]), out.z)
    order = out.order.reshape(-1, out.order.shape[-1])
    f = jax.jit(jax.vmap(postprocess, in_axes=(0, 0, None)))
    n = len(order)
    parts = [jax.tree.map(np.asarray, f(jax.tree.map(lambda a: jnp.asarray(a[i:i + chunk]), z),
                                       jnp.asarray(order[i:i + chunk]), data)) for i in range(0, n, chunk)]
    return jax.tree.map(lambda *xs: np.concatenate(xs), *parts)


def diagnostics(posterior):
    """Sampler diagnostics via ArviZ on ``posterior.to_arviz()``: max R-hat and min bulk ESS of ``W``
    and ``noise_scale`` (entries that never vary, e.g. the diagonal of W, are skipped)."""
    import arviz as az

    tree = posterior.to_arviz()
    out = {}
    for var in ("W", "noise_scale"):
        draws = np.asarray(tree["posterior"][var])
        varying = np.ptp(draws.reshape((-1,) + draws.shape[2:]), axis=0) > 0
        if posterior.info.get("num_chains", 1) < 2 or not varying.any():
            out[f"max_rhat_{var}"], out[f"min_ess_{var}"] = float("nan"), float("nan")
            continue
        with warnings.catch_warnings():  # constant entries (W's diagonal) divide 0 by 0
            warnings.simplefilter("ignore", RuntimeWarning)
            rhat = np.asarray(az.rhat(tree, var_names=[var])[var])
            ess = np.asarray(az.ess(tree, var_names=[var])[var])
        out[f"max_rhat_{var}"] = float(np.nanmax(rhat[varying]))
        out[f"min_ess_{var}"] = float(np.nanmin(ess[varying]))
    return out
