"""Exact-value layer tests with fixed weights, shapes and config round-trips."""

import keras
import numpy as np
import pytest
from keras import ops

from mtlrec.layers import MLP, CGCLayer, FunnelProduct, MixtureOfExperts, Tower
from mtlrec.layers.embedding import EmbeddingTable, FeatureEmbedding


def _constant_gates(layer_gates):
    for gate in layer_gates:
        w, b = gate.get_weights()
        gate.set_weights([np.zeros_like(w), np.zeros_like(b)])


def test_funnel_product_multiplies_probabilities():
    p = [np.array([0.5, 0.2]), np.array([0.4, 0.9]), np.array([0.25, 1.0])]
    out = [ops.convert_to_numpy(o) for o in FunnelProduct()(p)]
    np.testing.assert_allclose(out[0], [0.5, 0.2])
    np.testing.assert_allclose(out[1], [0.2, 0.18], rtol=1e-6)
    np.testing.assert_allclose(out[2], [0.05, 0.18], rtol=1e-6)


@pytest.mark.parametrize("num_gates", [1, 2, 4])
def test_moe_gates_sum_to_one_and_constant_gate_is_expert_mean(num_gates):
    layer = MixtureOfExperts(3, [4], num_gates=num_gates)
    x = np.random.default_rng(0).normal(size=(5, 6)).astype("float32")
    outputs, gates = layer(x, return_gates=True)
    assert len(outputs) == num_gates and outputs[0].shape == (5, 4)
    for g in gates:
        np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(g, axis=-1)), np.ones(5), rtol=1e-6)
    _constant_gates(layer.gates)
    outputs = layer(x)
    mean = np.mean([ops.convert_to_numpy(e(x)) for e in layer.experts], axis=0)
    for o in outputs:
        np.testing.assert_allclose(ops.convert_to_numpy(o), mean, rtol=1e-5, atol=1e-6)


