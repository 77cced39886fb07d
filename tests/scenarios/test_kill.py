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
import os
import shutil
import signal
import subprocess
import sys
import time
import zipfile

import numpy as np
import pytest

from mtlrec.data import load_manifest
from mtlrec.pipelines import synthetic

pytestmark = pytest.mark.reliability
psutil = pytest.importorskip("psutil")

POINTS = int(os.environ.get("MTLREC_KILL_POINTS", 10))
TRIALS = POINTS // 2 + 3  # the killed search's --max_trials (test_tune_killed_at_seeded_points)
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def _run(args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def _kill_at(args, seconds: float) -> tuple[bool, subprocess.CompletedProcess | None]:
    """Starts the command, SIGKILLs it after `seconds`; returns (killed, result if it ended first)."""
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + seconds
    children: list = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            children = parent.children(recursive=True) or children
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        return False, subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.read())
    try:
        children = parent.children(recursive=True) or children
    except psutil.NoSuchProcess:
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running after the kill: {[p.pid for p in alive]}"
    return True, None


def _chain(args, check, output, seed: int, low: float = 0.1, timing_args=None):
    """A clean timing run (of `timing_args`, on an output of their own, or of
    `args`, whose output is then removed), POINTS killed runs into one output
    starting from nothing, then a final rerun."""
    t0 = time.monotonic()
    res = _run(timing_args or args)
    duration = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    if timing_args is None:
        check(final=True)
        if output.is_dir():
            shutil.rmtree(output)
        else:
            output.unlink()
    rng = np.random.default_rng(seed)
    kills = 0
    for at in rng.uniform(low, 1.0, POINTS) * duration:
        killed, res = _kill_at(args, at)
        kills += killed
        if not killed:
            assert res.returncode == 0, res.stderr[-3000:]
        check(final=not killed)
    res = _run(args)
    assert res.returncode == 0, res.stderr[-3000:]
    check(final=True)
    assert kills >= POINTS // 2, f"only {kills} of {POINTS} runs were killed before they ended"
    return kills


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

    _chain(args, check, out, seed=0)


@pytest.fixture(scope="module")
def trained(small_dataset, tmp_path_factory):
    """A finished run with an export, for the export and predict chains."""
    run_dir = tmp_path_factory.mktemp("killrun") / "run"
    res = _run(["mtlrec.cli.train", "--model=mmoe", f"--data={small_dataset}", f"--model_dir={run_dir}",
                "--embedding_dim=4", "--expert_units=8", "--tower_units=4", "--num_experts=2", "--epochs=1",
                "--train_steps=3", "--batch_size=256", "--verbose=0", "--notensorboard"])
    assert res.returncode == 0, res.stderr[-3000:]
    return str(run_dir)


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

    _chain(args, check, run_dir, seed=1, low=0.3, timing_args=timing)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == epochs
    # Resumed after every kill, it ends where one uninterrupted run ends.
    once = tmp_path / "once"
    res = _run([*common, f"--model_dir={once}", f"--epochs={epochs}", f"--train_steps={epochs * 6}"])
    assert res.returncode == 0, res.stderr[-3000:]
    uninterrupted = json.loads((once / "metrics.json").read_text())
    tasks = [t for t, v in uninterrupted["test"].items() if isinstance(v, dict) and "auc" in v]
    assert tasks
    for task in tasks:
        assert metrics["test"][task]["auc"] == pytest.approx(uninterrupted["test"][task]["auc"], abs=1e-6)
    assert [h["valid"]["click"]["auc"] for h in metrics["history"]] == pytest.approx(
        [h["valid"]["click"]["auc"] for h in uninterrupted["history"]], abs=1e-6)


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

    _chain(args, check, export_dir, seed=2, low=0.3)


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

    _chain(args, check, out, seed=3, low=0.3)


def test_tune_killed_at_seeded_points(small_dataset, tmp_path):
    # A search resumes where it stopped: each killed run adds about one trial
    # at most (kills fall within the time of a one-trial search), so with
    # POINTS // 2 + 3 trials the first POINTS // 2 + 1 runs or more are all
    # killed (kills >= POINTS // 2 holds) and the final rerun, which trains
    # whatever trials are left, stays short (POINTS + 5 made it the chain's
    # longest step).
    tuner_dir = tmp_path / "tune"
    common = ["mtlrec.cli.tune", "--model=mmoe", f"--data={small_dataset}",
              "--tuner=random", "--embedding_dim=4", "--expert_units=8", "--tower_units=4",
              "--num_experts=2", "--epochs=1", "--train_steps=3", "--batch_size=256", "--verbose=0", "--notensorboard"]
    args = [*common, f"--tuner_dir={tuner_dir}", f"--max_trials={TRIALS}"]
    timing = [*common, f"--tuner_dir={tmp_path / 'timing'}", "--max_trials=1"]

    def check(final):
        for name in ("trials.csv", "best.flags"):
            if (tuner_dir / name).exists():
                (tuner_dir / name).read_text()
        if final:
            import pandas as pd

            table = pd.read_csv(tuner_dir / "trials.csv")
            assert len(table) == TRIALS and (table.status == "COMPLETED").all(), table

    _chain(args, check, tuner_dir, seed=4, low=0.3, timing_args=timing)


def test_prepare_killed_while_marking_its_staging_folder(tmp_path):
    """A kill at the one moment a seeded point can miss (CI caught it once): the
    staging marker half written. The rerun must recognise the folder and finish."""
    csv_path = synthetic.write_csv(str(tmp_path / "in.csv"), 2_000, seed=4)
    out = tmp_path / "ds"
    killer = (
        "import builtins, os, signal, sys\n"
        "real = builtins.open\n"
        "def open_then_die(path, *a, **k):\n"
        "    f = real(path, *a, **k)\n"
        "    if '.mtlrec-staging' in os.path.basename(str(path)):\n"
        "        os.kill(os.getpid(), signal.SIGKILL)\n"
        "    return f\n"
        "builtins.open = open_then_die\n"
        "from mtlrec.cli import prepare\n"
        "sys.argv = ['mtlrec-prepare'] + sys.argv[1:]\n"
        "prepare.entry_point()\n"
    )
    args = [f"--input={csv_path}", f"--output={out}", "--workers=1"]
    res = subprocess.run([sys.executable, "-c", killer, *args], capture_output=True, text=True, env=ENV, timeout=120)
    assert res.returncode == -signal.SIGKILL, res.stderr[-2000:]
    assert (tmp_path / "ds.incomplete").is_dir()
    res = _run(["mtlrec.cli.prepare", *args])
    assert res.returncode == 0, res.stderr[-2000:]
    assert load_manifest(str(out)).rows("train") > 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ds", "in.csv"]


def test_a_folder_holding_only_a_half_written_marker_is_ours(tmp_path):
    from mtlrec import outputs

    folder = tmp_path / "ds.incomplete"
    folder.mkdir()
    (folder / ".mtlrec-staging.tmp-4242").write_bytes(b"mtlrec-pre")
    assert outputs.claim(str(folder), "staging", "output") == outputs.OURS
    (folder / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an mtlrec-prepare staging directory"):
        outputs.claim(str(folder), "staging", "output")
