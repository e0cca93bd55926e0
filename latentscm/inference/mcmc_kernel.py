"""The ``mcmc`` chain as a NumPyro :class:`~numpyro.infer.mcmc.MCMCKernel`: Metropolis moves on the node order
composed with NUTS on every continuous site, so that :class:`numpyro.infer.MCMC` runs the chains (warm-up,
progress, ``chain_method``).

:class:`OrderNUTS` targets ``p(order, sites | data)`` of a model ``model(*args, order=order, **kwargs)`` whose
sites do not depend on the order's value except through the density (the collapsed model,
:func:`~latentscm.models.collapsed.collapsed_model`, or the SCM with observed latents,
:func:`~latentscm.models.observed.identity_model`). One iteration, per chain:

1. ``order_moves`` Metropolis-Hastings proposals of the order, each a random swap of two nodes (probability
   ``swap_prob``; the position-space ``edge_weight`` stays, so the graph changes) or a relocation (a node
   moves to another position and ``edge_weight`` is permuted so that every node pair keeps its weight: the
   edges between the moving node and the nodes it passes are reversed, all others stay; :func:`relocation`).
   Both are symmetric and permute coordinates (unit Jacobian); with the uniform order prior the acceptance
   ratio is the ratio of joint densities. Relocations let a node with no strong edges wander through the
   order in one step (adjacent reversals alone needed one accepted step per position passed).
2. One NUTS transition on the continuous sites (unconstrained) given the order.

Mass matrix (``mass``): ``"laplace"`` (default) runs damped Newton steps to the conditional mode of the
chain's start order in :meth:`OrderNUTS.init`, takes the inverse Hessian there (eigenvalues made positive)
as a fixed dense inverse mass matrix and starts the chain from a draw of that Gaussian; only the step size is
adapted during warm-up. The matrix is kept in node-pair coordinates (:func:`pair_index`), so after an order
move each weight keeps the mass it was fitted with (the mass is a function of the order: NUTS given the order
stays exact). On the collapsed model the decoder is determined about 300x more tightly than the
SCM's parameters and strongly correlated with them; this whitening is what lets NUTS move (about 15
leapfrog steps per iteration at d = 5, D = 100 instead of the tree-depth cap). ``"adapt"``: NumPyro's
windowed adaptation (diagonal, or dense with ``dense_mass``), for small or non-Gaussian targets (e.g.
horseshoe priors). Either way the kernel is fixed after warm-up and each part leaves the target invariant.
"""

from __future__ import annotations

from functools import partial
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.flatten_util import ravel_pytree
from numpyro.infer.hmc import HMCState, hmc
from numpyro.infer.mcmc import MCMCKernel
from numpyro.infer.util import constrain_fn, potential_energy
from numpyro.util import is_prng_key

from .laplace import laplace

PERMUTED_SITES = ("edge_weight", "edge_weight_local_scale")  # tril-shaped sites a relocation permutes
MASSES = ("laplace", "adapt")


class OrderState(NamedTuple):
    """State of one chain (fields batched over chains when NumPyro vectorises them).

    hmc: the NUTS state (unconstrained continuous sites ``hmc.z``); order (d,) int (``order[p]``: the node at
    position p); moves (4,) int32: accepted and proposed random swaps, then accepted and proposed relocations,
    in the last iteration; mass: with ``mass = "laplace"`` the inverse mass matrix, its square
    root and inverse square root (each (n, n)) in pair coordinates (:func:`pair_index`), else ``()``; rng_key."""

    hmc: HMCState
    order: jax.Array
    moves: jax.Array
    mass: tuple
    rng_key: jax.Array

    @property
    def draw(self):
        """The sample field: the unconstrained sites and ``"order"``."""
        return {**self.hmc.z, "order": self.order}

    @property
    def diverging(self):
        return self.hmc.diverging

    @property
    def accept_prob(self):
        return self.hmc.accept_prob

    @property
    def num_steps(self):
        return self.hmc.num_steps

    @property
    def step_size(self):
        return self.hmc.adapt_state.step_size

    @property
    def potential_energy(self):
        return self.hmc.potential_energy


