"""--mixed_precision and --jit_compile: what stays float32, that the steps
learn, that XLA's step is the plain step's, and float16's loss scaling."""

import json
import os

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtlrec.config import ModelConfig, TaskSpec, parse_tasks
from mtlrec.data import load_manifest, make_dataset
from mtlrec.layers.embedding import EmbeddingTable
from mtlrec.models import build_model
from mtlrec.optimizers import LazyAdam
from mtlrec.training import MultiTaskTrainer, TrainConfig, make_train_step, precision, preflight
from mtlrec.training.step import make_gradients
from tests.helpers import run_cli

TASKS = ("click", "like")


def _trainer(manifest, model="ple", policy="float32", l2=1e-4, seed=0, balancing=None):
    keras.utils.set_random_seed(seed)
    config = ModelConfig(tasks=TASKS, embedding_dim=8, embedding_l2=l2, expert_units=(32,), tower_units=(16,),
                         ame_task_dims=(8, 16), ame_shared_dim=8, dropout=0.0)
    with precision.building(policy):
        network = build_model(model, manifest, config)
    trainer = MultiTaskTrainer(network, list(TASKS), balancing=balancing)
    trainer.compile(optimizer=LazyAdam(1e-2))
    return trainer


def _batches(manifest, batch=512):
    return make_dataset(manifest, "train", batch, tuple(TaskSpec(t) for t in TASKS), shuffle=False, repeat=True,
                        drop_remainder=True)


def _train(trainer, manifest, steps, **step_kwargs):
    ds = _batches(manifest)
    trainer(next(iter(ds))[0])
    strategy = tf.distribute.get_strategy()
    step = make_train_step(trainer, strategy, **step_kwargs)
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    return [float(step(iterator)[0]) for _ in range(steps)]


def _tables(network):
    return [layer for layer in network._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, EmbeddingTable)]


def test_bfloat16_computes_the_dense_part_only(small_dataset):
    manifest = load_manifest(small_dataset)
    trainer = _trainer(manifest, policy="mixed_bfloat16")
    network = trainer.network
    assert keras.config.dtype_policy().name == "float32"  # the global policy is put back after building
    tables = _tables(network)
    assert len(tables) == 5 and {t.compute_dtype for t in tables} == {"float32"}
    assert {v.dtype for v in network.weights} <= {"float32", "int32"}  # every variable stays float32
    counts = precision.compute_dtypes(network)
    assert counts["bfloat16"] >= 10 and counts["float32"] >= 7  # experts, gates, towers / tables, logits
    features = next(iter(_batches(manifest, 256)))[0]
    mixed = network(features)
    plain = _trainer(manifest, policy="float32").network
    plain.set_weights(network.get_weights())
    exact = plain(features)
    for t in TASKS:
        assert mixed[t].dtype == tf.float32  # probabilities are float32 whatever the policy
        diff = np.abs(mixed[t].numpy() - exact[t].numpy())
        assert 0 < diff.max() < 0.02  # bfloat16 did compute, and close to float32


def test_bfloat16_step_learns_and_updates_only_the_rows_it_read(small_dataset):
    manifest = load_manifest(small_dataset)
    trainer = _trainer(manifest, policy="mixed_bfloat16")
    ds = _batches(manifest)
    trainer(next(iter(ds))[0])
    items = [t for t in _tables(trainer.network) if t.name == "item_id_embedding"][0]  # item_id's and hist's
    before = items.embeddings.numpy().copy()
    losses = _train(trainer, manifest, 3)
    read = set()
    for features, _, _ in ds.take(3):
        read.update((features["item_id"].numpy() + 1).tolist())  # row = id + 1
        read.update((features["hist"].numpy().ravel() + 1).tolist())
    assert len(read) < 0.9 * items.rows  # some rows were not read
    changed = set(np.flatnonzero(np.abs(items.embeddings.numpy() - before).max(axis=1) > 0).tolist())
    assert len(changed) > 100 and changed <= read  # row-sparse updates: rows never read stay as drawn
    losses += _train(trainer, manifest, 30)
    assert all(np.isfinite(losses))
    assert np.mean(losses[-5:]) < np.mean(losses[:5]) - 0.01


@pytest.mark.parametrize("model", ["ple", "aple", "esmm"])
def test_jit_step_matches_the_plain_step(small_dataset, model):
    manifest = load_manifest(small_dataset)
    trainer = _trainer(manifest, model, l2=0.5)  # a penalty large enough to show in the loss and the tables' gradients
    features, labels, weights = next(iter(_batches(manifest)))
    trainer(features)
    plain = make_gradients(trainer, 1)(features, labels, weights)
    compiled = make_gradients(trainer, 1, jit_compile=True)(features, labels, weights)
    assert float(compiled[0]) == pytest.approx(float(plain[0]), rel=1e-5)  # the loss, the L2 penalty included
    sparse = 0
    for v, g, h in zip(trainer.trainable_variables, plain[4], compiled[4]):
        sparse += isinstance(h, tf.IndexedSlices)
        assert isinstance(g, tf.IndexedSlices) == isinstance(h, tf.IndexedSlices), v.path  # row-sparse stays so
        g, h = tf.convert_to_tensor(g).numpy(), tf.convert_to_tensor(h).numpy()
        np.testing.assert_allclose(h, g, rtol=1e-3, atol=1e-3 * np.abs(g).max(), err_msg=v.path)
    assert sparse >= 5  # every table's gradient
    # A few steps on, the losses still agree (Adam moves rows of near-zero gradients by up to its step size,
    # so weights are compared through the losses).
    a = _train(_trainer(manifest, model), manifest, 6)
    b = _train(_trainer(manifest, model), manifest, 6, jit_compile=True)
    np.testing.assert_allclose(b, a, rtol=5e-4)


