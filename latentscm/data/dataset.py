"""The ``Dataset`` container, its validation and the external ``.npz`` format."""

from __future__ import annotations

import dataclasses
import json
import os
import zipfile
from dataclasses import dataclass, field
from pathlib import Path

import networkx as nx
import numpy as np

from .._io import atomic_write

__all__ = ["DataError", "Dataset"]

FORMAT_HELP = (
    "The external format is a .npz file with arrays x (N, D) float, targets (N, d) 0/1 and values (N, d) "
    "(NaN where a targeted value is unknown; omitted: all unknown), and optionally regime (N,), pair (N,), z (N, d), weights (d, d), "
    "noise_scales (d,), projection (d, D), image_shape (k,), meta (0-d JSON string)."
)
_OPTIONAL_ARRAYS = ("pair", "z", "weights", "noise_scales", "projection")


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


def _regime_from_targets(targets: np.ndarray) -> np.ndarray:
    """Index of each row's distinct target mask (lexicographic order; observational mask is 0)."""
    return np.unique(targets, axis=0, return_inverse=True)[1].ravel().astype(np.int64)


@dataclass(frozen=True, eq=False)
class Dataset:
    """Observations with known interventions, and optionally the ground truth that generated them.

    Construction validates and converts every field (``DataError`` on invalid input); use
    :meth:`from_arrays` to get defaults for ``values`` and ``regime``.

    Attributes
    ----------
    x : (N, D) float32
        Observations.
    targets : (N, d) int8
        Intervention masks, 1 where node j of row n was intervened on.
    values : (N, d) float32
        Intervention values, 0 where ``targets == 0``, NaN where targeted but unknown.
    regime : (N,) int64
        Regime id of each row.
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

    def __post_init__(self):
        put = lambda k, v: object.__setattr__(self, k, v)  # noqa: E731
        x = _float_array("x", self.x, 2, np.float32)
        n, big_d = x.shape
        if n < 1:
            raise DataError("the dataset is empty (x has 0 rows); provide at least one row")
        t = np.asarray(self.targets)
        if t.ndim != 2 or t.shape[0] != n:
            raise DataError(f"targets must have shape (N, d) with N = {n} rows like x, got {t.shape}")
        if not np.isin(t, (0, 1)).all():
            raise DataError("targets must contain only 0 and 1 (1 = node intervened on); "
                            f"found values {np.setdiff1d(np.unique(t), [0, 1])[:5].tolist()}")
        t = t.astype(np.int8)
        d = t.shape[1]
        if d < 1:
            raise DataError("targets has 0 columns; it needs one column per latent variable")
        v = np.asarray(self.values, dtype=np.float64)
        if v.shape != t.shape:
            raise DataError(f"values must have the shape of targets {t.shape}, got {v.shape}")
        infinite = (t == 1) & np.isinf(v)
        if infinite.any():
            raise DataError(f"values has {int(infinite.sum())} infinite entries where targets == 1 "
                            f"(first in row {_first_bad_row(infinite)}); give finite values, or NaN for unknown ones")
        v = np.where(t == 1, v, 0.0).astype(np.float32)  # NaN where targeted: an unknown value
        r = np.asarray(self.regime)
        if r.shape != (n,) or not np.issubdtype(r.dtype, np.integer):
            raise DataError(f"regime must be a 1-D integer array of length N = {n}, got {r.dtype} {r.shape}")
        put("x", x), put("targets", t), put("values", v), put("regime", r.astype(np.int64))
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
            g = nx.from_numpy_array((self.weights != 0).astype(int), create_using=nx.DiGraph)
            if not nx.is_directed_acyclic_graph(g):
                cycle = [u for u, _ in nx.find_cycle(g)]
                raise DataError(f"weights must describe a DAG but contain the cycle {cycle}; "
                                "weights[i, j] != 0 means an edge i -> j")
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

    # ------------------------------------------------------------------ construction
    @classmethod
    def from_arrays(cls, x, targets, values=None, *, regime=None, pair=None, z=None, weights=None,
                    noise_scales=None, projection=None, image_shape=None, meta=None) -> "Dataset":
        """Build a validated Dataset.

        ``values`` may be omitted: the intervention values are then unknown (NaN where targeted);
        ``regime`` defaults to the index of each row's distinct target mask. Shapes as in the class
        docstring.
        """
        t = np.asarray(targets)
        if values is None:
            values = np.where(t != 0, np.nan, 0.0).astype(np.float32)
        if regime is None and t.ndim == 2 and np.isin(t, (0, 1)).all():
            regime = _regime_from_targets(t.astype(np.int8)) if t.shape[0] else np.zeros(0, np.int64)
        return cls(x, t, values, regime if regime is not None else np.zeros(len(t), np.int64), pair=pair, z=z,
                   weights=weights, noise_scales=noise_scales, projection=projection,
                   image_shape=image_shape, meta=meta or {})

    # ------------------------------------------------------------------ properties
    @property
    def num_unknown_values(self) -> int:
        """Number of targeted entries whose intervention value is unknown (NaN)."""
        return int(np.isnan(self.values).sum())

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
        g = nx.DiGraph()
        g.add_nodes_from(range(self.d))
        for i, j in zip(*np.nonzero(self.weights)):
            g.add_edge(int(i), int(j), weight=float(self.weights[i, j]))
        return g

    def subset(self, rows) -> "Dataset":
        """Dataset restricted to ``rows`` (indices or boolean mask); regime and pair ids are kept."""
        idx = np.arange(self.N)[rows]
        per_row = {k: getattr(self, k)[idx] for k in ("x", "targets", "values", "regime", "pair", "z")
                   if getattr(self, k) is not None}
        return dataclasses.replace(self, **per_row)

    def to_dataframe(self):
        """``pandas.DataFrame`` with columns x_0.., z_0.., target_0.., value_0.., regime, pair."""
        import pandas as pd

        cols = {f"x_{j}": self.x[:, j] for j in range(self.D)}
        if self.z is not None:
            cols |= {f"z_{j}": self.z[:, j] for j in range(self.d)}
        cols |= {f"target_{j}": self.targets[:, j] for j in range(self.d)}
        cols |= {f"value_{j}": self.values[:, j] for j in range(self.d)}
        cols["regime"] = self.regime
        if self.pair is not None:
            cols["pair"] = self.pair
        return pd.DataFrame(cols)

    # ------------------------------------------------------------------ I/O
    def save(self, path: str | os.PathLike) -> Path:
        """Write the external ``.npz`` format atomically (temp file in the same folder, then rename)."""
        path = Path(path)
        arrays = {"x": self.x, "targets": self.targets, "values": self.values, "regime": self.regime}
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
        for key in ("x", "targets"):
            if key not in arrays:
                raise DataError(f"{path} has no array '{key}' (found {sorted(arrays)}). {FORMAT_HELP}")
        meta = {}
        if "meta" in arrays:
            try:
                meta = json.loads(str(arrays["meta"][()]))
            except (ValueError, TypeError) as e:
                raise DataError(f"{path}: 'meta' must be a 0-d JSON string ({e})") from None
        return cls.from_arrays(
            arrays["x"], arrays["targets"], arrays.get("values"), regime=arrays.get("regime"),
            image_shape=arrays.get("image_shape"), meta=meta,
            **{k: arrays.get(k) for k in _OPTIONAL_ARRAYS},
        )
