"""The ``mcmc`` chain: NUTS on the continuous sites (unconstrained), Metropolis order moves (random swaps
and adjacent reversals that carry the weights along), and, under ``decoder_update = "gibbs"``, exact
augmentation draws first in every iteration (:mod:`latentscm.inference.mcmc_gibbs`)."""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from numpyro.distributions.transforms import biject_to
from numpyro.infer.hmc import hmc
from numpyro.infer.util import constrain_fn, potential_energy

from .guide import site_specs
from .mcmc_gibbs import GIBBS_SITES, aux_from

_PERMUTED_SITES = ("edge_weight", "edge_weight_local_scale")  # tril-shaped sites the reversal permutes


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


def _start_points(model, data, init_values, order0, gibbs):
    """Each chain's unconstrained start (stacked), its augmentation (stacked; ``{}`` without Gibbs updates),
    one chain's augmentation as a template, and the model's site specs."""
    d = order0.shape[1]
    if not gibbs:
        aux0 = [{} for _ in init_values]
    else:  # a placeholder (z = 0) carrying the start decoder; init_one draws the first real augmentation
        zero = jnp.zeros((data["raw"][0].shape[0], d), jnp.float64)
        aux0 = [aux_from(zero, *(jnp.asarray(vals[k], jnp.float64) for k in GIBBS_SITES), data["raw"])
                for vals in init_values]
    specs = site_specs(model, data, jnp.asarray(order0[0]), aux0[0], exclude=())
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
    stack = lambda trees: jax.tree.map(lambda *xs: jnp.stack(xs), *trees)  # noqa: E731
    return stack(z0), stack(aux0), aux0[0], specs


def _order_moves(pe_gen, d, n_moves, swap_prob, permuted, rev):
    """``moves(key, z, order, aux, U, data) -> (z, order, counts)``: ``n_moves`` Metropolis order proposals
    (a random swap with probability ``swap_prob``, else an adjacent reversal that also permutes the
    ``permuted`` tril-shaped sites); counts: accepted and proposed swaps, then reversals."""
    def moves(key, z, order, aux, U, data):
        def body(_, carry):
            z, order, U, key, counts = carry
            key, k_type, k_pair, k_adj, k_acc = jax.random.split(key, 5)
            is_swap = jax.random.uniform(k_type) < swap_prob
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

    return moves


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
    z0, aux0, template, specs = _start_points(model, data, init_values, order0, augment is not None)

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

    order_moves = _order_moves(pe_gen, d, n_moves, config.swap_prob, permuted, rev)

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