def test_jit_refuses_per_task_gradient_rules(small_dataset):
    manifest = load_manifest(small_dataset)
    trainer = _trainer(manifest, balancing={"method": "pcgrad"})
    with pytest.raises(ValueError, match="--jit_compile works with --loss_balancing=fixed"):
        _train(trainer, manifest, 1, jit_compile=True)


def test_float16_loss_scale_skips_overflowing_steps_and_grows(small_dataset):
    manifest = load_manifest(small_dataset)
    trainer = _trainer(manifest, policy="mixed_float16")
    scale = precision.LossScale(initial=3e38, growth_steps=2)  # any float16 gradient overflows at this scale
    ds = _batches(manifest)
    trainer(next(iter(ds))[0])
    strategy = tf.distribute.get_strategy()
    step = make_train_step(trainer, strategy, loss_scale=scale)
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    weights = [w.copy() for w in trainer.network.get_weights()]
    step(iterator)
    assert float(scale.scale.numpy()) == pytest.approx(1.5e38, rel=1e-6)  # halved
    assert int(trainer.optimizer.iterations.numpy()) == 0  # skipped: no optimizer step
    for x, y in zip(weights, trainer.network.get_weights()):
        np.testing.assert_array_equal(x, y)
    scale.scale.assign(8.0)
    losses = [float(step(iterator)[0]) for _ in range(4)]
    assert all(np.isfinite(losses))
    assert float(scale.scale.numpy()) == 32.0 and int(trainer.optimizer.iterations.numpy()) == 4  # doubled twice
    assert any(np.abs(x - y).max() > 0 for x, y in zip(weights, trainer.network.get_weights()))


def _config(**kwargs):
    tasks = parse_tasks("click,like")
    return TrainConfig(model="ple", model_dir="unused", data="unused", tasks=tasks,
                       model_config=ModelConfig(tasks=("click", "like")), **kwargs)


def test_preflight_names_settings_that_cannot_run():
    with pytest.raises(ValueError, match="--jit_compile with --loss_balancing=gradnorm"):
        preflight.check_compute(_config(jit_compile=True, loss_balancing="gradnorm"), gpus=0)
    with pytest.raises(ValueError, match="mixed_float16 trains on one device"):
        preflight.check_compute(_config(mixed_precision="mixed_float16", devices=("/cpu:0", "/cpu:1")), gpus=0)
    with pytest.raises(ValueError, match="mixed_float16 trains on one device"):
        preflight.check_compute(_config(mixed_precision="mixed_float16"), gpus=4)
    preflight.check_compute(_config(mixed_precision="mixed_bfloat16", jit_compile=True, devices=("/cpu:0", "/cpu:1")),
                            gpus=0)
    with pytest.raises(ValueError, match="per-task gradients are not loss-scaled"):
        preflight.check_compute(_config(mixed_precision="mixed_float16", loss_balancing="pcgrad"), gpus=0)
    with pytest.raises(ValueError, match="mixed_precision must be one of"):
        _config(mixed_precision="bfloat16")


def test_train_and_tune_take_both_flags_and_record_them(small_dataset, tenrec_csv, tmp_path):
    run = str(tmp_path / "run")
    common = ["--model=mmoe", "--tasks=click,like", "--epochs=1", "--batch_size=512", "--expert_units=32",
              "--tower_units=16", f"--data={small_dataset}", "--mixed_precision=mixed_bfloat16", "--jit_compile",
              "--notensorboard", "--verbose=0"]
    proc = run_cli("mtlrec.cli.train", *common, f"--model_dir={run}", "--intra_op_threads=0")
    assert proc.returncode == 0, proc.stderr[-2000:]
    metrics = json.load(open(os.path.join(run, "metrics.json")))
    assert metrics["op_threads"]["intra"] == 0  # an explicit 0 (TensorFlow's choice) is kept, not taken for unset
    assert metrics["mixed_precision"] == "mixed_bfloat16" and metrics["jit_compile"] is True
    assert metrics["compute_dtypes"]["bfloat16"] > 0
    assert metrics["provenance"]["host"]["cpu_model"]
    assert metrics["test"]["click"]["auc"] > 0.55 and metrics["test"]["like"]["auc"] > 0.55
    scored = str(tmp_path / "scored.csv")  # the bfloat16 model exports and serves
    proc = run_cli("mtlrec.cli.predict", f"--export_dir={run}/export", f"--input={tenrec_csv}", f"--output={scored}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    import pandas as pd
    probabilities = pd.read_csv(scored)[["click", "like"]].to_numpy()
    assert len(probabilities) == 6000 and ((probabilities > 0) & (probabilities < 1)).all()
    assert probabilities[:, 0].std() > 0.005  # not a constant
    tuner = str(tmp_path / "tune")
    proc = run_cli("mtlrec.cli.tune", *common, f"--tuner_dir={tuner}", "--max_trials=1", "--tuner=random")
    assert proc.returncode == 0, proc.stderr[-2000:]
    trials = [os.path.join(root, "metrics.json") for root, _, files in os.walk(tuner) if "metrics.json" in files]
    assert len(trials) == 1
    trial = json.load(open(trials[0]))
    assert trial["mixed_precision"] == "mixed_bfloat16" and trial["jit_compile"] is True
    proc = run_cli("mtlrec.cli.train", *common, "--mixed_precision=mixed_float16", "--devices=/cpu:0,/cpu:1",
                   f"--model_dir={tmp_path / 'fp16'}", "--noexport")  # the last --mixed_precision counts
    assert proc.returncode != 0 and "mixed_float16 trains on one device" in proc.stderr
    assert not os.path.exists(tmp_path / "fp16" / "checkpoints")  # refused before any work
