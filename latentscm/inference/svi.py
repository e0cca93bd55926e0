"""A small SVI engine shared by the variational methods: pure ``init`` / ``step`` plus a runner.

A method builds an :class:`SVIProblem` (model, guide, initial parameters, optimiser, schedule, data) and
:func:`solve` does the rest.

The state holds a leading *restart* axis: ``R`` independent optimisations run vectorised (``vmap``)
and the runner keeps the one with the best final ELBO. ``run_svi`` drives ``step`` in jitted chunks
of ``chunk`` steps (``lax.scan``), shows a progress bar, stops with a clear error on a non-finite
loss or parameter, and returns the ELBO trace of every restart.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import operator
import zipfile
from pathlib import Path
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from numpyro.handlers import replay, seed
from numpyro.infer import TraceMeanField_ELBO
from numpyro.infer.util import compute_log_probs
from tqdm.auto import tqdm

from .._io import atomic_write
from .programs import program


class SVIState(NamedTuple):
    params: dict  # each leaf has a leading restart axis
    opt_state: object
    rng_key: jax.Array  # (R, 2) keys
    step: jax.Array  # scalar int


class SVIInfo(NamedTuple):
    loss: jax.Array  # (chunk, R) negative ELBO


def seed_keys(seed, num):
    """``num`` PRNG keys (num, 2), a numpy array, from one split of ``seed``'s key: a fit takes every key it
    uses from here (key i for job i), so no two jobs, nor two seeds, share a key. One compiled call (the
    seed an argument: every seed reuses it)."""
    if seed >= 2**31:  # beyond int32: the seed is a constant of its own program
        return np.asarray(jax.random.split(jax.random.PRNGKey(seed), num))
    return np.asarray(_split_seed(np.int32(seed), num))


@functools.partial(jax.jit, static_argnums=1)
def _split_seed(seed, num):
    return jax.random.split(jax.random.PRNGKey(seed), num)


def init(rng_key, params, optimizer):
    """State for stacked initial parameters (leading restart axis R); one compiled call."""
    def build(rng_key, params):
        R = jax.tree.leaves(params)[0].shape[0]
        return SVIState(params, jax.vmap(optimizer.init)(params), jax.random.split(rng_key, R),
                        jnp.zeros((), jnp.int32))

    return jax.jit(build)(rng_key, params)


def make_step(loss_fn: Callable, optimizer: optax.GradientTransformation, schedule: Callable, identity=None):
    """``step(state, data, num_steps) -> (state, info)``: ``num_steps`` steps in one jitted scan (kept across
    processes under ``identity``: :func:`~latentscm.inference.programs.program`).

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

    return program(step, identity, static_argnums=2)


def elbo_loss(num_particles, mean_field=False):
    """``loss(key, params, model, guide, *args)``: the negative ELBO, averaged over ``num_particles``
    vectorised particles, with the per-site terms computed and summed in sorted site order.

    ``mean_field=False``: ``log p - log q`` at every site, NumPyro's ``Trace_ELBO`` estimator with its
    key use (one particle: the key itself; several: ``random.split``). Written here because ``Trace_ELBO``
    (NumPyro 0.22) subtracts the terms in the order of a Python ``set`` of site names, which follows the
    string-hash seed: the traced program then differs from process to process, so the compiled SVI step
    missed JAX's persistent compilation cache in every new process, and the sum differed in its last
    bits. ``mean_field=True``: ``TraceMeanField_ELBO`` (closed-form KL where one is registered), whose
    terms already follow the trace's order.
    """
    if mean_field:
        elbo = TraceMeanField_ELBO(num_particles=num_particles, vectorize_particles=True, sum_sites=False)

        def loss(key, params, model, guide, *args):
            terms = elbo.loss(key, params, model, guide, *args)
            return functools.reduce(operator.add, (terms[name] for name in sorted(terms)))

        return loss

    def particle(key, params, model, guide, args):
        model_key, guide_key = jax.random.split(key)
        guide_lp, guide_trace = compute_log_probs(seed(guide, guide_key), args, {}, params)
        model_lp, _ = compute_log_probs(replay(seed(model, model_key), guide_trace), args, {}, params)
        zero = jnp.zeros(())
        return functools.reduce(operator.add, (model_lp.get(n, zero) - guide_lp.get(n, zero)
                                               for n in sorted(set(model_lp) | set(guide_lp))))

    def loss(key, params, model, guide, *args):
        if num_particles == 1:
            return -particle(key, params, model, guide, args)
        keys = jax.random.split(key, num_particles)
        return -jnp.mean(jax.vmap(lambda k: particle(k, params, model, guide, args))(keys))

    return loss


