"""The grid benchmark harness (benchmarks/grid.py): tables, plot, resumability; quick mode end to end (slow)."""

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]


def _grid_module():
    spec = importlib.util.spec_from_file_location("grid_benchmark", ROOT / "benchmarks" / "grid.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


def test_grid_harness_tables_plot_resume_and_failures(tmp_path, monkeypatch):
    """The harness without real fits (they are the slow test below): every cell fitted once, failures
    recorded and retried on the next run, finished cells skipped, tables and plot written."""
    grid = _grid_module()
    calls, first_run = [], [True]

    def fake_fit(data, out_dir, *, method, seed, test, config, name):
        calls.append(name)
        assert Path(data).is_file() and Path(test).is_file()
        if "single" in name and first_run[0]:
            raise RuntimeError("latentscm fit failed for it (exit 1): boom")
        d = int(name.split("-")[0][1:])
        dim = int(name.split("-D")[1].split("-")[0])
        return {"method": method, "seed": seed, "n": 40, "d": d, "D": dim, "seconds": 0.1 * d, "e_shd": 0.5 * d,
                "e_shd_double": d, "auroc": 1.0, "auprc": 1.0, "mcc": 0.99, "edge_rmse": 0.1, "heldout_nll": 1.0,
                "peak_rss_mb": 100.0 * d, "wall_s": 0.2 * d}

    monkeypatch.setattr(grid, "run_fit_process", fake_fit)
    cells = grid.grid_cells([2, 3], [1], ["linear"], ["multi", "single"], ["gaussian"], ["collapsed"], [0], D=6,
                            n_regimes=3, rows_per_regime=10)
    assert len(cells) == 4 and all(c.config == {} for c in cells)  # d <= 10: the method's defaults
    out = tmp_path / "res" / "grid"
    table = grid.run_grid(cells, work=tmp_path / "work", out=out, progress=False)
    assert len(calls) == 4 and len(table) == 4
    failed = table[table["error"].fillna("") != ""]
    assert sorted(failed["d"]) == [2, 3] and (failed["targets"] == "single").all()
    assert "## Failed fits" in out.with_suffix(".md").read_text()
    assert out.with_suffix(".png").read_bytes()[:4] == b"\x89PNG"
    # second run: finished cells skipped, failed ones retried (now succeeding)
    first_run[0] = False
    table = grid.run_grid(cells, work=tmp_path / "work", out=out, progress=False)
    assert len(calls) == 6 and sorted(calls[4:]) == sorted(c.name for c in cells if c.targets == "single")
    assert table["error"].fillna("").eq("").all() and len(table) == 4
    csv = pd.read_csv(out.with_suffix(".csv"))
    assert list(csv.sort_values(["targets", "d"])["e_shd"]) == [1.0, 1.5, 1.0, 1.5]
    assert json.loads(next((tmp_path / "work" / "done").glob("d2-*multi*.json")).read_text())["peak_rss_mb"] == 200
    # fresh on a subset refits that subset and keeps the other cells' records
    table = grid.run_grid(cells[:1], work=tmp_path / "work", out=out, progress=False, fresh=True)
    assert calls[6:] == [cells[0].name] and len(table) == 1
    assert all((tmp_path / "work" / "done" / f"{c.name}.json").exists() for c in cells)
    calls[6:] = []
    assert not out.with_name("grid-D.png").exists()  # D did not vary
    # a D sweep: one more plot, against D; rows grouped per D in the summary
    sweep = grid.grid_cells([2], [1], ["linear"], ["multi"], ["gaussian"], ["collapsed"], [0], D=[6, 9],
                            n_regimes=3, rows_per_regime=10)
    assert [c.D for c in sweep] == [6, 9]
    table = grid.run_grid(cells + sweep, work=tmp_path / "work", out=out, progress=False)
    assert len(table) == 5 and sorted(table["D"]) == [6, 6, 6, 6, 9]
    assert out.with_name("grid-D.png").read_bytes()[:4] == b"\x89PNG"
    # the slices plan: the base problem at every d plus one change at a time, no duplicates
    slices = grid.slice_cells([0])
    assert len(slices) == len({c.name for c in slices}) == 5 + 3 * 3 + 2 + 2 + 4 + 5
    hidden = [c for c in slices if c.values == "hidden"]
    assert [c.d for c in hidden] == [5, 10] and all(c.config["unknown_values"] == "latent" for c in hidden)
    assert {c.method for c in slices if c.projection == "mlp"} == {"amortized"}
    # every seed is its own simulated problem; methods share a seed's data
    a, b = grid.grid_cells([3], [1], ["linear"], ["multi"], ["gaussian"], ["collapsed", "amortized"], [0, 1])[:2], \
        grid.grid_cells([3], [1], ["linear"], ["multi"], ["gaussian"], ["collapsed", "amortized"], [0, 1])[2:]
    assert a[0].data_name != a[1].data_name and a[0].data_name == b[0].data_name
    # the size rule applies beyond d = 10
    big = grid.grid_cells([20], [1], ["linear"], ["multi"], ["gaussian"], ["collapsed"], [0])
    assert big[0].config["num_restarts"] == 1 and big[0].config["logit_scale"] > 4


def _run(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "grid.py"), "--quick", "--work", str(tmp_path / "work"),
           "--out", str(tmp_path / "results" / "grid")]
    (tmp_path / "results").mkdir(exist_ok=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)


@pytest.mark.slow
def test_grid_quick_mode_writes_tables_and_plot_and_resumes(tmp_path):
    """``grid.py --quick`` end to end: two real fits (d = 3, 4), one process each (~30 s on an idle
    2-core machine; minutes on a loaded one), then a second run that refits nothing."""
    _run(tmp_path)
    table = pd.read_csv(tmp_path / "results" / "grid.csv")
    assert sorted(table["d"]) == [3, 4]
    assert (table["method"] == "collapsed").all() and table["error"].isna().all()
    for column in ("e_shd", "auroc", "mcc", "seconds", "wall_s", "peak_rss_mb"):
        assert table[column].notna().all(), column
    assert (table["peak_rss_mb"] > 0).all() and (table["wall_s"] >= table["seconds"]).all()
    assert (table["auroc"] > 0.9).all()
    text = (tmp_path / "results" / "grid.md").read_text()
    assert "## Per fit" in text and "e_shd" in text
    assert (tmp_path / "results" / "grid.png").read_bytes()[:4] == b"\x89PNG"
    done = sorted((tmp_path / "work" / "done").glob("*.json"))
    assert len(done) == 2 and json.loads(done[0].read_text())["d"] == 3
    stamps = [p.stat().st_mtime_ns for p in done]
    second = _run(tmp_path)
    assert second.stderr.count("skipped") == 2 and "fitting" not in second.stderr
    assert [p.stat().st_mtime_ns for p in done] == stamps
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results" / "grid.csv"), table)
