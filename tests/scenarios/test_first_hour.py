"""The first hour: --help, quiet output, provenance, predict's columns, warm-up records."""

import json
import os
import re
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from tests.helpers import run_cli

COMMANDS = {
    "prepare": ["--input", "--output", "--schema", "--splits", "--on_bad_rows", "--overwrite"],
    "train": ["--model", "--model_dir", "--data", "--tasks", "--epochs", "--overwrite", "--export"],
    "export": ["--model_dir", "--export_dir", "--fusion_weights", "--version"],
    "predict": ["--export_dir", "--input", "--output", "--keep_columns", "--overwrite"],
    "tune": ["--tuner_dir", "--max_trials", "--search_space", "--objective", "--model", "--learning_rate"],
    "report": ["--out"],
    "bench": ["--models", "--seeds", "--out", "--experiments_dir", "--data", "--epochs"],
}
# A TensorFlow C++ log line: "2026-11-24 03:35:49.134703: E external/local_xla/...".
TF_CPP_LINE = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ")
# TensorFlow's own Python chatter, logged through absl like mtlrec's lines.
TF_PY_CHATTER = ("Sharding callback duration", "Assets written to", "Writing fingerprint", "unsupported characters")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_help_lists_the_commands_own_flags_and_exits_0(command):
    res = run_cli(f"mtlrec.cli.{command}", "--help")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith(f"USAGE: mtlrec-{command} [flags]")
    assert f"Flags of mtlrec-{command}:" in res.stdout
    for flag in COMMANDS[command]:
        assert f"  {flag}" in res.stdout or f"  --[no]{flag[2:]}" in res.stdout, flag
    assert "--flagfile=FILE" in res.stdout and "--helpfull" in res.stdout


def test_train_help_lists_every_model_and_the_task_language():
    from mtlrec.cli.train import MODEL_NAMES
    from mtlrec.models import MODELS

    assert sorted(MODEL_NAMES) == sorted(MODELS)
    text = run_cli("mtlrec.cli.train", "-h").stdout
    flat = " ".join(text.split())
    assert "Model: " + ", ".join(MODEL_NAMES) + "." in flat
    assert "name[=label][|given][*weight]" in text and "MTLREC_CACHE" in text


