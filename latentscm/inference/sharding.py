"""Spreading the collapsed likelihood and the MCMC chains over several JAX devices.

The collapsed likelihood is a sum over the leading axis of its arrays: the rows of the sufficient
statistics (one per distinct pattern of targets) while fitting, the data's units (single rows or
pairs, :func:`latentscm.models.collapsed.make_units`) when latents are summarised. Placing that axis
with a :class:`jax.sharding.NamedSharding` over a one-axis :class:`Mesh` makes ``jit`` partition the
computation: each device evaluates its share of the rows, the sum becomes an all-reduce, and
parameters stay replicated. Nothing else changes, so the result equals the
one-device result up to the order of floating-point additions.

The axis is padded to a multiple of the device count with empty rows (count 0 and all statistics
0), which contribute exactly 0 to the log-likelihood.

Multi-GPU: ``devices="all"`` uses ``jax.devices()``. Multi-host: call ``jax.distributed.initialize()``
in every process first (see ``docs/scaling.md``); ``jax.devices()`` then lists the devices of all
hosts and the same code runs unchanged (each process must run the same fit).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

AXIS = "rows"


def resolve_devices(devices):
    """The list of JAX devices for a ``devices`` setting (1, n or "all").

    Raises ValueError when more devices are asked for than JAX sees, naming how to get more
    (``XLA_FLAGS=--xla_force_host_platform_device_count=N`` on CPU, set before JAX starts).
    """
    available = jax.devices()
    if devices == "all":
        return list(available)
    if devices > len(available):
        raise ValueError(
            f"devices = {devices} but JAX sees {len(available)} ({available[0].platform}); use devices = 'all', "
            "fewer devices, or on CPU start Python with XLA_FLAGS=--xla_force_host_platform_device_count="
            f"{devices}")
    return list(available[:devices])


def mesh(devices):
    """A one-axis mesh (axis ``"rows"``) over ``devices`` (a list of JAX devices)."""
    return Mesh(np.array(devices), (AXIS,))


def pad_leading(tree, multiple, fill=0):
    """Pad every leaf's leading axis with ``fill`` up to a multiple of ``multiple`` (numpy or jax leaves)."""
    def pad(a):
        a = np.asarray(a)
        extra = (-a.shape[0]) % multiple
        if not extra:
            return a
        return np.concatenate([a, np.full((extra,) + a.shape[1:], fill, a.dtype)])

    return jax.tree.map(pad, tree)


def shard_leading(tree, devices, dtype=None):
    """Place every leaf of ``tree`` with its leading axis split over ``devices`` (padded with zeros first).

    One device: the leaves are returned as plain (uncommitted) jax arrays, unpadded.
    """
    if len(devices) == 1:
        return jax.tree.map(lambda a: jnp.asarray(a, dtype) if dtype is not None else jnp.asarray(a), tree)
    tree = pad_leading(tree, len(devices))
    sharding = NamedSharding(mesh(devices), PartitionSpec(AXIS))
    return jax.tree.map(lambda a: jax.device_put(np.asarray(a, dtype) if dtype is not None else a, sharding), tree)


def replicate(tree, devices):
    """Place ``tree`` fully replicated on ``devices`` (no-op for one device)."""
    if len(devices) == 1:
        return tree
    return jax.device_put(tree, NamedSharding(mesh(devices), PartitionSpec()))


def shard_stats(stats, devices):
    """Spread a :class:`~latentscm.models.collapsed.SufficientStats` over ``devices``.

    The row axis of the second-moment factor (``fx``, ``fg``: at most ``min(n_r, kD)`` rows per pattern,
    the data's rows while regimes are small) is split over the devices, padded with zero rows (which
    add nothing); the per-pattern arrays (R leading) are replicated. Statistics without a factor
    (the identity decoder's) are split along the pattern axis instead, padded with empty patterns (count 0).
    """
    if len(devices) == 1:
        return stats
    split = tuple(n for n in ("fx", "fv", "fg") if n in stats._fields) or stats._fields
    return type(stats)(**{name: shard_leading(getattr(stats, name), devices) if name in split
                          else replicate(jnp.asarray(getattr(stats, name)), devices) for name in stats._fields})


def shard_units(arrays, devices):
    """Split per-unit arrays (a tuple of arrays with leading axis U) over ``devices``, padded with
    zero units (no targets, zero data); the caller drops outputs past the original U."""
    return shard_leading(arrays, devices)