class SVIProblem(NamedTuple):
    """What an SVI method builds from its dataset, settings, priors and seed; :func:`solve` runs it.

    model, guide: ``model(temperature, data)``, ``guide(temperature, data)``; params: the initial
    variational parameters, restart axis first; schedule: ``schedule(step) -> temperature``;
    num_particles, mean_field: the ELBO estimator (:func:`elbo_loss`); loss: an optional replacement
    ``loss(params, key, temperature, data) -> negative ELBO`` (e.g. one that draws a minibatch); identity: the
    step's key across processes (:func:`~latentscm.inference.programs.program`; None: traced in each process).
    """

    model: Callable
    guide: Callable
    params: dict
    optimizer: optax.GradientTransformation
    schedule: Callable
    data: object
    num_particles: int
    mean_field: bool = False
    loss: Callable | None = None
    identity: str | None = None  # names everything the step's closure captures (programs.program), or None

    def loss_fn(self):
        """``loss(params, key, temperature, data)``: the problem's negative ELBO."""
        if self.loss is not None:
            return self.loss
        neg_elbo = elbo_loss(self.num_particles, self.mean_field)
        model, guide = self.model, self.guide
        return lambda params, key, temperature, data: neg_elbo(key, params, model, guide, temperature, data)


class SVIFit(NamedTuple):
    """What :func:`solve` returns: the final parameters (numpy, restart axis first), the loss trace
    (steps, R), the restart kept (:func:`best_restart`) and every restart's tail loss (R,)."""

    params: dict
    losses: np.ndarray
    best: int
    tail: np.ndarray

    def restart(self, r):
        """Restart ``r``'s parameters (numpy: indexing a JAX array outside jit compiles a program per shape)."""
        return jax.tree.map(lambda a: np.asarray(a)[r], self.params)


def solve(problem: SVIProblem, key, steps, *, chunk=100, progress=True, desc="svi", checkpoint=None,
          after_compile=None) -> SVIFit:
    """Run ``problem`` for ``steps`` steps from ``key``: every restart vectorised, jitted chunks, progress
    bar, NaN stops, checkpoints (:func:`run_svi`); keeps the restart with the best tail loss.
    ``after_compile``: called once the steps are compiled, before they run (see :func:`run_svi`)."""
    state = init(key, problem.params, problem.optimizer)
    step_fn = make_step(problem.loss_fn(), problem.optimizer, problem.schedule, problem.identity)
    state, losses = run_svi(step_fn, state, problem.data, steps, chunk=chunk, progress=progress, desc=desc,
                            checkpoint=checkpoint, after_compile=after_compile)
    best, tail = best_restart(losses)
    return SVIFit(jax.tree.map(np.asarray, state.params), np.asarray(losses, np.float64), best, tail)


