"""Trust: no input destroys a file, no run hands back a silently wrong model.

One test (or more) per case found when trying about 100 bad inputs and
faults as a new user would; each failed on the code before the fix. The
kill and fuzz suites are in test_kill.py and test_fuzz_prepare.py.
"""

import dataclasses
import fcntl
import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest

from mtlrec import tuning
from mtlrec.config import TENREC_HEADER, ModelConfig, parse_tasks, tenrec_schema
from mtlrec.data import load_manifest
from mtlrec.export import export_model_dir
from mtlrec.pipelines import synthetic
from mtlrec.pipelines.parse import BadInputError
from mtlrec.pipelines.prepare import PrepareConfig, prepare
from mtlrec.training import TrainConfig, TrainingDiverged, preflight, train
from tests.helpers import run_cli

pytestmark = pytest.mark.reliability

HEADER = ",".join(TENREC_HEADER)
GOOD = "1,5,1,0,1,0,3,40,1,2,5,6,0,0,0,0,0,0,0,0"
GOOD2 = "2,6,0,0,0,0,3,0,2,3,7,0,0,0,0,0,0,0,0,0"
# Not writable even by root: sysfs refuses new entries.
READ_ONLY = "/sys/mtlrec-read-only"


def _config(data, model_dir, **kw):
    defaults = dict(epochs=1, train_steps=3, batch_size=256, verbose=0, tensorboard=False,
                    tasks=parse_tasks("click,like"),
                    model_config=ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,),
                                             tower_units=(4,), num_experts=2))
    return TrainConfig(model="mmoe", model_dir=str(model_dir), data=data, **{**defaults, **kw})


def _one_line_error(res, *parts):
    assert res.returncode == 1, res.stderr[-2000:]
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: "), res.stderr[-2000:]
    assert "Traceback" not in res.stderr, res.stderr[-3000:]
    for part in parts:
        assert part in last, last
    return last


def _train_cli(data, model_dir, *extra, env=None):
    return run_cli("mtlrec.cli.train", "--model=mmoe", f"--data={data}", f"--model_dir={model_dir}",
                   "--embedding_dim=4", "--expert_units=8", "--tower_units=4", "--num_experts=2",
                   "--epochs=1", "--train_steps=3", "--batch_size=256", "--verbose=0", "--notensorboard",
                   "--noexport", *extra, env=env)


@pytest.fixture(scope="module")
def finished_run(small_dataset, tmp_path_factory):
    """A finished tiny MMoE run and its export (versions under run/export)."""
    run_dir = tmp_path_factory.mktemp("rel") / "run"
    train(_config(small_dataset, run_dir))
    export_model_dir(str(run_dir), version=1)
    return str(run_dir)


# 1. prepare --output never deletes what it did not make.

def test_1_prepare_refuses_a_folder_holding_its_input(tmp_path):
    folder = tmp_path / "dir"
    folder.mkdir()
    data = folder / "data.csv"
    data.write_text(f"{HEADER}\n{GOOD}\n{GOOD2}\n")
    for extra in ([], ["--overwrite"]):
        res = run_cli("mtlrec.cli.prepare", f"--input={data}", f"--output={folder}", *extra)
        _one_line_error(res, "would overwrite the input", "data.csv")
    assert data.read_text() == f"{HEADER}\n{GOOD}\n{GOOD2}\n"
    assert sorted(os.listdir(tmp_path)) == ["dir"]