def test_cgc_gates_sum_to_one_and_constant_gates_average_the_right_experts():
    layer = CGCLayer(num_tasks=2, num_task_experts=2, num_shared_experts=1, expert_units=[3])
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(4, 5)).astype("float32") for _ in range(3)]
    outputs, gates = layer(xs, return_gates=True)
    assert len(outputs) == 3 and [g.shape[-1] for g in gates] == [3, 3, 5]
    for g in gates:
        np.testing.assert_allclose(ops.convert_to_numpy(ops.sum(g, axis=-1)), np.ones(4), rtol=1e-6)
    _constant_gates([*layer.task_gates, layer.shared_gate])
    outputs = [ops.convert_to_numpy(o) for o in layer(xs)]
    shared = [ops.convert_to_numpy(e(xs[2])) for e in layer.shared_experts]
    own = [[ops.convert_to_numpy(e(xs[t])) for e in layer.task_experts[t]] for t in range(2)]
    for t in range(2):
        np.testing.assert_allclose(outputs[t], np.mean(own[t] + shared, axis=0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(outputs[2], np.mean(own[0] + own[1] + shared, axis=0), rtol=1e-5, atol=1e-6)
    last = CGCLayer(2, 1, 1, [3], is_last=True)
    assert len(last(xs)) == 2


def test_tower_is_sigmoid_of_linear_logit():
    tower = Tower(units=[])
    x = np.array([[1.0, 2.0], [0.0, -1.0]], "float32")
    tower(x)
    tower.logit.set_weights([np.array([[0.5], [-1.0]], "float32"), np.array([0.25], "float32")])
    z = x @ np.array([0.5, -1.0]) + 0.25
    np.testing.assert_allclose(ops.convert_to_numpy(tower(x)), 1 / (1 + np.exp(-z)), rtol=1e-6)


def _specs():
    return [
        {"name": "item", "kind": "id", "table": "item", "vocab_size": 4, "hashed": False},
        {"name": "city", "kind": "categorical", "table": "city", "vocabulary": ["paris", "rome"]},
        {"name": "hist", "kind": "sequence", "table": "item", "vocab_size": 4, "hashed": False, "length": 3},
        {"name": "price", "kind": "numeric", "mean": 10.0, "std": 2.0},
    ]


def test_feature_embedding_lookup_oov_pooling_and_normalisation():
    layer = FeatureEmbedding(_specs(), dim=2)
    inputs = {
        "item": np.array([0, 3, 4, -7, 10**15]),
        "city": np.array(["rome", "paris", "oslo", "", "rome"]),
        "hist": np.array([[1, 2, 0], [0, 0, 0], [3, 99, 0], [1, 1, 1], [-1, 0, 0]]),
        "price": np.array([10.0, 12.0, 8.0, 10.0, 14.0], "float32"),
    }
    layer(inputs)
    item_table = np.arange(10, dtype="float32").reshape(5, 2)  # row 0 = OOV, row i+1 = id i
    city_table = np.array([[-1, -1], [1, 0], [0, 1]], "float32")  # 0 = OOV, paris, rome
    layer.tables["item"].set_weights([item_table])
    layer.tables["city"].set_weights([city_table])
    out = ops.convert_to_numpy(layer(inputs))
    assert out.shape == (5, 2 + 2 + 2 + 1)
    np.testing.assert_array_equal(out[:, 0:2], item_table[[1, 4, 0, 0, 0]])  # 4, -7, 1e15 -> OOV
    np.testing.assert_array_equal(out[:, 2:4], city_table[[2, 1, 0, 0, 2]])
    np.testing.assert_allclose(out[0, 4:6], (item_table[2] + item_table[3]) / 2)
    np.testing.assert_array_equal(out[1, 4:6], [0, 0])  # empty history
    np.testing.assert_allclose(out[2, 4:6], (item_table[4] + item_table[0]) / 2)  # unseen item -> OOV row
    np.testing.assert_allclose(out[3, 4:6], item_table[2])
    np.testing.assert_allclose(out[4, 4:6], item_table[0])  # negative id: OOV, not padding
    np.testing.assert_allclose(out[:, 6], [0.0, 1.0, -1.0, 0.0, 2.0])


def test_embedding_l2_penalises_looked_up_rows_only():
    layer = FeatureEmbedding(_specs()[:1], dim=2, l2=0.5)
    x = {"item": np.array([0, 1])}
    layer(x)
    layer.tables["item"].set_weights([np.array([[9, 9], [1, 2], [3, 0], [9, 9], [9, 9]], "float32")])
    layer(x, training=True)
    assert float(ops.convert_to_numpy(layer.losses[0])) == pytest.approx(0.5 * (5 + 9) / 2)


def test_embedding_table_gradient_is_row_sparse():
    import tensorflow as tf

    table = EmbeddingTable(1000, 4)
    table.build()
    with tf.GradientTape() as tape:
        loss = tf.reduce_sum(table(tf.constant([3, 5])))
    assert isinstance(tape.gradient(loss, table.trainable_variables[0]), tf.IndexedSlices)


def test_pooled_lookup_equals_per_position_mean_and_its_gradient_has_one_row_per_id():
    import tensorflow as tf

    table = EmbeddingTable(50, 3)
    table.build()
    rng = np.random.default_rng(0)
    ids = tf.constant(rng.integers(0, 50, size=(64, 10)))
    valid = tf.constant(rng.random((64, 10)) < 0.7)
    valid = tf.tensor_scatter_nd_update(valid, [[5, i] for i in range(10)], [False] * 10)  # an empty row
    upstream = tf.constant(rng.normal(size=(64, 3)).astype("float32"))
    with tf.GradientTape(persistent=True) as tape:
        pooled = table.mean_of(ids, valid)
        mask = tf.cast(valid, "float32")[..., None]
        reference = tf.reduce_sum(table(ids) * mask, 1) / tf.maximum(tf.reduce_sum(mask, 1), 1.0)
        loss, ref_loss = tf.reduce_sum(pooled * upstream), tf.reduce_sum(reference * upstream)
    np.testing.assert_allclose(pooled.numpy(), reference.numpy(), rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(pooled.numpy()[5], [0, 0, 0])
    variable = table.trainable_variables[0]
    grad, ref_grad = tape.gradient(loss, variable), tape.gradient(ref_loss, variable)
    assert isinstance(grad, tf.IndexedSlices)
    # One row per distinct id (invalid positions' ids included: the optimizer touches the same rows) ...
    np.testing.assert_array_equal(np.sort(grad.indices.numpy()), np.unique(ids.numpy()))
    assert grad.values.shape[0] < ref_grad.values.shape[0] == 640
    # ... and the same dense gradient.
    np.testing.assert_allclose(tf.convert_to_tensor(grad).numpy(), tf.convert_to_tensor(ref_grad).numpy(),
                               rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    "layer",
    [
        MLP([4, 3], dropout=0.1),
        MixtureOfExperts(2, [3], num_gates=2),
        Tower([3]),
        FeatureEmbedding(_specs(), dim=2, l2=0.1),
    ],
    ids=lambda x: type(x).__name__,
)
def test_get_config_round_trip(layer):
    clone = type(layer).from_config(layer.get_config())
    assert clone.get_config() == layer.get_config()


def test_cgc_config_round_trip_gives_equal_outputs(tmp_path):
    xs = [keras.Input((5,)) for _ in range(3)]
    outs = CGCLayer(2, 1, 2, [4], name="cgc")(xs)
    model = keras.Model(xs, outs)
    data = [np.random.default_rng(i).normal(size=(3, 5)).astype("float32") for i in range(3)]
    path = str(tmp_path / "cgc.keras")
    model.save(path)
    loaded = keras.saving.load_model(path)
    for a, b in zip(model(data), loaded(data)):
        np.testing.assert_allclose(ops.convert_to_numpy(a), ops.convert_to_numpy(b), rtol=1e-6)
