"""Every model: shapes for 1, 2 and 4 tasks, `.keras` round-trips, the loss."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtlrec.config import ModelConfig, TaskSpec
from mtlrec.data import load_manifest, make_dataset
from mtlrec.models import MODELS, build_model
from mtlrec.training import MultiTaskTrainer
from tests.helpers import assert_keras_round_trip

CORE = ["shared_bottom", "omoe", "mmoe", "cgc", "ple", "esmm"]
TASK_SETS = [("click",), ("click", "like"), ("click", "like", "share", "follow")]


@pytest.fixture(scope="module")
def batch(small_dataset):
    tasks = tuple(TaskSpec(t) for t in TASK_SETS[-1])
    return next(iter(make_dataset(small_dataset, "valid", 32, tasks, shuffle=False)))


def _small(tasks):
    return ModelConfig(tasks=tasks, embedding_dim=4, expert_units=(8,), tower_units=(4,), bottom_units=(8,), num_experts=2)


def test_registry_has_the_core_models():
    assert set(CORE) <= set(MODELS)


@pytest.mark.parametrize("name", CORE)
@pytest.mark.parametrize("tasks", TASK_SETS, ids=len)
def test_output_shapes(name, tasks, small_dataset, batch):
    net = build_model(name, load_manifest(small_dataset), _small(tasks))
    out = net(batch[0])
    for t in tasks:
        assert out[t].shape == (32,)
        p = out[t].numpy()
        assert ((p > 0) & (p < 1)).all()


@pytest.mark.parametrize("name", CORE)
def test_keras_file_round_trip_gives_equal_outputs(name, small_dataset, batch, tmp_path):
    net = build_model(name, load_manifest(small_dataset), _small(("click", "like")))
    assert_keras_round_trip(net, batch[0], str(tmp_path / f"{name}.keras"))


def test_esmm_outputs_are_products_of_conditionals(small_dataset, batch):
    tasks = ("click", "like", "share")
    out = build_model("esmm", load_manifest(small_dataset), _small(tasks))(batch[0])
    click, like_c, share_c = out["click"].numpy(), out["like_conditional"].numpy(), out["share_conditional"].numpy()
    np.testing.assert_allclose(out["like"].numpy(), click * like_c, rtol=1e-6)
    np.testing.assert_allclose(out["share"].numpy(), click * like_c * share_c, rtol=1e-6)


def test_trainer_loss_exact_value_with_mask_and_weights():
    inp = keras.Input((1,))
    net = keras.Model(inp, {"a": keras.layers.Dense(1)(inp)[:, 0], "b": keras.layers.Dense(1)(inp)[:, 0]})
    trainer = MultiTaskTrainer(net, ["a", "b"], {"b": 2.0})
    y = {"a": tf.constant([1.0, 0.0, 1.0]), "b": tf.constant([0.0, 1.0, 1.0])}
    p = {"a": tf.constant([0.9, 0.2, 0.6]), "b": tf.constant([0.3, 0.5, 0.8])}
    w = {"a": tf.constant([1.0, 1.0, 1.0]), "b": tf.constant([0.0, 1.0, 1.0])}  # b masked on row 0
    loss = float(trainer.compute_loss(y=y, y_pred=p, sample_weight=w))
    la = -(np.log(0.9) + np.log(0.8) + np.log(0.6)) / 3
    lb = -(np.log(0.5) + np.log(0.8)) / 3
    assert loss == pytest.approx(la + 2.0 * lb, rel=1e-5)
