"""Traced programs kept across processes: :func:`program`, a ``jax.jit`` whose tracing and lowering a later
process skips.

JAX's persistent compilation cache keeps XLA's output, but every process still traces and lowers each
program before it can look the cache up: for the default run's SVI step that is 2-3 s, more than its
thousand steps take. With a cache folder set (``jax_compilation_cache_dir``: the command line sets it, see
the README; ``docs/collapsed.md``, what a fit compiles), :func:`program` exports the traced program
(``jax.export``, its arguments flattened) to ``<cache folder>/latentscm-programs/`` the first time and later
processes deserialise it instead of tracing; XLA's compilation of it is then served by JAX's own cache.
Without a folder it is ``jax.jit``. The exported program is the one that runs in both cases, so a first and
a repeated run give the same numbers (``jax.jit`` of the same function too: ``tests/test_programs.py``).

The file's key is everything the program can depend on: the caller's ``identity`` (a string naming the
function and every setting its closure captures), the static arguments, the tree structure, shapes and
dtypes of the others, whether 64-bit types are on, JAX's matmul precision and promotion settings, the
backend, the versions of JAX, jaxlib, NumPyro, Optax and NumPy and a digest of latentscm's own source. A
program may therefore close over settings (named in ``identity``) but never over data: every array it
depends on must be an argument.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import logging
import pickle
from functools import cache
from pathlib import Path

import jax
import numpy as np

from .._io import atomic_write

log = logging.getLogger(__name__)

SUBFOLDER = "latentscm-programs"

# compiled programs by key, shared by every program of the process: the key determines the program (as it does the
# file's), so a later fit in the same process (a notebook, a script, the tests) neither reads nor compiles again
_COMPILED: dict = {}


def folder() -> Path | None:
    """Where exported programs go: ``latentscm-programs`` in JAX's compilation cache folder, or None (off)."""
    base = jax.config.jax_compilation_cache_dir
    return Path(base) / SUBFOLDER if base else None


@cache
def _environment() -> str:
    """The versions and the package source that every key includes."""
    digest = hashlib.sha256()
    for name in ("jax", "jaxlib", "numpyro", "optax", "numpy"):
        digest.update(f"{name}={importlib.metadata.version(name)};".encode())
    root = Path(__file__).resolve().parents[1]
    for path in sorted(root.rglob("*.py")):
        digest.update(path.relative_to(root).as_posix().encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def program(fun, identity: str | None, *, static_argnums: tuple[int, ...] = ()):
    """``jax.jit(fun, static_argnums=...)``, kept across processes when a cache folder is set and ``identity``
    is given (see the module docstring). The result supports calls and ``.lower(*args).compile()``."""
    static_argnums = tuple(static_argnums) if isinstance(static_argnums, (tuple, list)) else (static_argnums,)
    jitted = jax.jit(fun, static_argnums=static_argnums)
    if identity is None or folder() is None:
        return jitted
    return _Program(fun, jitted, identity, static_argnums)


class _Program:
    def __init__(self, fun, jitted, identity, static_argnums):
        self.fun, self.jitted, self.identity, self.static = fun, jitted, identity, static_argnums
        self._compiled = _COMPILED

    def __call__(self, *args):
        return self.lower(*args).compile()(*(a for i, a in enumerate(args) if i not in self.static))

    def lower(self, *args):
        """Read the program from the folder, else trace and export it there (all tracing happens here, none in
        ``compile``); a program ``jax.export`` cannot take is lowered as ``jax.jit`` would."""
        static = tuple(args[i] for i in self.static)
        leaves, tree = jax.tree.flatten([a for i, a in enumerate(args) if i not in self.static])
        key = self._key(static, tree, leaves)
        if key in self._compiled:
            return _Lowered(self, key, None, leaves)
        path = folder() / f"{key}.jaxexport"
        if path.exists():
            try:
                saved = pickle.loads(path.read_bytes())
                return _Lowered(self, key, (jax.export.deserialize(bytearray(saved["exported"])), saved["out_tree"]),
                                leaves)
            except Exception as e:  # noqa: BLE001 (a damaged or foreign file: export afresh)
                log.info("latentscm: exported program %s unreadable (%s); exporting again", path.name, e)
        try:
            exported, out_tree = self._export(static, tree, leaves)
            blob = pickle.dumps({"exported": bytes(exported.serialize()), "out_tree": out_tree})
        except Exception as e:  # noqa: BLE001 (what jax.export cannot take runs as jax.jit would)
            log.info("latentscm: %s not exported (%s); traced in this process", self.identity, e)
            return _Lowered(self, key, self.jitted.lower(*args), leaves)
        path.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(path, lambda tmp: Path(tmp).write_bytes(blob))
        return _Lowered(self, key, (exported, out_tree), leaves)

    def _key(self, static, tree, leaves):
        avals = [(np.shape(x), str(jax.numpy.result_type(x)), bool(getattr(x, "weak_type", False))) for x in leaves]
        flags = [getattr(jax.config, f"jax_{name}", None)  # JAX settings that change what a trace produces
                 for name in ("default_matmul_precision", "numpy_dtype_promotion", "numpy_rank_promotion")]
        text = repr((self.identity, static, str(tree), avals, jax.dtypes.canonicalize_dtype(np.float64).name,
                     flags, jax.default_backend(), _environment()))
        return hashlib.sha256(text.encode()).hexdigest()

    def _export(self, static, tree, leaves):
        out_tree = []

        def flat(*flat_args):
            out = self.fun(*_merge(static, self.static, jax.tree.unflatten(tree, flat_args)))
            out_leaves, structure = jax.tree.flatten(out)
            out_tree.append(structure)
            return out_leaves

        exported = jax.export.export(jax.jit(flat))(*leaves)
        return exported, out_tree[0]


class _Lowered:
    """An exported program for one argument signature (or, where ``jax.export`` failed, ``jax.jit``'s lowering);
    ``compile()`` -> a callable of the non-static arguments, kept for the next call of that signature."""

    def __init__(self, prog, key, found, leaves):
        self.prog, self.key, self.found, self.leaves = prog, key, found, leaves
        self.x64 = jax.dtypes.canonicalize_dtype(np.float64) == np.float64  # as when lowered, wherever compiled

    def compile(self):
        if self.key not in self.prog._compiled and isinstance(self.found, jax.stages.Lowered):
            self.prog._compiled[self.key] = self.found.compile()
        if self.key not in self.prog._compiled:
            exported, out_tree = self.found
            x64 = self.x64
            with jax.enable_x64(x64):
                compiled = jax.jit(exported.call).lower(*self.leaves).compile()  # JAX's cache serves XLA's part

            def call(*dynamic):
                with jax.enable_x64(x64):
                    return jax.tree.unflatten(out_tree, compiled(*jax.tree.leaves(list(dynamic))))

            self.prog._compiled[self.key] = call
        return self.prog._compiled[self.key]


def _merge(static, positions, dynamic):
    """The full argument list from the static values (at ``positions``) and the others, in order."""
    args, dynamic, static = [], list(dynamic), list(static)
    for i in range(len(positions) + len(dynamic)):
        args.append(static.pop(0) if i in positions else dynamic.pop(0))
    return args