def _tril_table(d):
    """(d, d) int: ``table[r, c] = table[c, r]`` is the index of tril entry (max, min) in ``np.tril_indices(d, -1)``."""
    rows, cols = np.tril_indices(d, -1)
    table = np.zeros((d, d), np.int64)
    table[rows, cols] = table[cols, rows] = np.arange(len(rows))
    return table


def relocation(order, a, b):
    """The relocation move: the node at position ``a`` moves to position ``b`` (the nodes between shift by one),
    every node pair keeping its weight. Returns the new order (d,) and the index (d(d-1)/2,) with
    ``l' = l[index]`` for the position-space tril entries ``l`` (``L[r, c]``, r > c).

    In node space every edge keeps its weight except those between the moving node and the nodes it passes,
    which are reversed with the same weight (``b = a + 1``: one adjacent reversal). The move from ``b`` back to
    ``a`` undoes it, and it permutes coordinates (unit Jacobian), so with (a, b) drawn uniformly the
    Metropolis-Hastings ratio is the ratio of joint densities."""
    d = order.shape[-1]
    p = jnp.arange(d)
    lo, hi = jnp.minimum(a, b), jnp.maximum(a, b)
    new_pos = jnp.where(p == a, b, jnp.where((p >= lo) & (p <= hi), p + jnp.where(a < b, -1, 1), p))
    old = jnp.argsort(new_pos)  # old position of the node now at each position
    rows, cols = np.tril_indices(d, -1)
    source_r, source_c = jnp.maximum(old[rows], old[cols]), jnp.minimum(old[rows], old[cols])
    return order[old], jnp.asarray(_tril_table(d))[source_r, source_c]


def pair_index(order, offset, n, permuted):
    """(n,) int: flat coordinate -> its pair coordinate. Within each ``permuted`` block (tril-shaped,
    ``offset[name]``) the entry of positions (b, a) is the weight between the nodes ``order[a], order[b]``;
    its pair coordinate is where that unordered node pair sits in the block in the identity order. Relocations
    leave every entry's pair coordinate unchanged, so a mass matrix kept in pair coordinates moves
    with the weights it was fitted to (a function of the order only: NUTS given the order stays exact)."""
    d = order.shape[-1]
    rows, cols = np.tril_indices(d, -1)
    pairs = jnp.asarray(_tril_table(d))[order[rows], order[cols]]
    index = jnp.arange(n)
    for name in permuted:
        index = index.at[offset[name] + np.arange(len(rows))].set(offset[name] + pairs)
    return index


def order_moves(potential, d, n_moves, swap_prob, permuted):
    """``moves(key, z, order, U) -> (z, order, U, counts)``: ``n_moves`` Metropolis order proposals on the
    target ``exp(-potential(z, order))``: with probability ``swap_prob`` a random swap of two nodes (the
    position-space sites stay, so the graph changes), else a :func:`relocation` of a uniformly chosen node to
    another uniformly chosen position (the ``permuted`` tril-shaped sites of ``z`` carried along). ``U`` is the
    current potential; counts (4,): accepted and proposed swaps, then relocations."""

    def body(_, carry):
        z, order, U, key, counts = carry
        key, k_type, k_pair, k_from, k_to, k_acc = jax.random.split(key, 6)
        is_swap = jax.random.uniform(k_type) < swap_prob
        pair = jax.random.choice(k_pair, d, (2,), replace=False)
        a = jax.random.randint(k_from, (), 0, d)
        b = (a + 1 + jax.random.randint(k_to, (), 0, d - 1)) % d
        moved, index = relocation(order, a, b)
        swapped = order.at[pair[0]].set(order[pair[1]]).at[pair[1]].set(order[pair[0]])
        new_order = jnp.where(is_swap, swapped, moved)
        new_z = {name: jnp.where(is_swap, v, v[index]) if name in permuted else v for name, v in z.items()}
        new_U = potential(new_z, new_order)
        log_alpha = jnp.where(jnp.isfinite(new_U), U - new_U, -jnp.inf)
        accept = jnp.log(jax.random.uniform(k_acc)) < log_alpha
        z = jax.tree.map(lambda n, o: jnp.where(accept, n, o), new_z, z)
        counts = counts + jnp.array([accept & is_swap, is_swap, accept & ~is_swap, ~is_swap], jnp.int32)
        return z, jnp.where(accept, new_order, order), jnp.where(accept, new_U, U), key, counts

    def moves(key, z, order, U):
        z, order, U, _, counts = jax.lax.fori_loop(0, n_moves, body, (z, order, U, key, jnp.zeros(4, jnp.int32)))
        return z, order, U, counts

    return moves


