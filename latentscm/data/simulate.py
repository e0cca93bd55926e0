"""Synthetic latent-SCM datasets: random DAG, linear-Gaussian SCM, interventions, projection."""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

import numpy as np

from .._validate import check_fields, integer, interval, number, one_of, setting
from .dags import Seed, as_rng, random_dag, random_noise_scales, random_weights
from .dataset import Dataset
from .images import IMAGE_LAYOUTS, IMAGE_SHAPE, check_fits, chemistry_projection, render
from .projections import linear_projection, mlp_projection, project, so_projection
from .scm import sample_latents

__all__ = ["IMAGE_SCALES", "SimulationConfig", "image_config", "observed_chain", "simulate"]

_MAX_RESAMPLES = 1000


@dataclass(frozen=True)
class SimulationConfig:
    """Configuration of :func:`simulate`; defaults follow the paper's linear-projection setting.

    Each field's bounds are declared with it and checked on construction (``ValueError`` naming the
    field); so are the rules between fields (the paired design's ``n_pairs``, the image and ``so``
    projections' ``D``, enough regimes to intervene on every node).

    Attributes
    ----------
    d, D : int
        Number of latents and observation dimension (``D == d`` for ``projection="so"``).
    graph : {"er", "sf"}
    edges_per_node : float
    weight_range : (lo, hi)
        Absolute edge weights ``~ U(lo, hi)`` with random sign.
    noise_log_range : (lo, hi)
        Noise standard deviations ``exp(U(lo, hi))``.
    design : {"paired", "iid"}
        ``"paired"``: ``n_pairs`` observational rows then their intervened twins, sharing exogenous noise
        (``n_pairs == n_regimes * rows_per_regime``). ``"iid"``: ``n_rows`` independent rows split evenly
        over the observational regime and the ``n_regimes`` interventional ones.
    n_pairs, n_rows, n_regimes, rows_per_regime : int
    targets : {"multi", "single"}
        ``"multi"``: each regime intervenes on a uniformly random number in ``1..d-1`` of distinct nodes.
        ``"single"``: one node per regime, cycling through a random permutation of the nodes.
    values : {"gaussian", "uniform", "zero"}
        Intervention values ``value_scale * N(0, 1)``, ``U(-value_scale, value_scale)`` or 0, per row.
    value_scale : float
    tau : float
        Intervention noise standard deviation.
    projection : {"linear", "mlp", "so", "chemistry", "chemistry_shift"}
        The last two render 50 x 50 grey images (``D = 2500``, ``image_shape = (50, 50)``, pixels on
        the [0, 1] scale; see :mod:`latentscm.data.images`); :func:`image_config` sets them up.
    obs_noise : float
        Observation noise standard deviation (pixel noise for images).
    n_test_regimes : int
        Regimes of the test set (``rows_per_regime`` iid rows each), new target masks where possible.
    """

    d: int = setting(5, integer(2), why="interventions target 1..d-1 nodes")
    D: int = setting(100, integer(1))
    graph: str = setting("er", one_of("er", "sf"))
    edges_per_node: float = setting(1.0, number(ge=0))
    weight_range: tuple[float, float] = setting((0.5, 2.0), interval(ge=0))
    noise_log_range: tuple[float, float] = setting((0.0, math.log(2.0)), interval())
    design: str = setting("paired", one_of("paired", "iid"))
    n_pairs: int = setting(2000, integer(1))
    n_rows: int = setting(4000, integer(1))
    n_regimes: int = setting(20, integer(1))
    rows_per_regime: int = setting(100, integer(1))
    targets: str = setting("multi", one_of("multi", "single"))
    values: str = setting("gaussian", one_of("gaussian", "uniform", "zero"))
    value_scale: float = setting(2.0, number(ge=0))
    tau: float = setting(0.1, number(ge=0))
    projection: str = setting("linear", one_of("linear", "mlp", "so", *IMAGE_LAYOUTS))
    obs_noise: float = setting(0.1, number(ge=0))
    n_test_regimes: int = setting(5, integer(0))

    def __post_init__(self):
        check_fields(self, "SimulationConfig")
        if self.design == "paired" and self.n_pairs != self.n_regimes * self.rows_per_regime:
            raise ValueError(
                f"paired design needs n_pairs == n_regimes * rows_per_regime, got n_pairs={self.n_pairs}, "
                f"n_regimes={self.n_regimes}, rows_per_regime={self.rows_per_regime}; "
                f"set n_pairs={self.n_regimes * self.rows_per_regime}")
        if self.design == "iid" and self.n_rows < self.n_regimes + 1:
            raise ValueError(f"iid design needs n_rows >= n_regimes + 1 = {self.n_regimes + 1} (one row per "
                             f"regime at least), got n_rows={self.n_rows}")
        needed = self.d if self.targets == "single" else 2
        if self.n_regimes < needed:
            raise ValueError(f"targets={self.targets!r} needs n_regimes >= {needed} so that every node is "
                             f"intervened on in some regime, got n_regimes={self.n_regimes}")
        if self.projection in IMAGE_LAYOUTS:
            check_fits(self.d, self.projection)
            if self.D != IMAGE_SHAPE[0] * IMAGE_SHAPE[1]:
                raise ValueError(f"projection={self.projection!r} renders {IMAGE_SHAPE[0]}x{IMAGE_SHAPE[1]} images: "
                                 f"set D={IMAGE_SHAPE[0] * IMAGE_SHAPE[1]} (got D={self.D}), or use image_config()")
        if self.projection == "so" and self.D != self.d:
            raise ValueError(f"projection='so' is a rotation of the latents and needs D == d, got D={self.D}, "
                             f"d={self.d}")


