"""The grid benchmark harness (benchmarks/grid.py): quick mode end to end, resumability."""

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd

ROOT = Path(__file__).resolve().parents[1]


def _run(tmp_path):
    cmd = [sys.executable, str(ROOT / "benchmarks" / "grid.py"), "--quick", "--work", str(tmp_path / "work"),
           "--out", str(tmp_path / "results" / "grid")]
    (tmp_path / "results").mkdir(exist_ok=True)
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=True)


def test_grid_quick_mode_writes_tables_and_plot_and_resumes(tmp_path):
    _run(tmp_path)
    table = pd.read_csv(tmp_path / "results" / "grid.csv")
    assert sorted(table["d"]) == [3, 4]
    assert (table["method"] == "collapsed").all() and table["error"].isna().all()
    for column in ("e_shd", "auroc", "mcc", "seconds", "wall_s", "peak_rss_mb"):
        assert table[column].notna().all(), column
    assert (table["peak_rss_mb"] > 0).all() and (table["wall_s"] >= table["seconds"]).all()
    text = (tmp_path / "results" / "grid.md").read_text()
    assert "## Per fit" in text and "e_shd" in text
    assert (tmp_path / "results" / "grid.png").read_bytes()[:4] == b"\x89PNG"
    done = sorted((tmp_path / "work" / "done").glob("*.json"))
    assert len(done) == 2 and json.loads(done[0].read_text())["d"] == 3
    stamps = [p.stat().st_mtime_ns for p in done]
    # resumable: a second run refits nothing and rewrites the same table
    second = _run(tmp_path)
    assert second.stderr.count("skipped") == 2 and "fitting" not in second.stderr
    assert [p.stat().st_mtime_ns for p in done] == stamps
    pd.testing.assert_frame_equal(pd.read_csv(tmp_path / "results" / "grid.csv"), table)
