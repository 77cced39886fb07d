"""Training: learning per model, MirroredStrategy parity, resume, the CLI."""

import json
import os
import signal
import subprocess
import sys
import time

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtlrec.config import ModelConfig, TaskSpec, parse_tasks
from mtlrec.data import load_manifest, make_dataset
from mtlrec.models import build_model
from mtlrec.optimizers import LazyAdam
from mtlrec.training import MultiTaskTrainer, TrainConfig, host_cores, make_strategy, make_train_step, train
from tests.helpers import run_cli

CORE = ["shared_bottom", "omoe", "mmoe", "cgc", "ple", "esmm"]
LEARNERS = CORE + ["aple", "aple_lowrank", "mmoe_dlen", "ple_dlen", "escm2_ips", "escm2_dr", "aitm", "stem"]

# On the learning data (100k generated rows, seed 7) the true probabilities
# give click AUC 0.837 and like AUC 0.949 (the Bayes ceiling). Item quality
# alone gives click 0.610 / like 0.707; adding the user bias and the
# age x category affinity gives click 0.693; the rest is the user-item taste
# interaction, which needs many epochs. Two short epochs learn the
# per-id effects: click must beat item quality alone (0.625 > 0.610) and
# like must reach 0.70. Measured: click 0.645-0.650, like 0.720-0.737.
CLICK_AUC, LIKE_AUC = 0.625, 0.70


def _config(name, data, model_dir, **kw):
    tasks = parse_tasks("click,like")
    model = ModelConfig(tasks=("click", "like"), embedding_dim=8, expert_units=(32,), tower_units=(16,),
                        bottom_units=(64, 32), num_experts=3, ame_task_dims=(8, 16), ame_shared_dim=8, ame_rank=4)
    defaults = dict(epochs=2, batch_size=1024, learning_rate=0.005, verbose=0, tensorboard=False, patience=2)
    return TrainConfig(model=name, model_dir=str(model_dir), data=data, tasks=tasks, model_config=model, **{**defaults, **kw})


@pytest.mark.parametrize("name", LEARNERS)
def test_learns_planted_signal(name, learn_dataset, tmp_path):
    m = train(_config(name, learn_dataset, tmp_path / name))
    assert m["test"]["click"]["auc"] > CLICK_AUC
    assert m["test"]["like"]["auc"] > LIKE_AUC
    assert 0.8 < m["test"]["click"]["calibration"] < 1.25
    assert m["train_examples_per_sec"] > 0
    saved = json.loads((tmp_path / name / "metrics.json").read_text())
    assert saved["test"]["click"]["auc"] == pytest.approx(m["test"]["click"]["auc"])
    assert not np.isnan(saved["test"]["click"]["gauc"])
    if name.endswith("dlen"):
        # The paper's convergence check: P(UP) ranks "any interaction" well.
        assert m["test"]["p_up"]["auc_any_interaction"] > CLICK_AUC


def _one_step(strategy, manifest, batch, init_weights):
    with strategy.scope():
        keras.utils.set_random_seed(0)
        net = build_model("mmoe", manifest, ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,), num_experts=2))
        trainer = MultiTaskTrainer(net, ["click", "like"])
        trainer.compile(optimizer=LazyAdam(0.01))
        trainer(batch[0])
        if init_weights is not None:
            net.set_weights(init_weights)
        step = make_train_step(trainer, strategy)  # the step mtlrec-train runs, under any strategy
        loss, _ = step(iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch))))
    return float(loss), net.get_weights()


def test_mirrored_two_devices_matches_single_device(small_dataset):
    manifest = load_manifest(small_dataset)
    tasks = (TaskSpec("click"), TaskSpec("like", given="click"))
    batch = next(iter(make_dataset(manifest, "train", 256, tasks, shuffle=False, drop_remainder=True)))
    cpus = tf.config.list_logical_devices("CPU")
    assert len(cpus) >= 2, "conftest should have made 2 logical CPUs"
    single_loss, init = None, None
    with tf.distribute.get_strategy().scope():
        keras.utils.set_random_seed(0)
        init = build_model("mmoe", manifest, ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,), num_experts=2)).get_weights()
    single_loss, single_w = _one_step(tf.distribute.get_strategy(), manifest, batch, init)
    mirrored = make_strategy([d.name for d in cpus[:2]])  # shared per process, see make_strategy
    assert mirrored.num_replicas_in_sync == 2
    mirrored_loss, mirrored_w = _one_step(mirrored, manifest, batch, init)
    # Tolerance: float32 sums in a different order across replicas.
    assert mirrored_loss == pytest.approx(single_loss, rel=1e-5)
    for a, b in zip(single_w, mirrored_w):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(init, single_w)), "the step changed nothing"


