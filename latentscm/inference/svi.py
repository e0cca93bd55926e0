"""A small SVI engine shared by the variational methods: pure ``init`` / ``step`` plus a runner.

The state holds a leading *restart* axis: ``R`` independent optimisations run vectorised (``vmap``)
and the runner keeps the one with the best final ELBO. ``run_svi`` drives ``step`` in jitted chunks
of ``chunk`` steps (``lax.scan``), shows a progress bar, stops with a clear error on a non-finite
loss or parameter, and returns the ELBO trace of every restart.
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from tqdm.auto import tqdm


class SVIState(NamedTuple):
    params: dict  # each leaf has a leading restart axis
    opt_state: object
    rng_key: jax.Array  # (R, 2) keys
    step: jax.Array  # scalar int


class SVIInfo(NamedTuple):
    loss: jax.Array  # (chunk, R) negative ELBO


def init(rng_key, params, optimizer):
    """State for stacked initial parameters (leading restart axis R)."""
    R = jax.tree.leaves(params)[0].shape[0]
    opt_state = jax.vmap(optimizer.init)(params)
    return SVIState(params, opt_state, jax.random.split(rng_key, R), jnp.zeros((), jnp.int32))


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation, schedule: Callable):
    """``step(state, data, num_steps) -> (state, info)``: ``num_steps`` steps in one jitted scan.

    loss_fn(params, rng_key, temperature, data) -> negative ELBO; schedule(step) -> temperature.
    ``data`` (a pytree of arrays) is an argument, not a closure constant: large constants make XLA
    compile slowly.
    """

    def one(params, opt_state, key, temperature, data):
        loss, grads = jax.value_and_grad(loss_fn)(params, key, temperature, data)
        updates, opt_state = optimizer.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    batched = jax.vmap(one, in_axes=(0, 0, 0, None, None))

    def step(state, data, num_steps):
        def body(state, _):
            keys = jax.vmap(jax.random.split)(state.rng_key)
            params, opt_state, loss = batched(state.params, state.opt_state, keys[:, 1], schedule(state.step), data)
            return SVIState(params, opt_state, keys[:, 0], state.step + 1), loss

        state, loss = jax.lax.scan(body, state, None, length=num_steps)
        return state, SVIInfo(loss)

    return jax.jit(step, static_argnums=2)


def _check_finite(state, losses, start):
    bad = ~np.isfinite(losses)
    if bad.any():
        i, r = np.argwhere(bad)[0]
        raise FloatingPointError(
            f"SVI: the loss became non-finite ({losses[i, r]}) at step {start + i} (restart {r}). "
            "Lower the learning rate, or check the data scale and the priors.")
    for path, leaf in jax.tree_util.tree_leaves_with_path(state.params):
        if not np.all(np.isfinite(np.asarray(leaf))):
            raise FloatingPointError(
                f"SVI: parameter {jax.tree_util.keystr(path)} became non-finite by step "
                f"{start + len(losses)}. Lower the learning rate, or check the data scale and the priors.")


def run_svi(step_fn, state, data, num_steps, *, chunk=100, progress=True, desc="svi", callback=None):
    """Run ``num_steps`` steps from ``state``; returns (state, losses (num_steps, R))."""
    losses = []
    bar = tqdm(total=num_steps, desc=desc, disable=not progress, leave=False)
    done = int(state.step)
    target = done + num_steps
    try:
        while done < target:
            n = min(chunk, target - done)
            state, info = step_fn(state, data, n)
            loss = np.asarray(info.loss)
            _check_finite(state, loss, done)
            losses.append(loss)
            done += n
            bar.update(n)
            bar.set_postfix(elbo=f"{-np.min(loss[-1]):.4g}")
            if callback is not None:
                callback(state, np.concatenate(losses))
    finally:
        bar.close()
    return state, np.concatenate(losses) if losses else np.zeros((0, 1))
