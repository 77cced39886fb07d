"""SIGKILL at seeded points of export, predict and tune (the harness and its
rules: test_kill.py). A file of their own so that xdist, which hands out
whole files, runs them beside the prepare and train chains."""

import json

import pytest

pytest.importorskip("psutil")

from mtlrec.pipelines import synthetic  # noqa: E402
from tests.killing import POINTS, chain, run  # noqa: E402

pytestmark = pytest.mark.reliability


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory):
    """A finished run with an export, for the export and predict chains."""
    run_dir = tmp_path_factory.mktemp("killrun") / "run"
    res = run(["mtlrec.cli.train", "--model=mmoe", f"--data={small_dataset}", f"--model_dir={run_dir}",
                "--embedding_dim=4", "--expert_units=8", "--tower_units=4", "--num_experts=2", "--epochs=1",
                "--train_steps=3", "--batch_size=256", "--verbose=0", "--notensorboard"])
    assert res.returncode == 0, res.stderr[-3000:]
    return str(run_dir)


def test_export_killed_at_seeded_points(trained, tmp_path):
    export_dir = tmp_path / "export"
    args = ["mtlrec.cli.export", f"--model_dir={trained}", f"--export_dir={export_dir}"]

    def check(final):
        for version in export_dir.iterdir() if export_dir.exists() else []:
            if version.name.isdigit():
                assert (version / "saved_model.pb").exists() and (version / "assets.extra" / "mtlrec.json").exists()
                json.loads((version / "assets.extra" / "mtlrec.json").read_text())
            else:
                assert not final, f"left behind: {version.name}"

    chain(args, check, export_dir, seed=2, low=0.3)


def test_predict_killed_at_seeded_points(trained, tmp_path):
    rows = synthetic.write_csv(str(tmp_path / "rows.csv"), 30_000, seed=6)
    out = tmp_path / "scores.csv"
    args = ["mtlrec.cli.predict", f"--export_dir={trained}/export", f"--input={rows}", f"--output={out}",
            "--keep_columns=user_id,item_id", "--chunk_rows=4096", "--overwrite"]
    expected: list[bytes] = []

    def check(final):
        if out.exists():
            data = out.read_bytes()
            if not expected:
                expected.append(data)
            assert data == expected[0], "a partial or different output"
        else:
            assert not final
        # A kill can leave the output's temporary file and its mark's (.scores.csv.mtlrec.tmp-PID).
        leftovers = [p.name for p in tmp_path.iterdir() if ".tmp-" in p.name]
        assert len(leftovers) <= 2 and (not final or not leftovers), leftovers

    chain(args, check, out, seed=3, low=0.3)


def test_tune_killed_at_seeded_points(small_dataset, tmp_path):
    # A search resumes where it stopped: each killed run adds about one trial
    # at most (kills fall within the time of a one-trial search), so the chain
    # gets POINTS + 5 trials to go through: the kills do not run out of work.
    tuner_dir = tmp_path / "tune"
    common = ["mtlrec.cli.tune", "--model=mmoe", f"--data={small_dataset}",
              "--tuner=random", "--embedding_dim=4", "--expert_units=8", "--tower_units=4",
              "--num_experts=2", "--epochs=1", "--train_steps=3", "--batch_size=256", "--verbose=0", "--notensorboard"]
    args = [*common, f"--tuner_dir={tuner_dir}", f"--max_trials={POINTS + 5}"]
    timing = [*common, f"--tuner_dir={tmp_path / 'timing'}", "--max_trials=1"]

    def check(final):
        for name in ("trials.csv", "best.flags"):
            if (tuner_dir / name).exists():
                (tuner_dir / name).read_text()
        if final:
            import pandas as pd

            table = pd.read_csv(tuner_dir / "trials.csv")
            assert len(table) == POINTS + 5 and (table.status == "COMPLETED").all(), table

    chain(args, check, tuner_dir, seed=4, low=0.3, timing_args=timing)