def test_steps_in_one_call_equal_steps_one_by_one(small_dataset):
    """make_train_step(loop=True) runs `count` steps in one call: the same
    losses and weights as that many single-step calls (dropout included:
    the seed generator advances the same way), on the default strategy and
    on 2 mirrored CPUs."""
    manifest = load_manifest(small_dataset)
    tasks = (TaskSpec("click"), TaskSpec("like", given="click"))
    data = make_dataset(manifest, "train", 128, tasks, shuffle=False, drop_remainder=True)
    config = ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,), num_experts=2, dropout=0.2)
    cpus = [d.name for d in tf.config.list_logical_devices("CPU")[:2]]
    for strategy in (tf.distribute.get_strategy(), make_strategy(cpus)):
        runs = []
        for loop in (False, True):
            with strategy.scope():
                keras.utils.set_random_seed(3)
                trainer = MultiTaskTrainer(build_model("mmoe", manifest, config), ["click", "like"])
                trainer.compile(optimizer=LazyAdam(0.01))
                trainer(next(iter(data))[0])
                step = make_train_step(trainer, strategy, loop=loop)
                iterator = iter(strategy.experimental_distribute_dataset(data))
                if loop:  # 5 steps as a call of 3 and a call of 2
                    losses = [float(v) for n in (3, 2) for v in step(iterator, tf.constant(n)).__getitem__(0)]
                else:
                    losses = [float(step(iterator)[0]) for _ in range(5)]
            runs.append((losses, [w.numpy() for w in trainer.trainable_weights], int(trainer.optimizer.iterations.numpy())))
        (single, w_single, it_single), (looped, w_looped, it_looped) = runs
        assert it_single == it_looped == 5 and len(looped) == 5
        np.testing.assert_allclose(looped, single, rtol=1e-5)
        assert single[0] != single[4]
        for a, b in zip(w_single, w_looped):
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_steps_per_execution_trains_the_same_run(small_dataset, tmp_path):
    """mtlrec-train's steps per call change the speed only: 7 steps as calls
    of 3, 3 and 1 give the same losses and test AUCs as 7 calls of one."""
    out = []
    for per_call in (1, 3):
        config = TrainConfig(model="ple", model_dir=str(tmp_path / f"spe{per_call}"), data=small_dataset,
                             tasks=parse_tasks(["click", "like"]), train_steps=7, batch_size=256, verbose=0,
                             model_config=ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,),
                                                      dropout=0.1),
                             tensorboard=False, steps_per_execution=per_call)
        out.append(train(config))
    one, three = out
    assert one["history"][0]["train"]["loss"] == pytest.approx(three["history"][0]["train"]["loss"], rel=1e-5)
    for task in ("click", "like"):
        assert one["test"][task]["auc"] == pytest.approx(three["test"][task]["auc"], abs=1e-5)
    with pytest.raises(ValueError, match="steps_per_execution must be >= 1"):
        TrainConfig(model="ple", model_dir=str(tmp_path / "x"), data=small_dataset, tasks=parse_tasks(["click"]),
                    model_config=ModelConfig(tasks=("click",)), steps_per_execution=0)


def test_killed_training_resumes_from_checkpoint(small_dataset, tmp_path):
    model_dir = tmp_path / "run"
    args = [sys.executable, "-m", "mtlrec.cli.train", "--model=mmoe", f"--data={small_dataset}",
            f"--model_dir={model_dir}", "--epochs=3", "--train_steps=450", "--batch_size=256",
            "--verbose=0", "--patience=3", "--notensorboard"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = model_dir / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and proc.poll() is None:
        if state.exists() and json.loads(state.read_text() or "{}").get("epoch") == 1:
            break
        time.sleep(0.02)
    assert proc.poll() is None, "training ended before the kill"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (model_dir / "metrics.json").exists()
    killed_at = json.loads(state.read_text())["epoch"]
    assert killed_at in (1, 2)
    res = subprocess.run(args, capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    assert "resumed from" in res.stderr and f"after epoch {killed_at}" in res.stderr
    metrics = json.loads((model_dir / "metrics.json").read_text())
    assert metrics["epochs_run"] == 3
    assert [h["epoch"] for h in metrics["history"]] == [1, 2, 3]


def test_cli_flagfile_with_generated_default_data(tmp_path):
    env = dict(os.environ, MTLREC_CACHE=str(tmp_path / "cache"), TF_CPP_MIN_LOG_LEVEL="2")
    res = run_cli("mtlrec.cli.train", "--flagfile=experiments/esmm.flags", f"--model_dir={tmp_path / 'esmm'}",
                  "--synthetic_rows=5000", "--epochs=1", "--train_steps=5", "--batch_size=256", env=env)
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "esmm" / "metrics.json").read_text())
    assert set(metrics["test"]) >= {"click", "like", "share"}
    for task in ("click", "like", "share"):
        assert {"auc", "logloss"} <= set(metrics["test"][task])
    assert metrics["train_examples_per_sec"] > 0
    # The default op threads: one thread per op on a host of <= 8 cores, TensorFlow's choice of op parallelism.
    assert metrics["op_threads"] == {"intra": 1 if host_cores() <= 8 else 0, "inter": 0}
    manifest = json.loads((tmp_path / "cache" / "synthetic-5000-seed0-ordered" / "manifest.json").read_text())
    assert manifest["split"]["kind"] == "ordered" and metrics["split"] == manifest["split"]  # the default: by time
    assert (tmp_path / "esmm" / "model.keras").exists()