@pytest.fixture(scope="module")
def quiet_run(small_dataset, tmp_path_factory):
    """A default-verbosity training run with stdout/stderr redirected to files."""
    run_dir = tmp_path_factory.mktemp("quiet") / "run"
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    res = run_cli("mtlrec.cli.train", "--model=mmoe", f"--data={small_dataset}", f"--model_dir={run_dir}",
                  "--embedding_dim=4", "--expert_units=8", "--tower_units=4", "--epochs=2", "--train_steps=6",
                  "--batch_size=256", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    return run_dir, res


def test_default_run_has_no_tensorflow_log_lines_and_no_progress_bar_codes(quiet_run):
    _, res = quiet_run
    noise = [line for line in res.stderr.splitlines()
             if TF_CPP_LINE.search(line) or any(c in line for c in TF_PY_CHATTER)]
    assert not noise, noise[:5]
    assert "\x1b[" not in res.stdout and "\x1b[" not in res.stderr  # redirected: no bar control codes
    assert "Epoch 1/2" in res.stdout and "Epoch 2/2" in res.stdout
    for stage in ("data: ", "epoch 1 valid", "evaluating the best epoch", "saving", "exporting a SavedModel"):
        assert stage in res.stderr, stage
    # mtlrec's own line format: `HH:MM:SS message`, not absl's `I1203 17:00:21.891188 1397... train.py:146] `.
    from mtlrec.cli.common import LOG_LINE

    logged = [line for line in res.stderr.splitlines() if line.strip()]
    assert not [line for line in logged if re.match(r"[IWEF]\d{4} \d\d:", line)], logged[:5]
    assert sum(bool(LOG_LINE.match(line)) for line in logged) >= 5, logged[:10]
    assert "Saved artifact" not in res.stdout + res.stderr  # Keras' export block, naming a temporary path


def test_verbosity_brings_tensorflow_logs_back(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}
    args = [f"--export_dir={tmp_path}/none", f"--input={tmp_path}/in.csv", f"--output={tmp_path}/out.csv"]
    quiet = run_cli("mtlrec.cli.predict", *args, env=env)
    loud = run_cli("mtlrec.cli.predict", "-v", "1", *args, env=env)
    for res in (quiet, loud):
        assert res.returncode == 1 and res.stderr.strip().splitlines()[-1].startswith("error: ")
    assert not [line for line in quiet.stderr.splitlines() if TF_CPP_LINE.search(line)]
    assert [line for line in loud.stderr.splitlines() if TF_CPP_LINE.search(line)]


def test_metrics_json_carries_provenance(quiet_run):
    run_dir, _ = quiet_run
    p = json.loads((run_dir / "metrics.json").read_text())["provenance"]
    import keras
    import tensorflow as tf

    assert p["tensorflow_version"] == tf.__version__ and p["keras_version"] == keras.__version__
    assert p["mtlrec_version"] == "0.1.0"
    assert p["started_at"] <= p["finished_at"] and re.match(r"\d{4}-\d\d-\d\dT", p["started_at"])
    assert any(a.endswith("train.py") or "mtlrec" in a for a in p["command_line"][:1])
    assert "--epochs=2" in p["command_line"] and p["flags"]["epochs"] == 2 and p["flags"]["model"] == "mmoe"
    assert p["git_commit"] is None or re.fullmatch(r"[0-9a-f]{40}(-dirty)?", p["git_commit"])
    from mtlrec.provenance import host

    assert p["host"] == host()  # the CPU model, its vector extensions, the usable CPUs, oneDNN


def test_tensorboard_counts_epochs_from_1(quiet_run):
    import tensorflow as tf

    run_dir, _ = quiet_run
    steps = set()
    for root, _, files in os.walk(run_dir / "tensorboard"):
        for name in files:
            for event in tf.compat.v1.train.summary_iterator(os.path.join(root, name)):
                if any(v.tag.startswith("epoch_") for v in event.summary.value):
                    steps.add(event.step)
    assert steps == {1, 2}


def test_predict_columns_kept_then_tasks_in_order_then_others(quiet_run, tmp_path):
    from mtlrec.pipelines import synthetic

    run_dir, _ = quiet_run
    rows = synthetic.write_csv(str(tmp_path / "rows.csv"), 30, seed=3)
    res = run_cli("mtlrec.cli.predict", f"--export_dir={run_dir}/export", f"--input={rows}",
                  f"--output={tmp_path / 'out.csv'}", "--keep_columns=item_id,user_id")
    assert res.returncode == 0, res.stderr[-2000:]
    assert list(pd.read_csv(tmp_path / "out.csv").columns) == ["item_id", "user_id", "click", "like", "score"]
    # The run's folder instead of its export/: the error names the folder inside it.
    res = run_cli("mtlrec.cli.predict", f"--export_dir={run_dir}", f"--input={rows}",
                  f"--output={tmp_path / 'out2.csv'}")
    assert res.returncode == 1 and res.stderr.strip().splitlines()[-1] == (
        f"error: {run_dir}: a training run's folder, not an export; its SavedModels are in {run_dir}/export "
        f"(pass --export_dir={run_dir}/export)")
    assert not (tmp_path / "out2.csv").exists()


def test_prepare_csv_writes_rows_that_predict_scores(quiet_run, tmp_path):
    run_dir, _ = quiet_run
    rows = tmp_path / "new_rows.csv"
    res = run_cli("mtlrec.cli.prepare", f"--csv={rows}", "--synthetic_rows=200")
    assert res.returncode == 0, res.stderr[-2000:]
    table = pd.read_csv(rows)
    assert len(table) == 200 and {"user_id", "item_id", "hist_10", "video_category", "click"} <= set(table.columns)
    again = run_cli("mtlrec.cli.prepare", f"--csv={rows}")
    assert again.returncode == 1 and "exists; pass --overwrite" in again.stderr and len(pd.read_csv(rows)) == 200
    res = run_cli("mtlrec.cli.predict", f"--export_dir={run_dir}/export", f"--input={rows}",
                  f"--output={tmp_path / 'scores.csv'}", "--keep_columns=user_id")
    assert res.returncode == 0, res.stderr[-2000:]
    scores = pd.read_csv(tmp_path / "scores.csv")
    assert len(scores) == 200 and scores["click"].between(0, 1).all()
    np.testing.assert_array_equal(scores["user_id"], table["user_id"])


def _hand_decode(record: bytes) -> tuple[str, list[str], dict[str, bytes]]:
    """The PredictionLog wire format read field by field, as the export once wrote it by hand."""

    def fields(buf):
        i = 0
        while i < len(buf):
            key, i = _varint(buf, i)
            length, i = _varint(buf, i)
            yield key >> 3, buf[i : i + length]
            i += length

    request = list(fields(dict(fields(dict(fields(record))[6]))[1]))
    spec = dict(fields(dict(request)[1]))
    inputs = {dict(fields(v))[1].decode(): dict(fields(v))[2] for k, v in request if k == 2}
    return spec[3].decode(), list(inputs), inputs


def _varint(buf, i):
    shift = result = 0
    while True:
        b = buf[i]
        result |= (b & 0x7F) << shift
        i += 1
        if not b & 0x80:
            return result, i
        shift += 7


def test_warmup_records_from_the_serving_api_decode_as_the_hand_written_ones(tmp_path):
    import tensorflow as tf

    from mtlrec.export import read_warmup_signatures, write_warmup

    specs = {"uid": tf.TensorSpec([None], tf.int64), "city": tf.TensorSpec([None], tf.string),
             "price": tf.TensorSpec([None], tf.float32)}
    rows = {"uid": np.array([3, 4]), "city": np.array(["rome", "oslo"]), "price": np.array([1.5, 2.0], np.float32)}
    path = str(tmp_path / "assets.extra" / "tf_serving_warmup_requests")
    write_warmup(path, rows, specs, num=3)
    from tensorflow.core.framework import tensor_pb2

    records = [r.numpy() for r in tf.data.TFRecordDataset(path)]
    assert len(records) == 3
    assert [(sig, sorted(names)) for sig, names in read_warmup_signatures(path)] == \
        [("serving_default", ["city", "price", "uid"])] * 3
    for i, record in enumerate(records):
        signature, names, tensors = _hand_decode(record)
        assert signature == "serving_default" and sorted(names) == ["city", "price", "uid"]
        decoded = {k: tf.make_ndarray(tensor_pb2.TensorProto.FromString(v)) for k, v in tensors.items()}
        assert decoded["uid"].tolist() == [[3, 4][i % 2]]
        assert decoded["city"].tolist() == [[b"rome", b"oslo"][i % 2]]
        assert decoded["price"].tolist() == [[1.5, 2.0][i % 2]]


def test_readme_python_snippet_runs_twice(tmp_path):
    readme = open(os.path.join(os.path.dirname(__file__), "..", "..", "README.md")).read()
    code = readme.split("## Python API", 1)[1].split("```python", 1)[1].split("```", 1)[0]
    small = code.replace("synthetic_rows=200_000", "synthetic_rows=6_000").replace("epochs=2", "epochs=1, train_steps=2")
    assert small != code
    (tmp_path / "snippet.py").write_text(small)
    env = {k: v for k, v in os.environ.items() if k != "TF_CPP_MIN_LOG_LEVEL"}  # as a user's shell has it
    env["PYTHONPATH"] = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
    for _ in range(2):
        res = subprocess.run([sys.executable, "snippet.py"], cwd=tmp_path, capture_output=True, text=True, env=env,
                             timeout=600)
        assert res.returncode == 0, res.stderr[-3000:]
        assert 0.0 <= float(res.stdout.strip().splitlines()[-1]) <= 1.0
        # Quiet: none of TensorFlow's C++ lines, from the main process or prepare's workers.
        assert not [line for line in res.stderr.splitlines() if TF_CPP_LINE.match(line)], res.stderr[-3000:]


def test_tune_names_trials_by_id_in_one_folder_each(small_dataset, tmp_path, capsys):
    from mtlrec import tuning
    from mtlrec.config import ModelConfig, parse_tasks
    from mtlrec.training import TrainConfig

    base = TrainConfig(model="mmoe", model_dir=str(tmp_path), data=small_dataset, tasks=parse_tasks("click"),
                       model_config=ModelConfig(tasks=("click",), embedding_dim=4, num_experts=2, tower_units=(4,),
                                                expert_units=(8,)),
                       epochs=1, train_steps=2, batch_size=512, verbose=0, tensorboard=False)
    space = {"learning_rate": {"type": "float", "min": 1e-3, "max": 1e-2}}
    tuner_dir = str(tmp_path / "search")
    tuning.search(tuning.MtlrecHyperModel(base, space, "val_auc_mean"), tuner_dir, "random", max_trials=2, seed=0)
    out = capsys.readouterr().out
    assert "Search: running trial 0 (in trial_0/run)" in out and "Trial 1 Complete" in out and "#" not in out
    assert sorted(p for p in os.listdir(tuner_dir) if not p.endswith((".json", ".csv", ".md", ".flags"))) == \
        ["trial_0", "trial_1"]
    for trial in ("trial_0", "trial_1"):
        assert json.loads(open(os.path.join(tuner_dir, trial, "run", "run.json")).read())["status"] == "finished"


def test_prepare_progress_is_log_lines_when_not_on_a_terminal(monkeypatch):
    from mtlrec.pipelines import prepare as prepare_module

    lines = []
    monkeypatch.setattr(prepare_module.logging, "info", lambda fmt, *args: lines.append(fmt % args))
    progress = prepare_module._Progress(None, every=0.0)  # pytest's stderr is not a terminal
    progress.update(1000)
    progress.update(500)
    progress.close()
    assert len(lines) == 2 and lines[0].startswith("prepared 1000 rows (") and lines[1].startswith("prepared 1500 rows (")
    assert not prepare_module._Progress(False, every=0.0).lines


REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _cli_in(cwd, module, *args):
    return subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True, cwd=cwd,
                          env=dict(os.environ, PYTHONPATH=REPO), timeout=120)


