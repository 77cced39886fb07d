"""SIGKILL at seeded points of prepare, train, export, predict and tune.

Each command is first run once to completion to time it; then it is run
again and again into the same output, each run killed (SIGKILL, the parent
process only) at a seeded moment of that duration. After every kill the
output must be absent or complete and valid, no process of the run may be
left, and the next run (a rerun over the killed one's leftovers) must
either be killed in turn or finish with status 0. A last rerun must finish
and, for training, give a history with every epoch exactly once.

Points: `MTLREC_KILL_POINTS` per command (default 10), seed 0. Training
runs with dropout on (every flagfile's setting), and the run resumed after
all its kills ends with the test AUC of one uninterrupted run (to 1e-6);
prepare and predict, resumed over their killed runs, write the bytes of an
uninterrupted run.
"""

import json
import zipfile

import pytest

pytest.importorskip("psutil")

from mtlrec.data import load_manifest  # noqa: E402
from mtlrec.pipelines import synthetic  # noqa: E402
from tests.killing import chain, run  # noqa: E402

pytestmark = pytest.mark.reliability


def test_prepare_killed_at_seeded_points(tmp_path):
    csv_path = synthetic.write_csv(str(tmp_path / "in.csv"), 300_000, seed=4)
    out = tmp_path / "ds"
    args = ["mtlrec.cli.prepare", f"--input={csv_path}", f"--output={out}", "--workers=2", "--chunk_bytes=262144",
            "--overwrite"]

    first: list = []

    def check(final):
        if (out / "manifest.json").exists():
            m = load_manifest(str(out))
            m.check_files(checksums=True)
            assert sum(m.rows(s) for s in ("train", "valid", "test")) == 300_000
            shards = {s: (info["files"], info["file_crc32c"]) for s, info in m.splits.items()}
            first.append(first[0] if first else shards)
            assert shards == first[0], "a prepare after kills wrote other shards than the uninterrupted one"
        else:
            assert not final
        leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
        assert len(leftovers) <= 1 and (not final or not leftovers), leftovers

    chain(args, check, out, seed=0)


def test_train_killed_at_seeded_points_resumes_to_a_complete_history(small_dataset, tmp_path):
    # A rerun resumes where the killed run stopped, so the chain needs more
    # work than the kills can get through: kills fall within the time of a
    # 2-epoch run (import, data, build, 2 epochs), the chain trains 50.
    run_dir = tmp_path / "run"
    epochs = 50
    common = ["mtlrec.cli.train", "--model=mmoe", f"--data={small_dataset}", "--embedding_dim=4",
              "--expert_units=8", "--tower_units=4", "--num_experts=2", "--batch_size=256", "--verbose=0",
              f"--patience={epochs}", "--noexport", "--dropout=0.1"]  # dropout on, as in every flagfile
    args = [*common, f"--model_dir={run_dir}", f"--epochs={epochs}", f"--train_steps={epochs * 6}"]
    timing = [*common, f"--model_dir={tmp_path / 'timing'}", "--epochs=2", "--train_steps=12"]

    def check(final):
        for name in ("run.json", "state.json", "metrics.json"):
            if (run_dir / name).exists():
                json.loads((run_dir / name).read_text())  # whole, never half-written
        if (run_dir / "model.keras").exists():
            with zipfile.ZipFile(run_dir / "model.keras") as z:
                assert z.testzip() is None
        if final:
            assert not list(run_dir.glob("*.tmp-*"))
            metrics = json.loads((run_dir / "metrics.json").read_text())
            assert json.loads((run_dir / "run.json").read_text())["status"] == "finished"
            assert [h["epoch"] for h in metrics["history"]] == list(range(1, metrics["epochs_run"] + 1))

    chain(args, check, run_dir, seed=1, low=0.3, timing_args=timing)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == epochs
    # Resumed after every kill, it ends where one uninterrupted run ends.
    once = tmp_path / "once"
    res = run([*common, f"--model_dir={once}", f"--epochs={epochs}", f"--train_steps={epochs * 6}"])
    assert res.returncode == 0, res.stderr[-3000:]
    uninterrupted = json.loads((once / "metrics.json").read_text())
    tasks = [t for t, v in uninterrupted["test"].items() if isinstance(v, dict) and "auc" in v]
    assert tasks
    for task in tasks:
        assert metrics["test"][task]["auc"] == pytest.approx(uninterrupted["test"][task]["auc"], abs=1e-6)
    assert [h["valid"]["click"]["auc"] for h in metrics["history"]] == pytest.approx(
        [h["valid"]["click"]["auc"] for h in uninterrupted["history"]], abs=1e-6)