def test_cli_rejects_bad_flags(tmp_path):
    res = run_cli("mtlrec.cli.train", "--model=nope", f"--model_dir={tmp_path}")
    assert res.returncode == 1 and "--model=nope: unknown; expected one of shared_bottom, omoe," in res.stderr
    # A typo is answered before TensorFlow loads, with the closest name.
    t0 = time.monotonic()
    res = run_cli("mtlrec.cli.train", "--model=mmeo", f"--model_dir={tmp_path}")
    took = time.monotonic() - t0
    assert res.returncode == 1 and "--model=mmeo: unknown (did you mean 'mmoe'?)" in res.stderr
    assert "tensorflow" not in res.stderr.lower() and took < 1.0, (took, res.stderr)  # 0.22 s measured; TF ~5 s
    # A missing or unprepared --data: answered before TensorFlow loads too (it took 8.7 s).
    for data, message in [(tmp_path / "nope", "no such folder; make one with mtlrec-prepare"),
                          (tmp_path, "holds no manifest.json: not a dataset made by mtlrec-prepare")]:
        for command in ("mtlrec.cli.train", "mtlrec.cli.tune"):
            t0 = time.monotonic()
            res = run_cli(command, "--model=mmoe", f"--data={data}", f"--model_dir={tmp_path / 'run'}")
            took = time.monotonic() - t0
            assert res.returncode == 1 and f"error: --data={data}" in res.stderr and message in res.stderr, res.stderr
            assert took < 1.5 and res.stderr.count("\n") == 1, (took, res.stderr)
    (tmp_path / "half.incomplete").mkdir()
    res = run_cli("mtlrec.cli.train", "--model=mmoe", f"--data={tmp_path / 'half'}", f"--model_dir={tmp_path}")
    assert "a prepare into it was interrupted: rerun it" in res.stderr
    (tmp_path / "ds").mkdir()
    (tmp_path / "ds" / "manifest.json").write_text("{}")  # passes the early check; the flag error comes first
    res = run_cli("mtlrec.cli.train", "--loss_weights=click:2", f"--model_dir={tmp_path}", f"--data={tmp_path / 'ds'}")
    assert res.returncode == 1 and "--loss_weights: 'click:2' is not task=number" in res.stderr


def test_cli_devices_missing_is_an_error_and_cpu_split_trains_two_replicas(small_dataset, tmp_path):
    res = run_cli("mtlrec.cli.train", "--model=mmoe", f"--data={small_dataset}", f"--model_dir={tmp_path / 'gpu'}",
                  "--devices=/gpu:0", "--noexport")
    assert res.returncode == 1 and "--devices=/gpu:0: no device /gpu:0 here" in res.stderr  # it used to hang
    res = run_cli("mtlrec.cli.train", "--model=mmoe", f"--data={small_dataset}", f"--model_dir={tmp_path / 'cpu'}",
                  "--devices=/cpu:0,/cpu:1", "--noexport", "--epochs=1", "--train_steps=4", "--batch_size=256",
                  "--embedding_dim=4", "--expert_units=8", "--tower_units=4", "--intra_op_threads=2",
                  "--inter_op_threads=3")
    assert res.returncode == 0, res.stderr[-2000:]
    metrics = json.loads((tmp_path / "cpu" / "metrics.json").read_text())
    assert metrics["replicas"] == 2
    assert metrics["op_threads"] == {"intra": 2, "inter": 3}


def test_set_op_threads_before_and_after_tensorflow_starts():
    code = """
import json, tensorflow as tf
from mtlrec.training import set_op_threads
out = [set_op_threads(), set_op_threads(0, 0), set_op_threads(3, 2)]
tf.constant(1.0) + 1.0  # the runtime starts: the pools are fixed now
out.append(set_op_threads(1, 1))
try:
    set_op_threads(-2)
except ValueError as e:
    out.append(str(e))
print(json.dumps(out))
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    assert res.returncode == 0, res.stderr[-2000:]
    auto, tf_default, chosen, after, error = json.loads(res.stdout.strip().splitlines()[-1])
    assert auto == {"intra": 1 if host_cores() <= 8 else 0, "inter": 0}
    assert tf_default == {"intra": 0, "inter": 0}
    assert chosen == after == {"intra": 3, "inter": 2}
    assert "--intra_op_threads must be >= -1" in error and "-2" in error
