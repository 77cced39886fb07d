"""README's first-hour block, run as it stands (.ci/readme_walk.py), and what it leaves."""

import csv
import json
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
WALK = os.path.join(REPO, ".ci", "readme_walk.py")


def _walk_module():
    import importlib.util

    spec = importlib.util.spec_from_file_location("readme_walk", WALK)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_block_is_found_and_read_as_a_user_would_paste_it():
    steps = _walk_module().commands(os.path.join(REPO, "README.md"))
    assert steps[0].startswith("git clone") and steps[-1] == "python -m pytest"
    assert "mtlrec-train --flagfile=experiments/mmoe.flags" in steps
    assert not [s for s in steps if "#" in s], steps  # comments stripped
    assert [s.split()[0] for s in steps if s.startswith("mtlrec-")] == [
        "mtlrec-train", "mtlrec-export", "mtlrec-prepare", "mtlrec-predict", "mtlrec-train", "mtlrec-report",
        "mtlrec-tune", "mtlrec-bench"]


@pytest.mark.reliability
def test_readme_first_hour_runs_end_to_end(tmp_path):
    folder = tmp_path / "walk"
    res = subprocess.run([sys.executable, WALK, "--keep", str(folder)], capture_output=True, text=True,
                         timeout=1200)
    assert res.returncode == 0, res.stdout[-3000:] + res.stderr[-3000:]
    assert res.stdout.count("skipped (done by CI)") == 4
    steps = [line for line in res.stdout.splitlines() if line.strip().split(" ")[0].replace(".", "").isdigit()]
    assert len(steps) == 9, res.stdout  # 8 commands and the total
    mmoe = json.loads((folder / "runs" / "mmoe" / "metrics.json").read_text())
    assert mmoe["split"]["kind"] == "ordered" and 0.6 < mmoe["test"]["click"]["auc"] < 0.9
    assert len(os.listdir(folder / "runs" / "mmoe" / "export")) == 2  # train's version, then export's
    with open(folder / "scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1000 and list(rows[0])[:2] == ["user_id", "item_id"] and "score" in rows[0]
    assert all(0.0 < float(r["click"]) < 1.0 for r in rows)
    report = (folder / "reports" / "mmoe_vs_ple" / "report.md").read_text()
    assert "| mmoe | 1 |" in report and "| ple | 1 |" in report
    trials = (folder / "runs" / "tune_mmoe" / "trials.csv").read_text().strip().splitlines()
    assert len(trials) == 1 + 3
    bench = (folder / "bench" / "first" / "report.md").read_text()
    assert "| mmoe | 2 |" in bench and "| ple | 2 |" in bench