def test_1_prepare_refuses_foreign_folder_and_file_but_replaces_its_own(tmp_path):
    data = tmp_path / "in.csv"
    data.write_text(f"{HEADER}\n{GOOD}\n{GOOD2}\n")
    other = tmp_path / "photos"
    other.mkdir()
    (other / "cat.jpg").write_bytes(b"\xff\xd8")
    with pytest.raises(FileExistsError, match=r"photos already holds files that are not an mtlrec-prepare dataset \(cat\.jpg\)"):
        prepare(PrepareConfig(output=str(other), schema=tenrec_schema(), inputs=(str(data),), overwrite=True))
    assert os.listdir(other) == ["cat.jpg"]
    notes = tmp_path / "notes.txt"
    notes.write_text("mine")
    with pytest.raises(FileExistsError, match="is an existing file"):
        prepare(PrepareConfig(output=str(notes), schema=tenrec_schema(), inputs=(str(data),), overwrite=True))
    assert notes.read_text() == "mine" and not (tmp_path / "notes.txt.old").exists()
    # An empty folder is free; a dataset is replaced only with overwrite.
    (tmp_path / "empty").mkdir()
    prepare(PrepareConfig(output=str(tmp_path / "empty"), schema=tenrec_schema(), inputs=(str(data),)))
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        prepare(PrepareConfig(output=str(tmp_path / "empty"), schema=tenrec_schema(), inputs=(str(data),)))
    m = prepare(PrepareConfig(output=str(tmp_path / "empty"), schema=tenrec_schema(), inputs=(str(data),),
                              overwrite=True))
    assert m["rows_read"] == 2 and os.path.exists(tmp_path / "empty" / "manifest.json")
    assert sorted(os.listdir(tmp_path)) == ["empty", "in.csv", "notes.txt", "photos"]


# 2. predict never writes over its input (or any file it did not write).

def test_2_predict_refuses_its_input_and_foreign_files(finished_run, small_dataset, tmp_path):
    rows = tmp_path / "rows.csv"
    synthetic.write_csv(str(rows), 50, seed=5)
    before = rows.read_bytes()
    export = os.path.join(finished_run, "export")
    res = run_cli("mtlrec.cli.predict", f"--export_dir={export}", f"--input={rows}", f"--output={rows}", "--overwrite")
    _one_line_error(res, "would overwrite the input", "rows.csv")
    assert rows.read_bytes() == before
    from mtlrec.predict import predict_csv

    notes = tmp_path / "notes.csv"
    notes.write_text("a,b\n1,2\n")
    with pytest.raises(FileExistsError, match="not an mtlrec-predict output"):
        predict_csv(export, str(rows), str(notes), overwrite=True)
    assert notes.read_text() == "a,b\n1,2\n"
    out = tmp_path / "scores.csv"
    assert predict_csv(export, str(rows), str(out)) == 50
    with pytest.raises(FileExistsError, match="pass --overwrite"):
        predict_csv(export, str(rows), str(out))
    assert predict_csv(export, str(rows), str(out), ["user_id"], overwrite=True) == 50
    assert list(pd.read_csv(out).columns) == ["user_id", "click", "like", "score"]


# 3. A model_dir holds one run: same settings resume, others stop; one writer.

@pytest.mark.parametrize("change", [{"learning_rate": 0.001}, {"loss_weights": {"like": 3.0}},
                                    {"tasks": "like,click"}])
def test_3_rerun_with_other_settings_stops_before_doing_anything(finished_run, small_dataset, change):
    before = {n: os.path.getmtime(os.path.join(finished_run, n)) for n in ("metrics.json", "model.keras", "run.json")}
    kw = dict(change)
    if "tasks" in kw:
        names = kw.pop("tasks")
        base = _config(small_dataset, finished_run).model_config
        kw.update(tasks=parse_tasks(names), model_config=dataclasses.replace(base, tasks=tuple(names.split(","))))
    with pytest.raises(ValueError, match=r"holds a run with other settings \((learning_rate|loss_weights\.like|tasks): .* recorded, .* now\)") as e:
        train(_config(small_dataset, finished_run, **kw))
    assert "--overwrite" in str(e.value)
    after = {n: os.path.getmtime(os.path.join(finished_run, n)) for n in before}
    assert after == before


