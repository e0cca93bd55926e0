"""The ``Dataset`` container, its validation and the external ``.npz`` format."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .._io import atomic_write

if TYPE_CHECKING:
    import networkx as nx

__all__ = ["DataError", "Dataset"]

FORMAT_HELP = (
    "The external format is a .npz file with arrays x (N, D) float, targets (N, d) 0/1 (float with NaN where a "
    "target is unknown; omitted: all unknown) and values (N, d) (NaN where a targeted value is unknown; omitted: "
    "all unknown), and optionally regime (N,) int (required when some targets are unknown: all rows of a regime "
    "share their targets), true_targets (N, d) 0/1, pair (N,), z (N, d), weights (d, d), noise_scales (d,), "
    "projection (d, D), image_shape (k,), meta (0-d JSON string)."
)
_OPTIONAL_ARRAYS = ("pair", "z", "weights", "noise_scales", "projection", "true_targets")


class DataError(ValueError):
    """Invalid data; the message names the problem and how to fix it."""


def _first_bad_row(bad: np.ndarray) -> int:
    return int(np.flatnonzero(bad.reshape(bad.shape[0], -1).any(axis=1))[0])


def _float_array(name: str, a, ndim: int, dtype=np.float64) -> np.ndarray:
    try:
        a = np.asarray(a, dtype=dtype)
    except (TypeError, ValueError) as e:
        raise DataError(f"{name} must be a numeric array: {e}") from None
    if a.ndim != ndim:
        raise DataError(f"{name} must be {ndim}-D, got shape {a.shape}")
    bad = ~np.isfinite(a)
    if bad.any():
        where = f" (first in row {_first_bad_row(bad)})" if ndim == 2 else ""
        raise DataError(f"{name} has {int(bad.sum())} non-finite (NaN or inf) entries{where}; "
                        f"drop or impute those rows first")
    return a


def _nan_mask(a: np.ndarray) -> np.ndarray:
    """Where ``a`` is NaN (all False for a non-float array)."""
    return np.isnan(a) if np.issubdtype(a.dtype, np.floating) else np.zeros(a.shape, bool)


def _regime_from_targets(targets: np.ndarray) -> np.ndarray | None:
    """Index of each row's distinct target mask (lexicographic order; observational mask is 0); None when
    the targets are not 0/1 (the constructor says why). Unknown (NaN) targets cannot name regimes."""
    if _nan_mask(targets).any():
        raise DataError(f"{int(_nan_mask(targets).sum())} targets are unknown (NaN), so the rows cannot be grouped "
                        "into regimes by their targets; give regime ids (regime=, an (N,) int array): all rows "
                        "of a regime share their targets, known or not")
    if not np.isin(targets, (0, 1)).all():
        return None
    return np.unique(targets, axis=0, return_inverse=True)[1].ravel().astype(np.int64)


def _all_unknown_targets(x, regime, sources: dict) -> np.ndarray:
    """All-NaN (N, d) targets for data given without targets: N from ``x``, d from the first of ``sources``."""
    if regime is None:
        raise DataError("targets are absent, so every target is unknown, and then regime ids are required to say "
                        "which rows share their targets; give regime (an (N,) int array), or give targets (N, d) "
                        "with 0/1 where known and NaN where unknown")
    shapes = [np.shape(a) for a in sources.values() if a is not None and np.ndim(a) >= 1]
    if not shapes:
        raise DataError(f"targets are absent and none of {', '.join(sources)} tells the number of latents d; "
                        "give targets as an all-NaN (N, d) array")
    return np.full((np.shape(x)[0] if np.ndim(x) else 0, shapes[0][-1]), np.nan)


def _row_text(a: np.ndarray) -> str:
    """A target row as text: 0/1 where known, '?' where unknown (coded 2), at most 12 entries."""
    text = ["?" if v == 2 else str(int(v)) for v in a[:12]]
    return "[" + ", ".join(text) + (", ..." if a.size > 12 else "") + "]"


def _differing_row(key: np.ndarray, regime: np.ndarray, check: np.ndarray) -> tuple[int, int] | None:
    """(row, first row of its regime) for the first row whose ``key`` row differs from its regime's first
    row, among regimes where ``check`` (N,) holds for some row; None when all agree."""
    _, first, inv = np.unique(regime, return_index=True, return_inverse=True)
    inv = inv.ravel()
    checked = np.bincount(inv, weights=check.astype(float), minlength=first.size)[inv] > 0
    bad = checked & (key != key[first[inv]]).any(axis=1)
    if not bad.any():
        return None
    row = int(np.flatnonzero(bad)[0])
    return row, int(first[inv[row]])


def topological_order(weights) -> np.ndarray:
    """Nodes of the DAG ``weights != 0`` in a topological order (parents first): the roots in index order, then each
    node once its parents are placed, in the order they become so (networkx's ``topological_sort`` order).

    Raises
    ------
    DataError
        If the graph has a cycle (the message names one).
    """
    adj = np.asarray(weights) != 0
    indegree = adj.sum(0)
    order = [int(i) for i in np.flatnonzero(indegree == 0)]
    for i in order:  # the list grows while it is read
        for j in np.flatnonzero(adj[i]):
            indegree[j] -= 1
            if indegree[j] == 0:
                order.append(int(j))
    if len(order) < len(adj):
        left = np.ones(len(adj), bool)
        left[order] = False  # every node left has a parent left: walk up parents until one repeats
        path, node = [], int(np.flatnonzero(left)[0])
        while node not in path:
            path.append(node)
            node = int(np.flatnonzero(adj[:, node] & left)[0])
        cycle = path[path.index(node):][::-1]
        raise DataError(f"weights must describe a DAG but contain the cycle {cycle}; "
                        "weights[i, j] != 0 means an edge i -> j")
    return np.array(order, dtype=np.int64)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Observations with interventions, and optionally the ground truth that generated them.

    The intervention targets may be unknown for whole regimes (``target_unknown``); the regime ids then
    say which rows share their (unknown) targets.

    Construction validates and converts every field (``DataError`` on invalid input); use
    :meth:`from_arrays` to get defaults for ``values`` and ``regime``.

    Attributes
    ----------
    x : (N, D) float32
        Observations.
    targets : (N, d) int8
        Intervention masks, 1 where node j of row n was intervened on; 0 where unknown.
    values : (N, d) float32
        Intervention values, 0 where ``targets == 0``, NaN where targeted but unknown and where the
        target is unknown.
    regime : (N,) int64
        Regime id of each row. All rows of a regime with an unknown target share one target row.
    target_unknown : (N, d) bool, optional
        True where the target is unknown; None when every target is known. ``targets`` given as a
        float array with NaN marks the same entries.
    true_targets : (N, d) int8, optional
        True intervention masks; equal to ``targets`` wherever those are known.
    pair : (N,) int64, optional
        Rows with equal id share exogenous noise.
    z : (N, d) float64, optional
        True latents.
    weights : (d, d) float64, optional
        True weighted adjacency of a DAG, ``weights[i, j] != 0`` means an edge ``i -> j``.
    noise_scales : (d,) float64, optional
        True exogenous noise standard deviations.
    projection : (d, D) float64, optional
        True linear decoder, when linear.
    image_shape : tuple of int, optional
        Shape of one observation as an image; its product is ``D``.
    meta : dict
        JSON-serialisable description (generator configuration etc.).
    """

    x: np.ndarray
    targets: np.ndarray
    values: np.ndarray
    regime: np.ndarray
    pair: np.ndarray | None = None
    z: np.ndarray | None = None
    weights: np.ndarray | None = None
    noise_scales: np.ndarray | None = None
    projection: np.ndarray | None = None
    image_shape: tuple[int, ...] | None = None
    meta: dict = field(default_factory=dict)
    target_unknown: np.ndarray | None = None
    true_targets: np.ndarray | None = None

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        x = _float_array("x", self.x, 2, np.float32)
        n, big_d = x.shape
        if n < 1:
            raise DataError("the dataset is empty (x has 0 rows); provide at least one row")
        t, unknown = self._targets(n)
        d = t.shape[1]
        v = np.asarray(self.values, dtype=np.float64)
        if v.shape != t.shape:
            raise DataError(f"values must have the shape of targets {t.shape}, got {v.shape}")
        infinite = (t == 1) & np.isinf(v)
        if infinite.any():
            raise DataError(f"values has {int(infinite.sum())} infinite entries where targets == 1 "
                            f"(first in row {_first_bad_row(infinite)}); give finite values, or NaN for unknown ones")
        v = np.where(t == 1, v, 0.0)  # NaN where targeted: an unknown value
        v = (v if unknown is None else np.where(unknown, np.nan, v)).astype(np.float32)
        r = np.asarray(self.regime)
        if r.shape != (n,) or not np.issubdtype(r.dtype, np.integer):
            raise DataError(f"regime must be a 1-D integer array of length N = {n}, got {r.dtype} {r.shape}")
        put("x", x), put("targets", t), put("values", v), put("regime", r.astype(np.int64))
        put("target_unknown", unknown), put("true_targets", self._true_targets())
        if self.pair is not None:
            p = np.asarray(self.pair)
            if p.shape != (n,) or not np.issubdtype(p.dtype, np.integer):
                raise DataError(f"pair must be a 1-D integer array of length N = {n}, got {p.dtype} {p.shape}")
            ids, counts = np.unique(p, return_counts=True)
            if counts.size and counts.max() > 2:
                bad = ids[counts.argmax()]
                rows = np.flatnonzero(p == bad)[:3].tolist()
                raise DataError(f"pair ids must group at most two rows (a row and its twin that shares its "
                                f"exogenous noise); id {bad} has {counts.max()} rows (rows {rows}...). Fix the "
                                "pair array, or leave it out when the rows are not paired")
            put("pair", p.astype(np.int64))
        shapes = {"z": (n, d), "weights": (d, d), "noise_scales": (d,), "projection": (d, big_d)}
        for name, shape in shapes.items():
            a = getattr(self, name)
            if a is not None:
                a = _float_array(name, a, len(shape))
                if a.shape != shape:
                    raise DataError(f"{name} must have shape {shape} (d = {d} from targets, N = {n}, "
                                    f"D = {big_d}), got {a.shape}")
                put(name, a)
        if self.weights is not None:
            topological_order(self.weights)  # DataError naming a cycle
        if self.image_shape is not None:
            raw = np.asarray(self.image_shape)
            if (raw.ndim > 1 or raw.size not in (2, 3) or not np.issubdtype(raw.dtype, np.number)
                    or not np.all(raw == np.round(raw)) or not np.all(raw >= 1)):
                raise DataError(f"image_shape must hold 2 or 3 positive integers, (height, width) or (height, "
                                f"width, channels), got {raw.tolist()}")
            shape = tuple(int(s) for s in raw.ravel())
            if int(np.prod(shape)) != big_d:
                raise DataError(f"image_shape {shape} has {int(np.prod(shape))} pixels but x has D = {big_d} columns; "
                                "x must hold each image flattened row-major (numpy reshape(N, -1))")
            put("image_shape", shape)
        try:
            put("meta", json.loads(json.dumps(dict(self.meta))))
        except (TypeError, ValueError) as e:
            raise DataError(f"meta must be a JSON-serialisable dict: {e}") from None

    def _targets(self, n: int) -> tuple[np.ndarray, np.ndarray | None]:
        """Validated (N, d) int8 targets (0 where unknown) and the unknown mask (None when all are known)."""
        t = np.asarray(self.targets)
        if t.ndim != 2 or t.shape[0] != n:
            raise DataError(f"targets must have shape (N, d) with N = {n} rows like x, got {t.shape}")
        unknown = _nan_mask(t)
        if self.target_unknown is not None:
            u = np.asarray(self.target_unknown)
            if u.shape != t.shape or not np.isin(u, (0, 1)).all():
                raise DataError(f"target_unknown must be a bool array of the shape of targets {t.shape} (True "
                                f"where the target is unknown), got {u.dtype} {u.shape}")
            unknown = unknown | u.astype(bool)
        t = np.where(unknown, 0, t)
        if not np.isin(t, (0, 1)).all():
            raise DataError("targets must contain only 0 and 1 (1 = node intervened on), or NaN where unknown; "
                            f"found values {np.setdiff1d(np.unique(t), [0, 1])[:5].tolist()}")
        if t.shape[1] < 1:
            raise DataError("targets has 0 columns; it needs one column per latent variable")
        return t.astype(np.int8), (unknown if unknown.any() else None)

    def _true_targets(self) -> np.ndarray | None:
        """Validated true targets; checks them and the unknown targets against the regime ids."""
        t, unknown, r = self.targets, self.target_unknown, self.regime
        if unknown is not None:
            key = t + 2 * unknown.astype(np.int8)  # 0/1 known, 2 unknown
            bad = _differing_row(key, r, unknown.any(axis=1))
            if bad is not None:
                row, ref = bad
                raise DataError(
                    f"target masks contradict their regime ids: regime {r[row]} has unknown targets, so all its "
                    f"rows must share one target row (the same 0/1 entries and the same unknown entries), but "
                    f"row {row} {_row_text(key[row])} differs from row {ref} {_row_text(key[ref])} ('?' = "
                    "unknown). Give rows with different targets different regime ids, or make the targets of "
                    "one regime agree")
        if self.true_targets is None:
            return None
        tt = np.asarray(self.true_targets)
        if tt.shape != t.shape or not np.isin(tt, (0, 1)).all():
            raise DataError(f"true_targets must be a 0/1 array of the shape of targets {t.shape} (the true "
                            f"intervention masks), got {tt.dtype} {tt.shape}")
        tt = tt.astype(np.int8)
        wrong = (tt != t) if unknown is None else (tt != t) & ~unknown
        if wrong.any():
            raise DataError(f"true_targets disagrees with the known targets in {int(wrong.sum())} entries (first "
                            f"in row {_first_bad_row(wrong)}); it must equal targets wherever the target is known")
        if unknown is not None:
            bad = _differing_row(tt, r, unknown.any(axis=1))
            if bad is not None:
                raise DataError(f"true_targets differ within regime {r[bad[0]]} (rows {bad[1]} and {bad[0]}), whose "
                                "targets are unknown; a regime has one target row, so give those rows "
                                "different regime ids or fix true_targets")
        return tt

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, x, targets, values=None, *, regime=None, pair=None, z=None, weights=None,
                    noise_scales=None, projection=None, image_shape=None, true_targets=None,
                    meta=None) -> "Dataset":
        """Build a validated Dataset.

        ``targets`` may hold NaN where a target is unknown, or be None when every target is unknown
        (then ``regime`` is required and d comes from ``true_targets``, ``values``, ``z`` or ``weights``).
        ``values`` may be omitted: the intervention values are then unknown (NaN where targeted);
        ``regime`` defaults to the index of each row's distinct target mask when every target is known.
        Shapes as in the class docstring.
        """
        if targets is None:
            sources = {"true_targets": true_targets, "values": values, "z": z, "weights": weights}
            targets = _all_unknown_targets(x, regime, sources)
        t = np.asarray(targets)
        if values is None:
            values = np.where(t != 0, np.nan, 0.0).astype(np.float32)
        if regime is None and t.ndim == 2:
            regime = _regime_from_targets(t) if t.shape[0] else np.zeros(0, np.int64)
        return cls(x, t, values, regime if regime is not None else np.zeros(len(t), np.int64), pair=pair, z=z,
                   weights=weights, noise_scales=noise_scales, projection=projection,
                   image_shape=image_shape, meta=meta or {}, true_targets=true_targets)

    # ------------------------------------------------------------------ properties
    @property
    def num_unknown_values(self) -> int:
        """Number of entries with a known target (``targets == 1``) whose intervention value is unknown (NaN)."""
        return int((np.isnan(self.values) & (self.targets == 1)).sum())

    @property
    def num_unknown_targets(self) -> int:
        """Number of (row, node) entries whose intervention target is unknown."""
        return 0 if self.target_unknown is None else int(self.target_unknown.sum())

    def _nan_targets(self) -> np.ndarray:
        """Targets as float32, NaN where unknown."""
        t = self.targets.astype(np.float32)
        return t if self.target_unknown is None else np.where(self.target_unknown, np.nan, t).astype(np.float32)

    @property
    def N(self) -> int:
        """Number of rows."""
        return self.x.shape[0]

    @property
    def D(self) -> int:
        """Observation dimension."""
        return self.x.shape[1]

    @property
    def d(self) -> int:
        """Number of latent variables."""
        return self.targets.shape[1]

    @property
    def has_truth(self) -> bool:
        """Whether the true latents ``z`` and ``weights`` are present."""
        return self.z is not None and self.weights is not None

    def true_graph(self) -> nx.DiGraph:
        """True DAG as a ``networkx.DiGraph`` on nodes ``0..d-1`` with edge attribute ``weight``."""
        if self.weights is None:
            raise DataError("this dataset has no true weights; true_graph() needs ground truth")
        import networkx as nx

        g = nx.DiGraph()
        g.add_nodes_from(range(self.d))
        for i, j in zip(*np.nonzero(self.weights)):
            g.add_edge(int(i), int(j), weight=float(self.weights[i, j]))
        return g

    def subset(self, rows) -> "Dataset":
        """Dataset restricted to ``rows`` (indices or boolean mask); regime and pair ids are kept."""
        idx = np.arange(self.N)[rows]
        keys = ("x", "targets", "values", "regime", "pair", "z", "target_unknown", "true_targets")
        per_row = {k: getattr(self, k)[idx] for k in keys if getattr(self, k) is not None}
        return dataclasses.replace(self, **per_row)

    def hide_targets(self, regimes=None) -> "Dataset":
        """Copy in which every target of the rows of ``regimes`` (ids; default: all) is unknown and the values
        there NaN. ``true_targets`` keeps the truth: the existing one when set, else the targets before hiding
        (None when some targets were already unknown without a truth)."""
        ids = np.unique(self.regime) if regimes is None else np.atleast_1d(np.asarray(regimes))
        missing = np.setdiff1d(ids, self.regime)
        if missing.size:
            raise DataError(f"hide_targets: regime ids {missing[:5].tolist()} do not occur in this dataset; "
                            f"its ids are {np.unique(self.regime)[:20].tolist()}")
        unknown = np.zeros(self.targets.shape, bool) if self.target_unknown is None else self.target_unknown.copy()
        unknown[np.isin(self.regime, ids)] = True
        truth = self.true_targets
        if truth is None and self.target_unknown is None:
            truth = self.targets  # every target was known: the truth
        return dataclasses.replace(self, target_unknown=unknown, true_targets=truth)

    def to_dataframe(self):
        """``pandas.DataFrame`` with columns x_0.., z_0.., target_0.. (NaN where unknown), value_0..,
        true_target_0.. (when known), regime, pair."""
        import pandas as pd

        cols = {f"x_{j}": self.x[:, j] for j in range(self.D)}
        if self.z is not None:
            cols |= {f"z_{j}": self.z[:, j] for j in range(self.d)}
        targets = self.targets if self.target_unknown is None else self._nan_targets()
        cols |= {f"target_{j}": targets[:, j] for j in range(self.d)}
        cols |= {f"value_{j}": self.values[:, j] for j in range(self.d)}
        if self.true_targets is not None:
            cols |= {f"true_target_{j}": self.true_targets[:, j] for j in range(self.d)}
        cols["regime"] = self.regime
        if self.pair is not None:
            cols["pair"] = self.pair
        return pd.DataFrame(cols)

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write the external ``.npz`` format atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        targets = self.targets if self.target_unknown is None else self._nan_targets()  # NaN: unknown
        arrays = {"x": self.x, "targets": targets, "values": self.values, "regime": self.regime}
        for k in _OPTIONAL_ARRAYS:
            if getattr(self, k) is not None:
                arrays[k] = getattr(self, k)
        if self.image_shape is not None:
            arrays["image_shape"] = np.asarray(self.image_shape, dtype=np.int64)
        arrays["meta"] = np.array(json.dumps(self.meta))
        def writer(tmp):
            with open(tmp, "wb") as fh:  # a file object: np.savez would append ".npz" to a name
                np.savez(fh, **arrays)

        return atomic_write(path, writer)

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Dataset":
        """Read a dataset in the external ``.npz`` format (see ``FORMAT_HELP``); ``DataError`` if invalid."""
        path = Path(path)
        if not path.is_file():
            raise DataError(f"no such file: {path}. {FORMAT_HELP}")
        if path.stat().st_size == 0:
            raise DataError(f"{path} is empty (0 bytes). {FORMAT_HELP}")
        try:
            with np.load(path, allow_pickle=False) as f:
                arrays = {k: f[k] for k in f.files}
        except (OSError, ValueError, EOFError, zipfile.BadZipFile, AttributeError, TypeError) as e:
            # numpy reads a file that is no zip archive as a pickle and then suggests allow_pickle, which
            # a user of the format cannot act on: say what the file is not instead
            why = "it is neither a NumPy .npz archive nor a .npy array" if "pickle" in str(e) else str(e)
            raise DataError(f"{path} is not a readable .npz archive ({why}). {FORMAT_HELP}") from None
        if "x" not in arrays:
            raise DataError(f"{path} has no array 'x' (found {sorted(arrays)}). {FORMAT_HELP}")
        if "targets" not in arrays and "regime" not in arrays:
            raise DataError(f"{path} has neither 'targets' nor 'regime' (found {sorted(arrays)}): without targets "
                            "every target is unknown and regime ids must say which rows share their targets; add "
                            f"regime (N,) ints, or targets (N, d) 0/1 with NaN where unknown. {FORMAT_HELP}")
        meta = {}
        if "meta" in arrays:
            try:
                meta = json.loads(str(arrays["meta"][()]))
            except (ValueError, TypeError) as e:
                raise DataError(f"{path}: 'meta' must be a 0-d JSON string ({e})") from None
        return cls.from_arrays(
            arrays["x"], arrays.get("targets"), arrays.get("values"), regime=arrays.get("regime"),
            image_shape=arrays.get("image_shape"), meta=meta,
            **{k: arrays.get(k) for k in _OPTIONAL_ARRAYS},
        )