@pytest.mark.parametrize("args, line", [
    (["mtlrec.cli.prepare"], "error: --output is required (see --help), or --csv=FILE to write generated rows as a CSV"),
    (["mtlrec.cli.train", "--tsks=click"], "error: unknown flag --tsks (did you mean --tasks?) (see --help)"),
    (["mtlrec.cli.train", "--epochs=-1"], "error: --epochs=-1: -1 is not a positive integer"),
    (["mtlrec.cli.predict", "--export_dir=x", "--input=y"], "error: --output is required (see --help)"),
])
def test_flag_errors_are_one_error_line_not_absls(args, line):
    res = run_cli(*args)
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [line]  # no "FATAL Flags parsing error", no "Pass --helpshort"


def test_flagfiles_work_from_any_folder(tmp_path):
    from mtlrec.cli.common import expand_flagfiles

    flat = expand_flagfiles([f"--flagfile={REPO}/experiments/mmoe.flags", "--epochs=2"])
    with open(os.path.join(REPO, "experiments", "base.flags")) as f:
        base = [line.strip() for line in f if line.strip() and not line.startswith("#")]
    assert flat[:len(base)] == base and "--model=mmoe" in flat and flat[-1] == "--epochs=2"
    # From another folder the nested experiments/base.flags is found from the repository root: the run gets as
    # far as the next mistake (a bad --model given after the flagfile), not "Unable to open flagfile".
    res = _cli_in(tmp_path, "mtlrec.cli.train", f"--flagfile={REPO}/experiments/mmoe.flags", "--model=mmeo")
    assert res.stderr.strip().splitlines() == [
        "error: --model=mmeo: unknown (did you mean 'mmoe'?); expected one of shared_bottom, omoe, mmoe, cgc, ple, "
        "esmm, escm2_ips, escm2_dr, aitm, stem, aple, aple_lowrank, ple_ame, ple_residual, mmoe_dlen, ple_dlen"]
    (tmp_path / "a.flags").write_text("--flagfile=gone/b.flags\n")
    res = _cli_in(tmp_path, "mtlrec.cli.train", "--flagfile=a.flags")
    assert res.returncode == 1 and res.stderr.strip() == (
        "error: --flagfile=gone/b.flags: no such file (named in a.flags; looked in the current directory and the "
        "folders above it)")
    (tmp_path / "loop.flags").write_text("# a comment\n--flagfile=loop.flags\n")
    with pytest.raises(ValueError, match="includes itself"):
        expand_flagfiles([f"--flagfile={tmp_path / 'loop.flags'}"])
    (tmp_path / "bad.flags").write_text("--epochs=2\nepochs=3\n")
    with pytest.raises(ValueError, match=r"bad.flags: 'epochs=3' is not a flag"):
        expand_flagfiles([f"--flagfile={tmp_path / 'bad.flags'}"])
    # What follows "--" is another command's (mtlrec-launch's workers) and passes through as it is.
    assert expand_flagfiles(["--workers=2", "--", "--flagfile=x.flags"]) == ["--workers=2", "--", "--flagfile=x.flags"]