def loss_tail(losses):
    """The last 10% of steps (at least one) of a (steps, R) loss trace: what restarts are judged by."""
    losses = np.asarray(losses, np.float64)
    return losses[-max(1, len(losses) // 10):]


def best_restart(losses):
    """The restart to keep: ``(best, tail)`` with ``tail`` (R,) each restart's median loss over
    :func:`loss_tail` (the median: one restart's ELBO estimates can be heavy-tailed, e.g. a few draws of
    a wrong order under a sharp likelihood, and must not decide by their mean); a restart whose tail is
    not finite is never kept. ``losses``: (steps, R)."""
    tail = np.median(loss_tail(losses), axis=0)
    return int(np.argmin(np.where(np.isfinite(tail), tail, np.inf))), tail


def geometric_schedule(start, end, steps):
    """``schedule(step)``: from ``start`` at step 0 to ``end`` at the last step, geometrically."""

    def schedule(step):
        return start * (end / start) ** jnp.minimum(step / max(steps - 1, 1), 1.0)

    return schedule


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


class Checkpoint(NamedTuple):
    """Where and how often ``run_svi`` saves its state, and what identifies the run.

    fingerprint: JSON-able description (method, settings, priors, seed, data digest); a checkpoint
    whose fingerprint differs is refused, so a resume never mixes two runs.
    """

    path: Path
    every: int
    fingerprint: dict


def save_checkpoint(path, state, losses, fingerprint):
    """Write ``state`` (params, optimiser state, keys, step) and the loss trace atomically (npz)."""
    leaves, treedef = jax.tree.flatten(state)
    arrays = {f"leaf_{i:04d}": np.asarray(leaf) for i, leaf in enumerate(leaves)}
    arrays["losses"] = losses
    arrays["fingerprint"] = np.array(json.dumps(fingerprint, sort_keys=True, default=str))
    arrays["treedef"] = np.array(str(treedef))

    def writer(tmp):
        with open(tmp, "wb") as fh:
            np.savez(fh, **arrays)

    atomic_write(path, writer)


def load_checkpoint(path, template, fingerprint):
    """Restore (state, losses) saved by :func:`save_checkpoint`; ``template`` gives the structure.

    Raises ``ValueError`` naming the problem when the file is corrupt or belongs to another run.
    """
    try:
        with np.load(path, allow_pickle=False) as f:
            saved = json.loads(str(f["fingerprint"]))
            treedef = str(f["treedef"])
            leaves = [f[f"leaf_{i:04d}"] for i in range(sum(k.startswith("leaf_") for k in f.files))]
            losses = f["losses"]
    except (OSError, ValueError, KeyError, zipfile.BadZipFile, json.JSONDecodeError) as e:
        raise ValueError(f"checkpoint {path} is unreadable or corrupt ({e}); delete it to start afresh") from None
    want = json.loads(json.dumps(fingerprint, sort_keys=True, default=str))
    if saved != want:
        diff = sorted(k for k in set(saved) | set(want) if saved.get(k) != want.get(k))
        raise ValueError(f"checkpoint {path} belongs to another run (differs in {diff}); resume with the "
                         "same data, method, settings, priors and seed, or use another folder")
    t_leaves, t_def = jax.tree.flatten(template)
    if treedef != str(t_def) or [np.shape(a) for a in leaves] != [np.shape(a) for a in t_leaves]:
        raise ValueError(f"checkpoint {path} does not match this model's parameters; delete it to start afresh")
    state = jax.tree.unflatten(t_def, [jnp.asarray(a, dtype=jnp.asarray(t).dtype) for a, t in zip(leaves, t_leaves)])
    return state, losses


def checkpoint_for(method, config, priors, seed, dataset):
    """The :class:`Checkpoint` of a fit whose config has ``checkpoint_dir`` set (else None).

    The file is ``<checkpoint_dir>/checkpoint.npz``; the fingerprint covers the method, every setting
    but the checkpoint's own, the priors, the seed and a digest of the data.
    """
    if getattr(config, "checkpoint_dir", None) is None:
        return None
    folder = Path(config.checkpoint_dir)
    folder.mkdir(parents=True, exist_ok=True)
    settings = {k: v for k, v in dataclasses.asdict(config).items() if not k.startswith("checkpoint_")}
    digest = hashlib.sha256()
    for a in (dataset.x, dataset.targets, np.nan_to_num(dataset.values)):
        digest.update(np.ascontiguousarray(a).tobytes())
    fingerprint = {"method": method, "settings": settings, "priors": priors.describe(), "seed": seed,
                   "data": digest.hexdigest()}
    return Checkpoint(folder / "checkpoint.npz", config.checkpoint_every, fingerprint)


def run_svi(step_fn, state, data, num_steps, *, chunk=100, progress=True, desc="svi", callback=None,
            checkpoint: Checkpoint | None = None, after_compile=None):
    """Run ``state`` to ``num_steps`` total steps; returns (state, losses (num_steps, R)).

    With ``checkpoint``, an existing checkpoint file is resumed from (after validation) and the state
    is saved every ``checkpoint.every`` steps and at the end. Chunks are aligned to multiples of
    ``chunk`` from step 0, so a resumed run computes exactly what an uninterrupted one does.

    The chunks' programs (one per chunk length) are compiled before the first runs; then
    ``after_compile()`` is called, and nothing is traced until the steps end: a caller may trace other
    programs in a thread meanwhile (``collapsed`` traces its order weighing so: NumPyro's handlers are
    global, so two threads must not trace models at once).
    """
    losses = []
    if checkpoint is not None and Path(checkpoint.path).exists():
        state, previous = load_checkpoint(checkpoint.path, state, checkpoint.fingerprint)
        losses.append(previous)
    done = int(state.step)
    lengths, at = [], done
    while at < num_steps:
        lengths.append(min(chunk - at % chunk, num_steps - at))
        at += lengths[-1]
    compiled = {n: step_fn.lower(state, data, n).compile() for n in sorted(set(lengths))}
    if after_compile is not None:
        after_compile()
    bar = tqdm(total=num_steps, initial=done, desc=desc, disable=not progress, leave=False)
    try:
        for n in lengths:
            state, info = compiled[n](state, data)
            loss = np.asarray(info.loss)
            _check_finite(state, loss, done)
            losses.append(loss)
            done += n
            bar.update(n)
            bar.set_postfix(elbo=f"{-np.min(loss[-1]):.4g}")
            if checkpoint is not None and (done % checkpoint.every < n or done == num_steps):
                save_checkpoint(checkpoint.path, state, np.concatenate(losses), checkpoint.fingerprint)
            if callback is not None:  # callback(state, losses so far) after each chunk
                callback(state, np.concatenate(losses))
    finally:
        bar.close()
    return state, np.concatenate(losses) if losses else np.zeros((0, 1))
