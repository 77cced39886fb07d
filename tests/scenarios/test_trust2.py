"""The second trust round (issue 26): each case that was wrong, by its number there."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from mtlrec.config import ModelConfig, parse_tasks, tenrec_schema
from mtlrec.pipelines.prepare import PrepareConfig, prepare
from mtlrec.training import TrainConfig, train
from mtlrec.training.balancing import Balancing
from tests.helpers import run_cli

pytestmark = pytest.mark.reliability


def _config(data, model_dir, **kw):
    defaults = dict(epochs=3, train_steps=18, batch_size=256, verbose=0, tensorboard=False, patience=3,
                    tasks=parse_tasks("click,like"),
                    model_config=ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,),
                                             tower_units=(4,), num_experts=2, dropout=0.1))
    return TrainConfig(model="mmoe", model_dir=str(model_dir), data=data, **{**defaults, **kw})


def test_1_overwrite_removes_only_what_mtlrec_train_wrote(small_dataset, tmp_path):
    run = tmp_path / "run"
    train(_config(small_dataset, run, epochs=1, train_steps=3))
    (run / "NOTES.md").write_text("my notes")
    (run / "export" / "1").mkdir(parents=True)  # a version a server may be loading
    (run / "export" / "1" / "saved_model.pb").write_bytes(b"x")
    metrics = train(_config(small_dataset, run, epochs=1, train_steps=3, seed=5, overwrite=True))
    assert metrics["config"]["seed"] == 5
    assert (run / "NOTES.md").read_text() == "my notes"
    assert (run / "export" / "1" / "saved_model.pb").read_bytes() == b"x"
    assert json.loads((run / "run.json").read_text())["identity"]["seed"] == 5


def test_4_an_early_stopped_run_trains_on_with_more_patience(small_dataset, tmp_path):
    run = tmp_path / "run"
    train(_config(small_dataset, run, epochs=2, train_steps=12))
    state = json.loads((run / "state.json").read_text())
    state.update(stopped_early=True, bad_epochs=1)  # as a run with --patience=1 stops after a worse epoch 2
    (run / "state.json").write_text(json.dumps(state))
    still = train(_config(small_dataset, run, epochs=3, train_steps=18, patience=1))
    assert still["epochs_run"] == 2 and still["stopped_early"]  # --patience=1 is spent: nothing to train
    more = train(_config(small_dataset, run, epochs=3, train_steps=18, patience=3))
    assert more["epochs_run"] == 3 and [h["epoch"] for h in more["history"]] == [1, 2, 3]
    assert not more["stopped_early"]


def test_5_a_killed_run_with_dropout_resumes_to_the_uninterrupted_result(small_dataset, tmp_path):
    # Separate processes, as a real kill: SIGKILL once epoch 2's checkpoint is written, then the same command.
    def args(name):
        return ["--model=mmoe", f"--data={small_dataset}", f"--model_dir={tmp_path / name}", "--tasks=click,like",
                "--epochs=3", "--train_steps=450", "--batch_size=256", "--dropout=0.1", "--patience=3",
                "--embedding_dim=4", "--expert_units=8", "--tower_units=4", "--num_experts=2", "--notensorboard",
                "--noexport", "--verbose=0"]

    whole = run_cli("mtlrec.cli.train", *args("whole"))
    assert whole.returncode == 0, whole.stderr[-3000:]
    proc = subprocess.Popen([sys.executable, "-m", "mtlrec.cli.train", *args("resumed")],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state, deadline = tmp_path / "resumed" / "state.json", time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text() or "{}").get("epoch") == 2:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    res = run_cli("mtlrec.cli.train", *args("resumed"))
    assert res.returncode == 0 and "after epoch 2" in res.stderr, res.stderr[-3000:]
    a, b = (json.loads((tmp_path / n / "metrics.json").read_text()) for n in ("whole", "resumed"))
    assert [h["epoch"] for h in b["history"]] == [1, 2, 3]
    for t in ("click", "like"):
        assert b["test"][t]["auc"] == pytest.approx(a["test"][t]["auc"], abs=1e-6)
        assert b["history"][2]["train"]["loss"] == pytest.approx(a["history"][2]["train"]["loss"], abs=1e-6)


def test_6_prepare_never_renames_a_dataset_over_the_working_directory(tmp_path, monkeypatch):
    here = tmp_path / "empty"
    here.mkdir()
    monkeypatch.chdir(here)
    with pytest.raises(FileExistsError, match=r"--output=\. is the working directory"):
        prepare(PrepareConfig(output=".", schema=tenrec_schema(), synthetic_rows=2000))
    assert os.path.samefile(os.getcwd(), here) and os.listdir(here) == []
    # A dataset of ours holding the working directory, replaced with --overwrite: refused too.
    dataset = tmp_path / "ds"
    (dataset / "train").mkdir(parents=True)
    (dataset / "manifest.json").write_text("{}")
    monkeypatch.chdir(dataset / "train")
    with pytest.raises(FileExistsError, match=r"--output=\.\. is the working directory or holds it"):
        prepare(PrepareConfig(output="..", schema=tenrec_schema(), synthetic_rows=2000, overwrite=True))
    assert (dataset / "manifest.json").read_text() == "{}"


def test_9_ple_schedule_without_a_decay_refuses():
    with pytest.raises(ValueError, match="--loss_balancing=ple_schedule needs --loss_weight_decay"):
        Balancing("ple_schedule")
    assert Balancing("ple_schedule", {"like": 0.998}).decay == {"like": 0.998}


def test_4_a_finished_run_rerun_as_it_was_exports_nothing_more(small_dataset, tmp_path):
    args = ["--model=mmoe", f"--data={small_dataset}", f"--model_dir={tmp_path / 'run'}", "--tasks=click,like",
            "--train_steps=3", "--batch_size=256", "--embedding_dim=4", "--expert_units=8", "--tower_units=4",
            "--num_experts=2", "--notensorboard", "--verbose=0"]
    for _ in range(2):
        res = run_cli("mtlrec.cli.train", *args)
        assert res.returncode == 0, res.stderr[-3000:]
    assert len(os.listdir(tmp_path / "run" / "export")) == 1
    assert "trained nothing, exported nothing more" in res.stderr
