"""Benchmark of the ``collapsed`` method (issue: core acceptance).

Every fit runs as its own ``latentscm fit --data FILE.npz --json OUT`` process, so the reported wall
time includes start-up, JIT compilation, sampling and writing; ``seconds`` is the fit itself.

Cases
-----
default      the embedded default (paired, d=5, D=100, ER-1, linear projection, 2000 pairs in 20
             multi-target regimes, Gaussian values of scale 2), seeds 0-4, order learned.
external     data from an independent numpy generator below (not latentscm.data): weights +-U(0.3, 1.5),
             noise scales U(0.5, 1.5), a Gaussian projection matrix N(0, 2^2), iid design (4000 rows,
             1/5 observational, 16 regimes of 1..d-1 targets), values N(0, 1.5^2), loaded through the
             external .npz format. Seeds 0-4.
reference    the seed paper's own generator's files in ../shared/data (when present).
random-init  ablation: the default setting with ``order_init = "random"`` for both restarts (no
             data-driven order proposal): what gradient-based order learning alone reaches.
paired       the default data with ``use_pairs = true`` (one exogenous noise vector per pair, both rows'
             latents), learning rate 0.002; compare with ``default`` (rows treated as independent).
hidden       the default data with the intervention values removed (``unknown_values = "latent"``:
             each unknown value integrated out under N(0, value_scale^2)). Seeds 0-2.

Usage: ``python benchmarks/collapsed.py [--quick] [--seeds 0 1 2] [--cases default,reference]
[--set KEY=VALUE ... [--alternate]] [--name NAME]`` writes ``benchmarks/results/NAME.{csv,md}``. ``--set``
overrides settings of every fit; with ``--alternate`` every fit runs twice back to back, with the defaults
and with the overrides (case ``CASE+set``; ``--set-first``: in the other order): timings of the two compared
under the same load (the first of two back-to-back fits measured up to 20 % slower: run both orders).
``--baseline CHECKOUT`` runs every fit also under another checkout of the package (e.g. a ``git worktree`` of
an older commit, set up with its ``scripts/setup.sh``), as case ``CASE@baseline``, back to back with this
checkout's (the baseline first on even seeds): a change's cost measured in one run on one machine.
"""

from __future__ import annotations

import argparse
import json
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[1]
WORK = ROOT / "benchmarks" / "_work"
RESULTS = ROOT / "benchmarks" / "results"
SHARED = ROOT.parent / "shared" / "data"


