"""An independent data generator for the identification benchmark (numpy only, not ``latentscm.data``).

Written apart from :mod:`latentscm.data.simulate` (which it does not import), with other laws, so that a
benchmark on its data checks the method rather than the package's own simulator:

* graph: a random node order, each pair ``(order[a], order[b])``, ``a < b``, an edge with probability
  ``min(1, 2 / (d - 1))`` (about one edge per node);
* weights ``|w| ~ U(0.4, 1.5)`` with a random sign (the package: ``U(0.5, 2)``);
* exogenous noise standard deviations ``~ U(0.5, 1.5)`` (the package: ``exp(U(0, log 2))``);
* a Gaussian projection ``x = z M + N(0, obs_noise^2)``, ``M`` entries ``2 N(0, 1)``, ``D = 60`` by default;
* hard interventions ``z_j = v_j + N(0, tau^2)``, ``tau = 0.1``; latents by ancestral sampling along the
  node order (a loop over nodes, not a triangular solve).

Designs
-------
``"iid"``      one observational regime (0) plus ``n_regimes`` interventional ones (1..n_regimes);
               ``n_rows`` independent rows (default ``(n_regimes + 1) * rows_per_regime``) split evenly.
``"paired"``   ``n = n_regimes * rows_per_regime`` observational rows (regime 0), then their intervened
               twins (``rows_per_regime`` consecutive rows per regime); twin ``i`` and ``n + i`` share their
               exogenous noise and ``pair`` id ``i`` (fresh intervention and observation noise).

Targets: ``"multi"`` (each regime a random set of 1..d-1 nodes; redrawn until every node is targeted
somewhere) or ``"single"`` (one node per regime, cycling through a random permutation of the nodes).
Values: ``"gaussian"`` (``2 N(0, 1)`` per row and target), ``"zero"`` (knockouts: ``z_j = 0 + N(0, tau^2)``),
``"hidden"`` (drawn as ``"gaussian"`` but written as NaN in ``values`` where targeted: unknown values).

The result is written in the package's external ``.npz`` format (arrays ``x``, ``targets``, ``values``,
``regime``, ``pair`` (paired only), ``z``, ``weights``, ``noise_scales``, ``projection``, ``meta``) with
plain ``numpy.savez`` and read back with :meth:`latentscm.data.Dataset.load`, so it goes through the
package's validation.

Usage::

    python benchmarks/independent_generator.py --out f.npz --d 5 --values zero --design iid --seed 0
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
from pathlib import Path

import numpy as np

DESIGNS = ("iid", "paired")
TARGETS = ("multi", "single")
VALUES = ("gaussian", "zero", "hidden")
WEIGHT_RANGE = (0.4, 1.5)
NOISE_RANGE = (0.5, 1.5)
PROJECTION_SCALE = 2.0
VALUE_SCALE = 2.0
_SALT = 90417  # the generator's streams differ from any other script's default_rng(seed)


def _dag_weights(rng, d, weight_range=WEIGHT_RANGE):
    order = rng.permutation(d)
    p = min(1.0, 2.0 / (d - 1)) if d > 1 else 0.0
    W = np.zeros((d, d))
    for a in range(d):
        for b in range(a + 1, d):
            if rng.random() < p:
                W[order[a], order[b]] = rng.choice((-1.0, 1.0)) * rng.uniform(*weight_range)
    return W, order


def _masks(rng, d, n_regimes, targets):
    if targets == "single":
        if n_regimes < d:
            raise ValueError(f"targets='single' needs n_regimes >= d = {d} to target every node, got {n_regimes}")
        return np.eye(d, dtype=np.int8)[np.resize(rng.permutation(d), n_regimes)]
    if d < 2 or n_regimes < 2:
        raise ValueError(f"targets='multi' needs d >= 2 and n_regimes >= 2, got d={d}, n_regimes={n_regimes}")
    for _ in range(10_000):
        masks = np.zeros((n_regimes, d), np.int8)
        for r in range(n_regimes):
            masks[r, rng.choice(d, size=rng.integers(1, d), replace=False)] = 1
        if masks.max(axis=0).min() == 1:
            return masks
    raise RuntimeError(f"could not cover all {d} nodes with {n_regimes} multi-target regimes")


def _ancestral(rng, W, order, sigma, T, V, tau, eps=None):
    """Latents row by row of the masks T (ancestral sampling along ``order``)."""
    n, d = T.shape
    if eps is None:
        eps = rng.normal(size=(n, d)) * sigma
    z = np.zeros((n, d))
    for j in order:
        observational = z @ W[:, j] + eps[:, j]
        knocked = V[:, j] + tau * rng.normal(size=n)
        z[:, j] = np.where(T[:, j] == 1, knocked, observational)
    return z


def generate_arrays(d, D=60, design="iid", targets="multi", values="zero", n_regimes=20, rows_per_regime=100,
                    seed=0, *, n_rows=None, tau=0.1, obs_noise=0.1, weight_range=WEIGHT_RANGE):
    """The arrays of one dataset (dict of numpy arrays, ``meta`` a dict); see the module docstring.

    ``weight_range``: the law of ``|w|`` (default ``(0.4, 1.5)``). Note that the package's structure
    metrics call an edge present when ``|W| > 0.3`` (``latentscm.metrics.DEFAULT_THRESHOLD``), so a true
    edge drawn below 0.3 (about 4% of edges under the default law) counts as missed even when its weight
    is recovered exactly.
    """
    if design not in DESIGNS or targets not in TARGETS or values not in VALUES:
        raise ValueError(f"design in {DESIGNS}, targets in {TARGETS}, values in {VALUES}; "
                         f"got {design!r}, {targets!r}, {values!r}")
    rng = np.random.default_rng([_SALT, int(seed)])
    W, order = _dag_weights(rng, d, weight_range)
    sigma = rng.uniform(*NOISE_RANGE, size=d)
    M = PROJECTION_SCALE * rng.normal(size=(d, D))
    masks = _masks(rng, d, n_regimes, targets)

    if design == "paired":
        n = n_regimes * rows_per_regime
        T_int = np.repeat(masks, rows_per_regime, axis=0)
        T = np.concatenate([np.zeros_like(T_int), T_int])
        regime = np.concatenate([np.zeros(n, np.int64), np.repeat(np.arange(1, n_regimes + 1), rows_per_regime)])
        pair = np.tile(np.arange(n, dtype=np.int64), 2)
        eps = rng.normal(size=(n, d)) * sigma
        eps = np.concatenate([eps, eps])  # the twins share their exogenous noise
    else:
        n_rows = (n_regimes + 1) * rows_per_regime if n_rows is None else int(n_rows)
        if n_rows < n_regimes + 1:
            raise ValueError(f"iid design needs n_rows >= n_regimes + 1 = {n_regimes + 1}, got {n_rows}")
        sizes = [len(c) for c in np.array_split(np.arange(n_rows), n_regimes + 1)]
        regime = np.repeat(np.arange(n_regimes + 1, dtype=np.int64), sizes)
        T = np.concatenate([np.zeros((1, d), np.int8), masks])[regime]
        pair, eps = None, None

    drawn = VALUE_SCALE * rng.normal(size=T.shape) if values in ("gaussian", "hidden") else np.zeros(T.shape)
    V = np.where(T == 1, drawn, 0.0)
    z = _ancestral(rng, W, order, sigma, T, V, tau, eps)
    x = z @ M + obs_noise * rng.normal(size=(len(z), D))
    written = np.where(T == 1, np.nan, 0.0) if values == "hidden" else V
    meta = {"generator": "benchmarks/independent_generator.py", "d": d, "D": D, "design": design,
            "targets": targets, "values": values, "n_regimes": n_regimes, "rows_per_regime": rows_per_regime,
            "n_rows": int(len(x)), "seed": int(seed), "tau": tau, "obs_noise": obs_noise,
            "weight_range": [float(w) for w in weight_range], "noise_range": list(NOISE_RANGE),
            "projection_scale": PROJECTION_SCALE, "value_scale": VALUE_SCALE}
    arrays = {"x": x.astype(np.float32), "targets": T.astype(np.int8), "values": written.astype(np.float32),
              "regime": regime, "z": z, "weights": W, "noise_scales": sigma, "projection": M}
    if pair is not None:
        arrays["pair"] = pair
    return arrays, meta


def write_npz(path, arrays, meta):
    """Write the external ``.npz`` format with plain numpy (temporary file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            np.savez(fh, meta=np.array(json.dumps(meta)), **arrays)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def generate(d, D=60, design="iid", targets="multi", values="zero", n_regimes=20, rows_per_regime=100, seed=0,
             *, n_rows=None, tau=0.1, obs_noise=0.1, weight_range=WEIGHT_RANGE, path=None):
    """Generate one dataset, write it as an external ``.npz`` (``path``, or a temporary file) and return
    it read back by :meth:`latentscm.data.Dataset.load` (validated)."""
    from latentscm.data import Dataset

    arrays, meta = generate_arrays(d, D, design, targets, values, n_regimes, rows_per_regime, seed,
                                   n_rows=n_rows, tau=tau, obs_noise=obs_noise, weight_range=weight_range)
    if path is not None:
        return Dataset.load(write_npz(path, arrays, meta))
    with tempfile.TemporaryDirectory() as folder:
        return Dataset.load(write_npz(Path(folder) / "data.npz", arrays, meta))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", required=True, help="output .npz file")
    p.add_argument("--d", type=int, default=5)
    p.add_argument("--D", type=int, default=60)
    p.add_argument("--design", choices=DESIGNS, default="iid")
    p.add_argument("--targets", choices=TARGETS, default="multi")
    p.add_argument("--values", choices=VALUES, default="zero")
    p.add_argument("--n-regimes", type=int, default=20)
    p.add_argument("--rows-per-regime", type=int, default=100)
    p.add_argument("--n-rows", type=int, default=None, help="iid design: total rows (default (n_regimes + 1) x rows)")
    p.add_argument("--tau", type=float, default=0.1)
    p.add_argument("--weight-range", type=float, nargs=2, default=WEIGHT_RANGE, metavar=("LO", "HI"),
                   help="law of |w|: U(LO, HI) (default 0.4 1.5)")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    ds = generate(args.d, args.D, args.design, args.targets, args.values, args.n_regimes, args.rows_per_regime,
                  args.seed, n_rows=args.n_rows, tau=args.tau, weight_range=tuple(args.weight_range), path=args.out)
    print(f"{args.out}: N = {ds.N}, d = {ds.d}, D = {ds.D}, {int((ds.weights != 0).sum())} edges, "
          f"{len(np.unique(ds.regime))} regimes, {ds.num_unknown_values} unknown values"
          + (", paired" if ds.pair is not None else ""))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