def test_3_rerun_cli_one_line_and_overwrite_starts_over(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    assert _train_cli(small_dataset, run_dir).returncode == 0
    # A different width would fail restoring the checkpoint: it is a different run.
    res = _train_cli(small_dataset, run_dir, "--embedding_dim=8")
    _one_line_error(res, "holds a run with other settings", "model_config.embedding_dim: 4 recorded, 8 now")
    res = _train_cli(small_dataset, run_dir, "--embedding_dim=8", "--overwrite")
    assert res.returncode == 0, res.stderr[-2000:]
    record = json.loads((run_dir / "run.json").read_text())
    assert record["identity"]["model_config"]["embedding_dim"] == 8 and record["status"] == "finished"
    res = _train_cli(small_dataset, tmp_path, "--overwrite")  # holds "run/", not a run itself
    _one_line_error(res, "already holds files that are not an mtlrec-train run")


def test_3_concurrent_run_into_one_model_dir_is_refused(finished_run, small_dataset):
    fd = os.open(os.path.join(finished_run, ".lock"), os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        os.ftruncate(fd, 0)
        os.pwrite(fd, b"4242", 0)
        with pytest.raises(FileExistsError, match=r"is in use by another mtlrec run \(pid 4242\)"):
            train(_config(small_dataset, finished_run))
    finally:
        os.close(fd)
    train(_config(small_dataset, finished_run))  # free again: same settings resume


def test_3_export_refuses_a_run_interrupted_after_its_checkpoints(small_dataset, tmp_path, monkeypatch):
    from mtlrec.training.run import Run

    run_dir = tmp_path / "run"
    train(_config(small_dataset, run_dir))
    stale = (run_dir / "model.keras").read_bytes()

    def killed(self):
        raise KeyboardInterrupt  # the process dies after epoch 2's checkpoint, before model.keras

    monkeypatch.setattr(Run, "save_model", killed)
    with pytest.raises(KeyboardInterrupt):
        train(_config(small_dataset, run_dir, epochs=2, train_steps=6, patience=3))
    assert (run_dir / "model.keras").read_bytes() == stale
    assert json.loads((run_dir / "state.json").read_text())["epoch"] == 2
    with pytest.raises(ValueError, match=r"the run is not finished \(status 'training'\)"):
        export_model_dir(str(run_dir))
    monkeypatch.undo()
    m = train(_config(small_dataset, run_dir, epochs=2, train_steps=6, patience=3))  # finishes
    assert m["epochs_run"] == 2
    assert os.path.isdir(export_model_dir(str(run_dir)))


# 4. Non-finite settings, values and losses.

def test_4_non_finite_flags_are_refused(small_dataset, tmp_path):
    res = _train_cli(small_dataset, tmp_path / "run", "--learning_rate=nan")
    _one_line_error(res, "--learning_rate=nan: expected finite numbers")
    assert not (tmp_path / "run").exists()
    for flag in ("--splits=nan,0.5,0.5", "--neg_ratio=inf"):
        res = run_cli("mtlrec.cli.prepare", "--synthetic_rows=100", f"--output={tmp_path / 'ds'}", flag)
        _one_line_error(res, f"{flag}: expected finite numbers")
    with pytest.raises(ValueError, match="splits must be 3 non-negative fractions"):
        PrepareConfig(output="x", schema=tenrec_schema(), synthetic_rows=10, splits=(float("nan"), 0.5, 0.5))
    with pytest.raises(ValueError, match="learning_rate must be a finite number"):
        _config(small_dataset, tmp_path, learning_rate=float("nan"))
    with pytest.raises(ValueError, match=r"loss_weights\[like\] must be a finite number"):
        _config(small_dataset, tmp_path, loss_weights={"like": float("inf")})


def test_4_numbers_must_be_finite_in_float32(tmp_path):
    schema = {"features": [{"name": "uid", "kind": "id"}, {"name": "price", "kind": "numeric"}],
              "labels": [{"name": "click"}]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    (tmp_path / "in.csv").write_text("uid,price,click\n1,2.5,0\n2,1e39,1\n3,1.0,0\n")
    res = run_cli("mtlrec.cli.prepare", f"--input={tmp_path / 'in.csv'}", f"--output={tmp_path / 'ds'}",
                  f"--schema={tmp_path / 'schema.json'}")
    _one_line_error(res, "in.csv:3: column 'price': received '1e39', expected a finite number (stored as float32")
    res = run_cli("mtlrec.cli.prepare", f"--input={tmp_path / 'in.csv'}", f"--output={tmp_path / 'ds'}",
                  f"--schema={tmp_path / 'schema.json'}", "--on_bad_rows=skip")
    assert res.returncode == 0, res.stderr[-2000:]
    stats = json.loads((tmp_path / "ds" / "manifest.json").read_text())["numeric_stats"]["price"]
    assert np.isfinite(stats["mean"]) and np.isfinite(stats["std"])


def test_4_diverging_loss_stops_keeps_last_checkpoint_and_exports_nothing(small_dataset, tmp_path):
    run_dir = tmp_path / "run"
    with pytest.raises(TrainingDiverged, match=r"training diverged: .*(step \d+ \(epoch 1\)|after epoch 1)"):
        train(_config(small_dataset, run_dir, learning_rate=1e30, train_steps=30))
    assert json.loads((run_dir / "run.json").read_text())["status"] == "diverged"
    for name in ("model.keras", "metrics.json", "export", "best.weights.h5"):
        assert not (run_dir / name).exists(), name
    with pytest.raises(FileNotFoundError):
        export_model_dir(str(run_dir))


def test_4_non_finite_loss_names_step_and_task():
    from mtlrec.training import diverged_message

    text = diverged_message(float("nan"), {"click": 0.3, "like": float("nan")}, step=15, epoch=2)
    assert "loss became nan at step 15 (epoch 2), from task(s) like; kept the checkpoint of epoch 1" in text
    text = diverged_message(float("inf"), {"click": 0.3}, step=3, epoch=1)
    assert "from task(s) none alone" in text and "kept no checkpoint (epoch 1 never finished)" in text


def test_4_nan_prediction_gives_a_nan_task_loss():
    import keras
    import tensorflow as tf

    from mtlrec.training import MultiTaskTrainer

    x = keras.Input((1,))
    trainer = MultiTaskTrainer(keras.Model(x, {"click": keras.layers.Dense(1, activation="sigmoid")(x)}), ["click"])
    losses = trainer.task_losses({"click": tf.constant([1.0, 0.0])}, {"click": tf.constant([0.5, float("nan")])}, None)
    assert np.isnan(losses["click"].numpy())  # clipping alone would give a finite loss
    losses = trainer.task_losses({"click": tf.constant([1.0, 0.0])}, {"click": tf.constant([0.5, 0.5])}, None)
    assert losses["click"].numpy() == pytest.approx(np.log(2), rel=1e-5)


# 5. Splits a run needs are checked before the first step.

def test_5_empty_test_split_stops_before_training(tmp_path):
    out = str(tmp_path / "ds")
    prepare(PrepareConfig(output=out, schema=tenrec_schema(), synthetic_rows=3000, seed=1, splits=(0.9, 0.1, 0.0)))
    with pytest.raises(ValueError, match=r"the test split has no rows .*--splits"):
        train(_config(out, tmp_path / "run"))
    assert not (tmp_path / "run").exists()


# 6. Sparse ids do not size a giant table.

def test_6_huge_id_stops_with_hash_buckets_remedy(tenrec_csv, tmp_path):
    lines = open(tenrec_csv).read().splitlines()
    fields = lines[1].split(",")
    fields[1] = "999999999999999"  # item_id
    lines[1] = ",".join(fields)
    path = tmp_path / "huge.csv"
    path.write_text("\n".join(lines) + "\n")
    out = str(tmp_path / "ds")
    prepare(PrepareConfig(output=out, schema=tenrec_schema(), inputs=(str(path),), splits=(1.0, 0.0, 0.0)))
    # The row may land in any split: put all in train, then give valid/test rows for the preflight.
    m = json.loads(open(os.path.join(out, "manifest.json")).read())
    assert m["vocab_size"]["item_id"] == 10**15
    for split in ("valid", "test"):
        m["splits"][split] = m["splits"]["train"]
    open(os.path.join(out, "manifest.json"), "w").write(json.dumps(m))
    t0 = time.time()
    with pytest.raises(ValueError, match=r"feature 'item_id': ids go up to 999999999999999 but the train split holds at most \d+ distinct ones.*\"hash_buckets\": \d+"):
        train(_config(out, tmp_path / "run"))
    assert time.time() - t0 < 30 and not (tmp_path / "run").exists()


def test_6_tables_larger_than_memory_stop_before_building(small_dataset):
    cfg = _config(small_dataset, "unused")
    manifest = load_manifest(small_dataset)
    preflight.check_tables(cfg, manifest, memory=16 << 30)  # fits
    with pytest.raises(ValueError, match=r"embedding tables need .* GiB .* the largest is '\w+' with [\d,]+ rows x 4"):
        preflight.check_tables(cfg, manifest, memory=20_000)


# 7. One line, naming the file, instead of a traceback.

def _copy_dataset(src, dst):
    import shutil

    shutil.copytree(src, dst)
    return str(dst)


def _a_shard(data):
    m = load_manifest(data)
    return m.files("train")[0]


@pytest.mark.parametrize("fault", ["missing", "truncated"])
def test_7_missing_or_truncated_shard_is_named(small_dataset, tmp_path, fault):
    data = _copy_dataset(small_dataset, tmp_path / "ds")
    shard = _a_shard(data)
    if fault == "missing":
        os.remove(shard)
    else:
        with open(shard, "r+b") as f:
            f.truncate(os.path.getsize(shard) // 2)
    res = _train_cli(data, tmp_path / "run")
    _one_line_error(res, os.path.basename(shard), "missing" if fault == "missing" else "truncated")


def test_7_corrupted_shard_is_named(small_dataset, tmp_path):
    data = _copy_dataset(small_dataset, tmp_path / "ds")
    shard = _a_shard(data)
    raw = bytearray(open(shard, "rb").read())
    raw[len(raw) // 2] ^= 0xFF  # same size, one byte flipped
    open(shard, "wb").write(bytes(raw))
    with pytest.raises(ValueError, match=rf"{os.path.basename(shard)}: shard is corrupted"):
        train(_config(data, tmp_path / "run", train_steps=20))


def test_7_read_only_locations_are_one_line(finished_run, tmp_path):
    try:
        os.makedirs(READ_ONLY)
        os.rmdir(READ_ONLY)
        pytest.skip(f"{READ_ONLY} is writable here")
    except OSError:
        pass
    res = run_cli("mtlrec.cli.prepare", "--synthetic_rows=100", f"--output={READ_ONLY}/ds")
    _one_line_error(res, READ_ONLY)
    res = run_cli("mtlrec.cli.export", f"--model_dir={finished_run}", f"--export_dir={READ_ONLY}/export")
    _one_line_error(res, READ_ONLY)


def test_7_output_dot_and_schema_and_search_space_errors_are_one_line(tmp_path):
    res = subprocess.run([sys.executable, "-m", "mtlrec.cli.prepare", "--synthetic_rows=100", "--output=."],
                         cwd=tmp_path.parent, capture_output=True, text=True)
    _one_line_error(res, "--output=. already holds files that are not an mtlrec-prepare dataset")
    (tmp_path / "in.csv").write_text("uid,city,click\n" + "1,rome,0\n" * 50)
    schema = {"features": [{"name": "uid", "kind": "id"}, {"name": "city", "kind": "categorical", "min_count": "5"}],
              "labels": [{"name": "click"}]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    res = run_cli("mtlrec.cli.prepare", f"--input={tmp_path / 'in.csv'}", f"--output={tmp_path / 'ds'}",
                  f"--schema={tmp_path / 'schema.json'}")
    _one_line_error(res, "Feature 'city': min_count must be an integer. Received: min_count='5'")
    assert not (tmp_path / "ds").exists() and not (tmp_path / "ds.incomplete").exists()
    for space, message in [({"learning_rate": [0.001, 0.01]}, "expected an object like"),
                           ({"learning_rate": {"type": "float", "max": 0.1}}, "float needs a finite number 'min'")]:
        (tmp_path / "space.json").write_text(json.dumps(space))
        with pytest.raises(ValueError, match=message):
            tuning.load_space("mmoe", ("click",), str(tmp_path / "space.json"))


# 8. Nothing left behind: workers, staging, temporary files.

def test_8_killed_prepare_leaves_no_worker(tmp_path):
    psutil = pytest.importorskip("psutil")
    csv_path = synthetic.write_csv(str(tmp_path / "big.csv"), 400_000, seed=2)
    proc = subprocess.Popen([sys.executable, "-m", "mtlrec.cli.prepare", f"--input={csv_path}",
                             f"--output={tmp_path / 'ds'}", "--workers=2", "--chunk_bytes=65536"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    parent = psutil.Process(proc.pid)
    deadline = time.time() + 60
    while time.time() < deadline and len(parent.children()) < 2 and proc.poll() is None:
        time.sleep(0.05)
    workers = parent.children(recursive=True)
    assert workers, "prepare ended before its workers started"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    gone, alive = psutil.wait_procs(workers, timeout=10)
    assert not alive, [p.pid for p in alive]
    assert not (tmp_path / "ds" / "manifest.json").exists()
    res = run_cli("mtlrec.cli.prepare", f"--input={csv_path}", f"--output={tmp_path / 'ds'}", "--workers=2")
    assert res.returncode == 0, res.stderr[-2000:]
    assert not (tmp_path / "ds.incomplete").exists()


def test_8_failed_prepare_leaves_no_staging(tenrec_csv, tmp_path):
    text = open(tenrec_csv).read() + "1,x," + GOOD.split(",", 2)[2] + "\n"
    (tmp_path / "bad.csv").write_text(text)
    with pytest.raises(BadInputError, match=r"bad\.csv:6002: column 'item_id'"):
        prepare(PrepareConfig(output=str(tmp_path / "ds"), schema=tenrec_schema(), inputs=(str(tmp_path / "bad.csv"),),
                              chunk_bytes=4096, workers=2))
    assert sorted(os.listdir(tmp_path)) == ["bad.csv"]


def test_8_export_to_an_existing_version_refuses_before_writing(finished_run, tmp_path):
    export = os.path.join(finished_run, "export")
    stale = os.path.join(export, ".tmp-7-999999")  # a killed export's leftover (no such pid)
    os.makedirs(stale)
    res = run_cli("mtlrec.cli.export", f"--model_dir={finished_run}", "--version=1")
    _one_line_error(res, "export/1 exists: versions are immutable")
    assert sorted(os.listdir(export)) == [".tmp-7-999999", "1"]
    path = export_model_dir(finished_run, version=2)
    assert sorted(os.listdir(export)) == ["1", "2"] and path.endswith("/2")


def test_8_killed_predict_leftover_is_cleared_by_the_next_run(finished_run, tmp_path):
    from mtlrec.predict import predict_csv

    rows = tmp_path / "rows.csv"
    synthetic.write_csv(str(rows), 20, seed=5)
    (tmp_path / "scores.csv.tmp-999999").write_text("half")
    assert predict_csv(os.path.join(finished_run, "export"), str(rows), str(tmp_path / "scores.csv")) == 20
    assert sorted(os.listdir(tmp_path)) == [".scores.csv.mtlrec", "rows.csv", "scores.csv"]


# 9. Small but wrong.

def test_9_bom_is_stripped(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbf" + f"{HEADER}\n{GOOD}\n{GOOD2}\n".encode())
    m = prepare(PrepareConfig(output=str(tmp_path / "ds"), schema=tenrec_schema(), inputs=(str(path),)))
    assert m["rows_read"] == 2 and m["rows_rejected"] == 0


def test_9_quoted_newline_is_rejected_with_its_line(tmp_path):
    schema = {"features": [{"name": "uid", "kind": "id"}, {"name": "city", "kind": "categorical"}],
              "labels": [{"name": "click"}]}
    (tmp_path / "schema.json").write_text(json.dumps(schema))
    text = 'uid,city,click\n1,rome,0\n2,"new\nyork",1\n3,"oslo, north",0\n'
    (tmp_path / "in.csv").write_text(text)
    from mtlrec.config import load_schema

    cfg = dict(schema=load_schema(str(tmp_path / "schema.json")), inputs=(str(tmp_path / "in.csv"),))
    with pytest.raises(BadInputError, match=r"in\.csv:3: a quoted field spans lines"):
        prepare(PrepareConfig(output=str(tmp_path / "ds"), **cfg))
    m = prepare(PrepareConfig(output=str(tmp_path / "ds"), on_bad_rows="skip", **cfg))
    assert m["rows_read"] == 4 and m["rows_rejected"] == 2
    vocab = open(tmp_path / "ds" / "vocab" / "city.txt").read().splitlines()
    assert sorted(vocab) == ["oslo, north", "rome"]


def test_9_predict_validates_ids_like_prepare_and_names_true_lines(finished_run, tmp_path):
    from mtlrec.predict import predict_csv

    lines = open(synthetic.write_csv(str(tmp_path / "rows.csv"), 5, seed=5)).read().splitlines()
    export = os.path.join(finished_run, "export")
    bad = lines[3].split(",")
    bad[1] = "12.7"  # item_id
    text = "\n".join([lines[0], lines[1], "", lines[2], "", ",".join(bad), lines[4]]) + "\n"
    (tmp_path / "in.csv").write_text(text)
    with pytest.raises(ValueError, match=r"in\.csv:6: column 'item_id': received '12\.7', expected a non-negative integer"):
        predict_csv(export, str(tmp_path / "in.csv"), str(tmp_path / "out.csv"))
    assert not (tmp_path / "out.csv").exists()
    (tmp_path / "in.csv").write_text(text.replace("12.7", "12"))
    assert predict_csv(export, str(tmp_path / "in.csv"), str(tmp_path / "out.csv")) == 4


def test_9_batch_larger_than_train_split_stops(small_dataset, tmp_path):
    rows = load_manifest(small_dataset).rows("train")
    with pytest.raises(ValueError, match=rf"--batch_size={rows + 1} is larger than the train split \({rows} rows"):
        train(_config(small_dataset, tmp_path / "run", batch_size=rows + 1))
    assert not (tmp_path / "run").exists()


# K. Found by the kill suite: a search killed before keras-tuner saved a
# trial reuses its id with new values; the folder's old run must not be
# resumed under them (before run identity it silently was).

def test_k_tuner_starts_over_a_trial_id_reused_with_other_values(small_dataset, tmp_path):
    import keras_tuner as kt

    trial_dir = str(tmp_path / "trials" / "00")
    train(_config(small_dataset, trial_dir, learning_rate=0.01))  # the killed search's trial
    space = {"learning_rate": {"type": "choice", "values": [0.002]}}
    hypermodel = tuning.MtlrecHyperModel(_config(small_dataset, str(tmp_path)), space, "val_auc_mean")
    hp = kt.HyperParameters()
    result = hypermodel.run(hp, trial_dir)
    assert np.isfinite(result["val_auc_mean"])
    record = json.loads(open(os.path.join(trial_dir, "run.json")).read())
    assert record["identity"]["learning_rate"] == 0.002 and record["status"] == "finished"