def external_dataset(seed, d=5, D=100, n_rows=4000, n_regimes=16):
    """An independent generator (plain numpy), external format. Returns (train dict, test dict)."""
    rng = np.random.default_rng(1000 + seed)
    order = rng.permutation(d)
    W = np.zeros((d, d))
    for a in range(d):
        for b in range(a + 1, d):
            if rng.random() < 2.0 / (d - 1):
                W[order[a], order[b]] = rng.choice([-1, 1]) * rng.uniform(0.3, 1.5)
    sigma = rng.uniform(0.5, 1.5, d)
    M = rng.normal(0, 2.0, (d, D))

    def rows(n, masks):
        T = masks[rng.integers(len(masks), size=n)]
        V = rng.normal(0, 1.5, (n, d)) * T
        z = np.zeros((n, d))
        for j in order:  # ancestral sampling, independent of latentscm
            z[:, j] = np.where(T[:, j] > 0, V[:, j] + 0.1 * rng.normal(size=n),
                               z @ W[:, j] + sigma[j] * rng.normal(size=n))
        x = z @ M + 0.1 * rng.normal(size=(n, D))
        return {"x": x.astype(np.float32), "targets": T.astype(np.int8), "values": V.astype(np.float32),
                "z": z, "weights": W, "noise_scales": sigma}

    def random_masks(k):
        out = []
        while len(out) < k:
            m = np.zeros(d, np.int8)
            m[rng.choice(d, rng.integers(1, d), replace=False)] = 1
            out.append(m)
        return np.array(out)

    train_masks = random_masks(n_regimes)
    while train_masks.sum(0).min() == 0:
        train_masks = random_masks(n_regimes)
    obs = rows(n_rows // 5, np.zeros((1, d), np.int8))
    inter = rows(n_rows - n_rows // 5, train_masks)
    train = {k: (np.concatenate([obs[k], inter[k]]) if np.ndim(obs[k]) == 2 and k not in ("weights",) else obs[k])
             for k in obs}
    test = rows(500, random_masks(5))
    return train, test


OVERRIDES: dict = {}  # --set
ALTERNATE = False  # --alternate
SET_FIRST = False  # --set-first
BASELINE: Path | None = None  # --baseline: another checkout (with its own .venv) run beside this one


def run_fit(name, data, test, config, seed):
    """One fit (``run_one``) with the ``--set`` overrides, or, with ``--alternate``, two: without them first.
    With ``--baseline`` each of them also runs under the baseline checkout (case ``CASE@baseline``), the two
    checkouts' fits back to back, in the other order on odd seeds."""
    case, _, tail = name.rpartition("-seed")
    settings = [("", config)] if not OVERRIDES else [("", {**config, **OVERRIDES})] if not ALTERNATE else \
        [("", config), ("+set", {**config, **OVERRIDES})][::-1 if SET_FIRST else 1]
    runs = []
    for label, cfg in settings:
        pair = [(label, ROOT, cfg)] + ([(f"@baseline{label}", BASELINE, cfg)] if BASELINE else [])
        runs += pair[::-1] if seed % 2 else pair
    out = [run_one(f"{case}{label}-seed{tail}", data, test, cfg, seed, root) for label, root, cfg in runs]
    return out[0] if len(out) == 1 else out


def run_one(name, data, test, config, seed, root=ROOT):
    python = sys.executable if root == ROOT else str(root / ".venv" / "bin" / "python")
    cmd = [python, "-m", "latentscm", "fit", "--method", "collapsed", "--data", str(data), "--seed", str(seed),
           "--json", str(WORK / f"{name}.json"), "--out", str(WORK / f"run-{name}")]
    if test is not None:
        cmd += ["--test", str(test)]
    if config:
        cfg = WORK / f"{name}.toml"
        cfg.write_text("[fit]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in config.items()))
        cmd += ["--config", str(cfg)]
    shutil.rmtree(WORK / f"run-{name}", ignore_errors=True)  # a fresh run folder: no old checkpoint to resume
    start, cpu = time.perf_counter(), _child_cpu()
    subprocess.run(cmd, check=True, cwd=root, stdout=subprocess.DEVNULL)
    wall, cpu = time.perf_counter() - start, _child_cpu() - cpu
    out = json.loads((WORK / f"{name}.json").read_text())
    return {"case": name.rsplit("-seed", 1)[0], "seed": seed, "wall_s": round(wall, 1), "cpu_s": round(cpu, 1), **out}


def _child_cpu():
    """CPU seconds (user + system, all threads) of the finished child processes: a fit's cost that does not
    depend on how busy the machine was, unlike its wall time."""
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one seed per case, no ablation")
    parser.add_argument("--cases", default="default,external,reference,random-init,paired,hidden",
                        help="comma-separated cases to run")
    parser.add_argument("--name", default="collapsed", help="results file stem (benchmarks/results/NAME.*)")
    parser.add_argument("--seeds", type=int, nargs="*", help="seeds (default 0-4, --quick 0)")
    parser.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE", help="settings of every fit (JSON values)")
    parser.add_argument("--alternate", action="store_true", help="run every fit with and without --set")
    parser.add_argument("--set-first", action="store_true", help="with --alternate: the --set fit first")
    parser.add_argument("--baseline", type=Path, help="another checkout (set up: its .venv) to run every fit with too")
    args = parser.parse_args(argv)
    global ALTERNATE, SET_FIRST, BASELINE
    ALTERNATE, SET_FIRST = args.alternate, args.set_first
    if args.baseline is not None:
        BASELINE = args.baseline.resolve()
        if not (BASELINE / ".venv" / "bin" / "python").exists():
            parser.error(f"--baseline {BASELINE}: no .venv/bin/python there; run its scripts/setup.sh first")
    for item in args.set:
        key, _, value = item.partition("=")
        try:
            OVERRIDES[key] = json.loads(value)
        except json.JSONDecodeError:
            OVERRIDES[key] = value
    cases = set(args.cases.split(","))
    seeds = args.seeds if args.seeds is not None else [0] if args.quick else [0, 1, 2, 3, 4]
    WORK.mkdir(parents=True, exist_ok=True)
    RESULTS.mkdir(parents=True, exist_ok=True)
    from latentscm.data import Dataset, SimulationConfig, simulate

    records = []
    for seed in seeds:
        train, test = simulate(SimulationConfig(), seed)
        train.save(WORK / f"default-{seed}.npz")
        test.save(WORK / f"default-{seed}-test.npz")
        if "default" not in cases:
            continue
        records.append(run_fit(f"default-seed{seed}", WORK / f"default-{seed}.npz",
                               WORK / f"default-{seed}-test.npz", {}, seed))
        print(records[-1], flush=True)
    for seed in seeds if "external" in cases else []:
        tr, te = external_dataset(seed)
        for part, arrays in (("", tr), ("-test", te)):
            Dataset.from_arrays(arrays["x"], arrays["targets"], arrays["values"], z=arrays["z"],
                                weights=arrays["weights"], noise_scales=arrays["noise_scales"]).save(
                WORK / f"external-{seed}{part}.npz")
        records.append(run_fit(f"external-seed{seed}", WORK / f"external-{seed}.npz",
                               WORK / f"external-{seed}-test.npz", {}, seed))
        print(records[-1], flush=True)
    for path in sorted(SHARED.glob("*.npz")) if "reference" in cases else []:
        records.append(run_fit(f"reference-{path.stem}-seed0", path, None, {}, 0))
        print(records[-1], flush=True)
    if not args.quick:
        extra = [("random-init", seeds, {"order_init": "random"}),
                 ("paired", seeds[:3], {"use_pairs": True}),  # logit_scale 8 by default with pairs
                 ("hidden", seeds[:3], {"unknown_values": "latent"})]
        for name, case_seeds, config in [e for e in extra if e[0] in cases]:
            for seed in case_seeds:
                data = WORK / f"default-{seed}.npz"
                if name == "hidden":
                    full = Dataset.load(data)
                    data = WORK / f"hidden-{seed}.npz"
                    Dataset.from_arrays(full.x, full.targets, None, pair=full.pair, z=full.z,
                                        weights=full.weights, noise_scales=full.noise_scales).save(data)
                records.append(run_fit(f"{name}-seed{seed}", data, WORK / f"default-{seed}-test.npz", config, seed))
                print(records[-1], flush=True)
    records = [r for rec in records for r in (rec if isinstance(rec, list) else [rec])]
    df = pd.DataFrame(records)
    cols = ["case", "seed", "d", "D", "n", "refits", "e_shd", "e_shd_double", "auroc", "auprc", "mcc", "edge_rmse",
            "heldout_nll", "seconds", "wall_s", "cpu_s"]
    df = df[[c for c in cols if c in df]]
    df.to_csv(RESULTS / f"{args.name}.csv", index=False)
    summary = df.drop(columns=["seed"]).groupby("case", sort=False).mean(numeric_only=True)
    summary.insert(0, "fits", df.groupby("case", sort=False).size())
    summary["max_wall_s"] = df.groupby("case", sort=False)["wall_s"].max()
    with open(RESULTS / f"{args.name}.md", "w") as fh:
        fh.write(f"# {args.name}: results\n\nMachine: 2-core CPU, no GPU. Means over seeds; one process per fit "
                 "(wall time includes start-up and compilation).\n\n")
        if OVERRIDES:
            fh.write(f"Settings {'of the `+set` cases' if ALTERNATE else 'of every fit'}: `{json.dumps(OVERRIDES)}`.\n\n")
        fh.write(summary.round(3).to_markdown() + "\n\n## Per fit\n\n" + df.round(3).to_markdown(index=False) + "\n")
    print(summary.round(3).to_string())


if __name__ == "__main__":
    main()