#: Named SCM scales of the image simulation (:func:`image_config`'s ``scale``): the fields each sets.
#: ``"saturating"``: smaller intervention values, larger edge weights and noise, so that chains of strong
#: edges push descendants past the renderer's clipping at |z| = 8 (``chemistry``: the block's brightness
#: saturates at black or white) in 12-29 % of some node's rows (seeds 0-2, d = 5; 0.5-5 % at the default
#: scale), which a linear decoder cannot represent (docs/images.md).
IMAGE_SCALES = {
    "default": {},
    "saturating": {"value_scale": 1.0, "weight_range": (1.0, 3.0), "noise_log_range": (math.log(1.5), math.log(2.5))},
}


def image_config(layout: str = "chemistry", *, scale: str = "default", **kwargs) -> SimulationConfig:
    """SimulationConfig for images: ``projection=layout``, ``D = 2500``, pixel noise 0.05 (the seed
    paper's); ``scale`` names the SCM's scale (:data:`IMAGE_SCALES`: ``"default"``, or ``"saturating"``,
    where the renderer clips often); other fields from ``kwargs`` (e.g. ``d``, ``design``, ``value_scale``),
    which override the scale's."""
    if layout not in IMAGE_LAYOUTS:
        raise ValueError(f"image_config: layout must be one of {IMAGE_LAYOUTS}, got {layout!r}")
    if scale not in IMAGE_SCALES:
        raise ValueError(f"image_config: scale must be one of {tuple(IMAGE_SCALES)}, got {scale!r}")
    return SimulationConfig(**({"D": IMAGE_SHAPE[0] * IMAGE_SHAPE[1], "obs_noise": 0.05} | IMAGE_SCALES[scale]
                               | kwargs | {"projection": layout}))


