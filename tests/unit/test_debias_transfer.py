"""ESCM2, AITM and STEM: exact losses against numpy, the STEM gradient rule."""

import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from mtlrec.config import ModelConfig
from mtlrec.data import load_manifest
from mtlrec.layers.stem import STEMLayer
from mtlrec.layers.transfer import AdaptiveInformationTransfer
from mtlrec.models import build_model
from mtlrec.training.losses import aitm_calibrator, escm2_counterfactual, model_loss
from tests.helpers import assert_keras_round_trip, valid_features

TASKS = ("click", "like", "share")
RNG = np.random.default_rng(0)
N = 8
Y = {"click": np.array([1, 0, 1, 1, 0, 0, 1, 0], "float32"),
     "like": np.array([1, 0, 0, 1, 0, 0, 0, 0], "float32"),
     "share": np.array([0, 0, 0, 1, 0, 0, 0, 0], "float32")}
P = {"click": np.array([0.9, 0.02, 0.5, 0.7, 0.1, 0.3, 0.04, 0.2], "float32"),
     "like_conditional": RNG.uniform(0.05, 0.95, N).astype("float32"),
     "share_conditional": RNG.uniform(0.05, 0.95, N).astype("float32"),
     "like_imputed_error": RNG.uniform(0.1, 2.0, N).astype("float32"),
     "share_imputed_error": RNG.uniform(0.1, 2.0, N).astype("float32")}
P["like"] = P["click"] * P["like_conditional"]
P["share"] = P["like"] * P["share_conditional"]


def _bce(y, p):
    p = np.clip(p.astype(np.float64), 1e-7, 1 - 1e-7)
    return -(y * np.log(p) + (1 - y) * np.log(1 - p))


def _numpy_cf(kind, clip=0.05):
    total = 0.0
    for parent, task in zip(TASKS[:-1], TASKS[1:]):
        o = Y[parent]
        prop = np.maximum(P[parent].astype(np.float64), clip)
        e = _bce(Y[task], P[f"{task}_conditional"])
        if kind == "ips":
            total += np.sum(o * e / prop) / N
        else:
            eh = P[f"{task}_imputed_error"].astype(np.float64)
            total += np.sum(eh + o * (e - eh) / prop) / N + np.sum(o * (e - eh) ** 2 / prop) / N
    return total


@pytest.mark.parametrize("kind", ["ips", "dr"])
def test_escm2_loss_matches_numpy(kind):
    got = float(escm2_counterfactual(Y, P, TASKS, kind=kind, clip=0.05))
    assert got == pytest.approx(_numpy_cf(kind), rel=1e-5)
    spec = {"kind": f"escm2_{kind}", "lambda_cf": 0.3, "clip": 0.05}
    assert float(model_loss(spec, Y, P, TASKS)) == pytest.approx(0.3 * _numpy_cf(kind), rel=1e-5)


def test_escm2_propensity_is_clipped_and_stop_gradiented():
    click = tf.Variable(P["click"])
    with tf.GradientTape() as tape:
        loss = escm2_counterfactual(Y, {**P, "click": click}, TASKS[:2], kind="ips", clip=0.05)
    assert tape.gradient(loss, click) is None
    # Row 6 is clicked with p = 0.04 < clip: weight 1 / 0.05, not 1 / 0.04.
    assert float(loss) == pytest.approx(_numpy_cf_first_step(), rel=1e-5)


def _numpy_cf_first_step():
    o, prop = Y["click"], np.maximum(P["click"].astype(np.float64), 0.05)
    return np.sum(o * _bce(Y["like"], P["like_conditional"]) / prop) / N


def test_aitm_calibrator_value():
    p = {"click": np.array([0.5, 0.2, 0.1, 0.4], "float32"), "like": np.array([0.6, 0.1, 0.3, 0.4], "float32"),
         "share": np.array([0.7, 0.0, 0.0, 0.5], "float32")}
    expect = np.mean([0.1, 0, 0.2, 0]) + np.mean([0.1, 0, 0, 0.1])
    assert float(aitm_calibrator(p, TASKS)) == pytest.approx(expect, rel=1e-6)


def test_ait_attention_weights_sum_to_one_and_mix_values():
    layer = AdaptiveInformationTransfer(4)
    q, z = RNG.normal(size=(5, 6)).astype("float32"), RNG.normal(size=(5, 3)).astype("float32")
    out, w = layer([q, z], return_weights=True)
    np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(w, -1)), np.ones(5), rtol=1e-6)
    own = ops.convert_to_numpy(layer.value(layer.own(q)))
    passed = ops.convert_to_numpy(layer.value(layer.transfer(z)))
    w = ops.convert_to_numpy(w)
    np.testing.assert_allclose(ops.convert_to_numpy(out), w[:, :1] * own + w[:, 1:] * passed, rtol=1e-5, atol=1e-6)


def test_stem_other_tasks_experts_get_zero_gradient_but_shape_the_output():
    layer = STEMLayer(num_tasks=2, num_task_experts=1, num_shared_experts=1, expert_units=[3], is_last=True)
    xs = [tf.constant(RNG.normal(size=(4, 5)).astype("float32")) for _ in range(3)]
    layer(xs)
    b_expert = layer.task_expert_list[1]  # task B's specific expert
    with tf.GradientTape() as tape:
        loss_a = tf.reduce_sum(layer(xs)[0])
    b_vars = [v.value for v in b_expert.trainable_variables]
    grads = tape.gradient(loss_a, b_vars, unconnected_gradients=tf.UnconnectedGradients.ZERO)
    assert len(grads) == 2 and all(np.all(g.numpy() == 0) for g in grads)
    own_grads = tape_grads(layer, xs, layer.task_expert_list[0])
    assert any(np.abs(g).sum() > 0 for g in own_grads)
    before = layer(xs)[0].numpy()
    b_expert.set_weights([w + 1.0 for w in b_expert.get_weights()])
    assert not np.allclose(layer(xs)[0].numpy(), before), "task A's forward must depend on B's experts"


def tape_grads(layer, xs, expert):
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(layer(xs)[0])
    return [g.numpy() for g in tape.gradient(loss, expert.trainable_variables)]


@pytest.mark.parametrize("name", ["escm2_ips", "escm2_dr", "aitm", "stem"])
def test_keras_round_trip(name, small_dataset, tmp_path):
    m = load_manifest(small_dataset)
    net = build_model(name, m, ModelConfig(tasks=TASKS, embedding_dim=4, expert_units=(8,), tower_units=(4,)))
    assert_keras_round_trip(net, valid_features(small_dataset), str(tmp_path / "m.keras"))