class OrderNUTS(MCMCKernel):
    """Order moves composed with NUTS, for :class:`numpyro.infer.MCMC` (see the module docstring).

    model: ``model(*args, order=order, **kwargs)`` with the node order as keyword (d,) int; order_moves:
    proposals per iteration (None: d; 0 keeps the start order); swap_prob: probability that a proposal is a
    random swap; mass: ``"laplace"`` or ``"adapt"``; dense_mass: for ``"adapt"``; target_accept_prob,
    max_tree_depth: NUTS; laplace_start: with ``"laplace"``, start the chain from a draw of the Laplace
    approximation (else from ``init_params``).

    ``MCMC.run(key, *args, init_params=...)`` needs ``init_params``: the unconstrained continuous sites and
    ``"order"`` (d,) int, with a leading chain axis when ``num_chains > 1``. Sample field ``"draw"`` (the
    sites and ``"order"``; :meth:`postprocess_fn` adds the constrained values and deterministic sites such as
    ``W``); further fields: ``diverging``, ``accept_prob``, ``num_steps``, ``step_size``, ``moves``,
    ``potential_energy``.
    """

    sample_field = "draw"

    def __init__(self, model, *, order_moves=None, swap_prob=0.5, mass="laplace", dense_mass=False,
                 target_accept_prob=0.8, max_tree_depth=8, laplace_start=True):
        if mass not in MASSES:
            raise ValueError(f"OrderNUTS: mass must be one of {MASSES}; got {mass!r}")
        if not 0 <= swap_prob <= 1:
            raise ValueError(f"OrderNUTS: swap_prob must lie in [0, 1]; got {swap_prob}")
        self.model, self.n_moves, self.swap_prob, self.mass = model, order_moves, swap_prob, mass
        self.dense_mass, self.target_accept_prob, self.max_tree_depth = dense_mass, target_accept_prob, max_tree_depth
        self.laplace_start = laplace_start
        self._sample_fn = None

    def _potential(self, args, kwargs):
        """``potential(z, order)``: the negative log joint in unconstrained space."""
        return lambda z, order: potential_energy(self.model, args, {**kwargs, "order": order}, z)

    def init(self, rng_key, num_warmup, init_params, model_args=(), model_kwargs=None):
        if not isinstance(init_params, dict) or "order" not in init_params:
            raise ValueError("OrderNUTS needs init_params: a dict of the unconstrained continuous sites and "
                             "'order' (the start order, (d,) int; leading chain axis for several chains); pass "
                             "MCMC.run(..., init_params=...)")
        kwargs = {} if model_kwargs is None else model_kwargs
        d = init_params["order"].shape[-1]
        n_moves = d if self.n_moves is None else self.n_moves
        n_moves = n_moves if d > 1 else 0
        sites = [k for k in init_params if k != "order"]
        permuted = [k for k in PERMUTED_SITES if k in sites]
        batch = jnp.ndim(init_params["order"]) - 1
        sizes = {k: int(np.prod(jnp.shape(init_params[k])[batch:])) for k in sorted(sites)}  # ravel_pytree's layout
        starts = np.cumsum([0] + list(sizes.values()))
        offset = {k: int(starts[i]) for i, k in enumerate(sizes) if k in permuted}
        n = int(starts[-1])
        index_of = partial(pair_index, offset=offset, n=n, permuted=permuted)
        init_kernel, sample_kernel = hmc(potential_fn_gen=lambda order, args, kw: partial(
            self._potential(args, kw), order=order), algo="NUTS")

        def init_one(key, params):
            order = jnp.asarray(params["order"])
            z = {k: params[k] for k in sites}
            k_start, k_hmc, key = jax.random.split(key, 3)
            inverse, mass = None, ()
            if self.mass == "laplace":
                flat, unravel = ravel_pytree(z)
                q, V, w = laplace(lambda q: self._potential(model_args, kwargs)(unravel(q), order), flat)
                inverse = (V / w) @ V.T
                back = jnp.argsort(index_of(order))  # pair coordinate -> flat coordinate in the start order
                mass = (inverse[back][:, back], (V * jnp.sqrt(w))[back], (V.T / jnp.sqrt(w)[:, None])[:, back])
                if self.laplace_start:
                    z = unravel(q + V @ (jax.random.normal(k_start, q.shape, q.dtype) / jnp.sqrt(w)))
            state = init_kernel(z, num_warmup, inverse_mass_matrix=inverse, adapt_step_size=True,
                                adapt_mass_matrix=inverse is None, dense_mass=self.dense_mass or inverse is not None,
                                target_accept_prob=self.target_accept_prob, max_tree_depth=self.max_tree_depth,
                                model_args=(order, model_args, kwargs), rng_key=k_hmc)
            return OrderState(state, order, jnp.zeros(4, jnp.int32), mass, key)

        def sample_one(state, model_args, model_kwargs):
            kw = {} if model_kwargs is None else model_kwargs
            potential = self._potential(model_args, kw)
            key, k_moves = jax.random.split(state.rng_key)
            hs, order, counts = state.hmc, state.order, jnp.zeros(4, jnp.int32)
            if n_moves:
                z, order, U, counts = order_moves(potential, d, n_moves, self.swap_prob, permuted)(
                    k_moves, hs.z, order, hs.potential_energy)
                U, grad = jax.value_and_grad(potential)(z, order)
                hs = hs._replace(z=z, potential_energy=U, z_grad=grad)
            if state.mass:  # the Laplace mass matrix in this order's coordinates
                i = index_of(order)
                inverse, root, root_inv = state.mass
                hs = hs._replace(adapt_state=hs.adapt_state._replace(
                    inverse_mass_matrix=inverse[i][:, i], mass_matrix_sqrt=root[i], mass_matrix_sqrt_inv=root_inv[:, i]))
            hs = sample_kernel(hs, model_args=(order, model_args, kw))
            return OrderState(hs, order, counts, state.mass, key)

        if is_prng_key(rng_key):
            state = jax.jit(init_one)(rng_key, init_params)
            self._sample_fn = sample_one
        else:
            state = jax.jit(jax.vmap(init_one))(rng_key, init_params)
            self._sample_fn = jax.vmap(sample_one, in_axes=(0, None, None))
        return state

    def sample(self, state, model_args, model_kwargs):
        return self._sample_fn(state, model_args, model_kwargs)

    @property
    def default_fields(self):
        return (self.sample_field, "diverging")

    def postprocess_fn(self, model_args, model_kwargs):
        """``draw -> constrained sites, deterministic sites (e.g. W) and "order"``."""
        kwargs = {} if model_kwargs is None else model_kwargs

        def constrain(draw):
            params = {k: v for k, v in draw.items() if k != "order"}
            out = constrain_fn(self.model, model_args, {**kwargs, "order": draw["order"]}, params,
                               return_deterministic=True)
            return {**out, "order": draw["order"]}

        return constrain

    def get_diagnostics_str(self, state):
        return "{} steps of size {:.2e}. acc. prob={:.2f}".format(
            state.hmc.num_steps, state.hmc.adapt_state.step_size, state.hmc.mean_accept_prob)