def _draw_mask(config: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    mask = np.zeros(config.d, dtype=np.int8)
    k = 1 if config.targets == "single" else rng.integers(1, config.d)
    mask[rng.choice(config.d, size=k, replace=False)] = 1
    return mask


def _train_masks(config: SimulationConfig, rng: np.random.Generator) -> np.ndarray:
    """(n_regimes, d) masks that together intervene on every node."""
    if config.targets == "single":
        nodes = np.resize(rng.permutation(config.d), config.n_regimes)
        return np.eye(config.d, dtype=np.int8)[nodes]
    for _ in range(_MAX_RESAMPLES):
        masks = np.stack([_draw_mask(config, rng) for _ in range(config.n_regimes)])
        if masks.any(axis=0).all():
            return masks
    raise RuntimeError(f"could not draw {config.n_regimes} target masks covering all {config.d} nodes in "
                       f"{_MAX_RESAMPLES} tries; increase n_regimes")


def _test_masks(config: SimulationConfig, seen: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """(n_test_regimes, d) masks, unseen in training where a few tries find one."""
    seen = {m.tobytes() for m in seen}
    out = []
    for _ in range(config.n_test_regimes):
        for _ in range(100):
            mask = _draw_mask(config, rng)
            if mask.tobytes() not in seen:
                break
        seen.add(mask.tobytes())
        out.append(mask)
    return np.array(out, dtype=np.int8).reshape(-1, config.d)


def _draw_values(config: SimulationConfig, targets: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    shape = targets.shape
    if config.values == "gaussian":
        v = config.value_scale * rng.normal(size=shape)
    elif config.values == "uniform":
        v = rng.uniform(-config.value_scale, config.value_scale, size=shape)
    else:
        v = np.zeros(shape)
    return np.where(targets == 1, v, 0.0)


def simulate(config: SimulationConfig, seed: Seed) -> tuple[Dataset, Dataset]:
    """Simulate a training and a test dataset from one random latent SCM and projection.

    Parameters
    ----------
    config : SimulationConfig
    seed : int or numpy.random.Generator

    Returns
    -------
    train : Dataset
        Paired design: rows ``0..n_pairs-1`` observational (regime 0), rows ``n_pairs + i`` their intervened
        twins (regimes ``1..n_regimes``, ``rows_per_regime`` consecutive rows each); ``pair[i] ==
        pair[n_pairs + i] == i`` and the twins share exogenous noise. iid design: no pair ids.
        Fresh observation noise on every row.
    test : Dataset or None
        ``n_test_regimes`` new regimes (ids ``0..n_test_regimes-1``), ``rows_per_regime`` iid rows each;
        None when ``n_test_regimes`` is 0.
    Both carry the ground truth (``z``, ``weights``, ``noise_scales``, ``projection`` when linear or so)
    and ``meta = {"config": ..., "seed": ..., "split": ...}``.
    """
    if not isinstance(config, SimulationConfig):
        raise TypeError(f"config must be a SimulationConfig, got {type(config).__name__}")
    c, rng = config, as_rng(seed)
    weights = random_weights(random_dag(c.d, graph=c.graph, edges_per_node=c.edges_per_node, seed=rng),
                             weight_range=c.weight_range, seed=rng)
    sigma = random_noise_scales(c.d, log_range=c.noise_log_range, seed=rng)
    if c.projection == "linear":
        params = linear_projection(c.d, c.D, seed=rng)
    elif c.projection == "so":
        params = so_projection(c.d, seed=rng)
    elif c.projection in IMAGE_LAYOUTS:
        params = chemistry_projection(c.d)[0] if c.projection == "chemistry" else None
    else:
        params = mlp_projection(c.d, c.D, seed=rng)

    masks = _train_masks(c, rng)
    test_masks = _test_masks(c, masks, rng)

    if c.design == "paired":
        n = c.n_pairs
        eps = rng.normal(size=(n, c.d)) * sigma
        t_int = np.repeat(masks, c.rows_per_regime, axis=0)
        targets = np.concatenate([np.zeros_like(t_int), t_int])
        values = _draw_values(c, targets, rng)
        z = sample_latents(rng, weights, sigma, targets, values, tau=c.tau, eps=np.concatenate([eps, eps]))
        regime = np.concatenate([np.zeros(n, np.int64), np.repeat(np.arange(1, c.n_regimes + 1), c.rows_per_regime)])
        pair = np.tile(np.arange(n), 2)
    else:
        sizes = [len(a) for a in np.array_split(np.arange(c.n_rows), c.n_regimes + 1)]
        regime = np.repeat(np.arange(c.n_regimes + 1), sizes)
        targets = np.concatenate([np.zeros((1, c.d), np.int8), masks])[regime]
        values = _draw_values(c, targets, rng)
        z = sample_latents(rng, weights, sigma, targets, values, tau=c.tau)
        pair = None

    test_regime = np.repeat(np.arange(c.n_test_regimes), c.rows_per_regime)
    test_targets = test_masks[test_regime]
    test_values = _draw_values(c, test_targets, rng)
    test_z = sample_latents(rng, weights, sigma, test_targets, test_values, tau=c.tau)

    image = c.projection in IMAGE_LAYOUTS
    # chemistry: the linear part of the renderer (exact for |z| <= 8, plus a constant 0.5 in the blocks)
    truth = dict(weights=weights, noise_scales=sigma, projection=None if c.projection == "mlp" else params,
                 image_shape=IMAGE_SHAPE if image else None)
    meta = {"config": dataclasses.asdict(c), "seed": int(seed) if isinstance(seed, (int, np.integer)) else None}
    out = []
    for split, t, v, zz, r, p in (("train", targets, values, z, regime, pair),
                                  ("test", test_targets, test_values, test_z, test_regime, None)):
        clean = render(zz, c.projection) if image else project(zz, c.projection, params)
        x = clean + c.obs_noise * rng.normal(size=(len(zz), c.D))
        out.append(Dataset.from_arrays(x, t, v, regime=r, pair=p, z=zz, meta=meta | {"split": split}, **truth)
                   if len(zz) else None)  # no test regimes: no test set
    return out[0], out[1]


def observed_chain(d: int, n: int, seed: Seed, weight: float = 0.5) -> Dataset:
    """A small observed-variable dataset (x is z) for exactness checks: the chain 0 -> 1 -> ... -> d-1
    with edge weights ``weight`` and unit noise; every third row intervenes on one random node
    (values ``2 N(0, 1)``, intervention noise 0.1). Used by the tests and ``benchmarks/mcmc_exact.py``."""
    rng = as_rng(seed)
    W = np.diag(np.full(d - 1, weight), 1)
    T = np.zeros((n, d), np.int8)
    for i in range(0, n, 3):
        T[i, rng.integers(d)] = 1
    V = 2.0 * rng.normal(size=(n, d)) * T
    z = np.zeros((n, d))
    for j in range(d):
        z[:, j] = np.where(T[:, j] > 0, V[:, j] + 0.1 * rng.normal(size=n), z @ W[:, j] + rng.normal(size=n))
    return Dataset.from_arrays(z.astype(np.float32), T, V.astype(np.float32), z=z, weights=W)
