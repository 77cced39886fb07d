"""The faster expert arithmetic equals the formulas it replaced (issue 12)."""

import keras
import numpy as np
import pytest
import tensorflow as tf
from keras import ops

from mtlrec.layers import CGCLayer, MixtureOfExperts
from mtlrec.layers.mixing import mix
from mtlrec.layers.stem import STEMLayer
from mtlrec.layers.transfer import AdaptiveInformationTransfer

B = 8


def _reference_mix(g, experts):
    """The formula the layers used before fusion: einsum over stacked experts."""
    return ops.einsum("bn,bnd->bd", g, ops.stack(experts, axis=1))


def _outputs_and_grads(fn, variables, inputs):
    with tf.GradientTape() as tape:
        tape.watch(inputs)
        outs = fn()
        loss = tf.add_n([tf.reduce_sum(tf.sin(o) * (i + 1)) for i, o in enumerate(outs)])
    grads = tape.gradient(loss, [*variables, *inputs])
    return [o.numpy() for o in outs], [g.numpy() for g in grads]


def _assert_same(fused, reference):
    (outs_f, grads_f), (outs_r, grads_r) = fused, reference
    assert len(outs_f) == len(outs_r) and len(grads_f) == len(grads_r)
    for a, b in zip(outs_f + grads_f, outs_r + grads_r):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


def test_mix_equals_einsum():
    g = tf.nn.softmax(tf.random.normal([B, 4]))
    experts = [tf.random.normal([B, 5]) for _ in range(4)]
    fused = _outputs_and_grads(lambda: [mix(g, experts)], [], [g, *experts])
    reference = _outputs_and_grads(lambda: [_reference_mix(g, experts)], [], [g, *experts])
    _assert_same(fused, reference)


def test_two_expert_softmax_mix_equals_einsum_through_the_softmax():
    """With `sum_to_one`, two experts mix as e1 + g0 (e0 - e1): the same
    outputs, and the same gradients for the logits and both experts."""
    logits = tf.random.normal([B, 2]) * 3
    experts = [tf.random.normal([B, 5]) for _ in range(2)]
    fused = _outputs_and_grads(lambda: [mix(tf.nn.softmax(logits), experts, sum_to_one=True)], [], [logits, *experts])
    reference = _outputs_and_grads(lambda: [_reference_mix(tf.nn.softmax(logits), experts)], [], [logits, *experts])
    _assert_same(fused, reference)


@pytest.mark.parametrize("num_experts", [2, 4])
def test_moe_equals_unfused(num_experts):
    keras.utils.set_random_seed(1)
    x = tf.random.normal([B, 7])
    layer = MixtureOfExperts(num_experts, (6, 5), num_gates=3)
    layer.build(x.shape)

    def reference():
        experts = [e(x) for e in layer.experts]
        return [_reference_mix(ops.softmax(gate(x)), experts) for gate in layer.gates]

    _assert_same(_outputs_and_grads(lambda: layer(x, training=True), layer.trainable_variables, [x]),
                 _outputs_and_grads(reference, layer.trainable_variables, [x]))


def _cgc_reference(layer, inputs, stop_others=False):
    """CGC (or STEM, `stop_others`) written expert by expert, as before fusion."""
    k, n = layer.num_task_experts, layer.num_tasks
    own = [[e(inputs[t]) for e in layer.task_expert_list[t * k:(t + 1) * k]] for t in range(n)]
    shared = [e(inputs[-1]) for e in layer.shared_experts]
    outputs = []
    for t in range(n):
        if stop_others:
            seen = [e if s == t else tf.stop_gradient(e) for s in range(n) for e in own[s]]
        else:
            seen = own[t]
        outputs.append(_reference_mix(ops.softmax(layer.task_gates[t](inputs[t])), seen + shared))
    if layer.shared_gate is not None:
        every = [tf.stop_gradient(e) if stop_others else e for task in own for e in task]
        outputs.append(_reference_mix(ops.softmax(layer.shared_gate(inputs[-1])), every + shared))
    return outputs


@pytest.mark.parametrize("kind", ["cgc", "stem"])
@pytest.mark.parametrize("same_input", [True, False])
@pytest.mark.parametrize("experts", [(2, 2), (1, 1)], ids=["4-8 experts per gate", "2-expert CGC task gates"])
def test_extraction_layers_equal_unfused(kind, same_input, experts):
    keras.utils.set_random_seed(2)
    if same_input:  # a first level: one tensor for every task and the shared part
        x = tf.random.normal([B, 7])
        inputs = [x] * 4
        watched = [x]
    else:
        inputs = [tf.random.normal([B, 7]) for _ in range(4)]
        watched = inputs
    cls = CGCLayer if kind == "cgc" else STEMLayer
    layer = cls(3, *experts, (6, 5))
    layer.build([x.shape for x in inputs])
    variables = layer.trainable_variables
    fused = _outputs_and_grads(lambda: layer(inputs, training=True), variables, watched)
    reference = _outputs_and_grads(lambda: _cgc_reference(layer, inputs, stop_others=kind == "stem"), variables, watched)
    _assert_same(fused, reference)
    assert len(fused[0]) == 4


@pytest.mark.parametrize("experts,is_last", [((1, 1), True), ((2, 3), True), ((2, 0), False), ((0, 3), False)])
def test_cgc_levels_of_every_shape_equal_unfused(experts, is_last):
    """Last levels (no shared gate), no shared experts and shared experts only."""
    keras.utils.set_random_seed(3)
    inputs = [tf.random.normal([B, 7]) for _ in range(3)]
    layer = CGCLayer(2, *experts, (6, 5), is_last=is_last)
    layer.build([x.shape for x in inputs])
    variables = layer.trainable_variables
    _assert_same(_outputs_and_grads(lambda: layer(inputs, training=True), variables, inputs),
                 _outputs_and_grads(lambda: _cgc_reference(layer, inputs), variables, inputs))


def test_ait_equals_stacked_dense():
    """The 2-D projections give what the Dense layers on the (b, 2, d) stack gave."""
    keras.utils.set_random_seed(3)
    q, z = tf.random.normal([B, 6]), tf.random.normal([B, 7])
    layer = AdaptiveInformationTransfer(5)
    layer.build([q.shape, z.shape])

    def reference():
        c = ops.stack([layer.own(q), layer.transfer(z)], axis=1)
        w = ops.softmax(ops.sum(layer.query(c) * layer.key(c), axis=-1) / 5**0.5, axis=-1)
        return [ops.sum(w[..., None] * layer.value(c), axis=1), w]

    _assert_same(_outputs_and_grads(lambda: list(layer([q, z], return_weights=True)), layer.trainable_variables, [q, z]),
                 _outputs_and_grads(reference, layer.trainable_variables, [q, z]))



def _ame_features():
    return [
        {"name": "user_id", "kind": "id", "table": "user_id", "vocab_size": 50, "hashed": False},
        {"name": "item_id", "kind": "id", "table": "item_id", "vocab_size": 80, "hashed": False},
        {"name": "hist", "kind": "sequence", "table": "item_id", "vocab_size": 80, "hashed": False, "length": 4},
        {"name": "site", "kind": "categorical", "table": "site", "vocabulary": ["a", "b", "c"]},
        {"name": "price", "kind": "numeric", "mean": 1.0, "std": 2.0},
    ]


def test_fused_embedding_sets_equal_separate_tables():
    """AME's sets as column blocks of one table per feature give the outputs,
    L2 and gradients of one table per set and feature (APLE, STEM)."""
    from mtlrec.layers.multi_embedding import AsymmetricMultiEmbedding

    rng = np.random.default_rng(0)
    inputs = {"user_id": tf.constant(rng.integers(-2, 60, B)), "item_id": tf.constant(rng.integers(0, 90, B)),
              "hist": tf.constant(rng.integers(0, 80, (B, 4))), "site": tf.constant(["a", "c", "zz", "b"] * (B // 4)),
              "price": tf.constant(rng.normal(size=B), tf.float32)}
    keras.utils.set_random_seed(2)
    separate = AsymmetricMultiEmbedding(_ame_features(), 3, task_dims=(2, 5), shared_dim=3, l2=0.01)
    fused = AsymmetricMultiEmbedding(_ame_features(), 3, task_dims=(2, 5), shared_dim=3, l2=0.01, fused=True)
    separate.build(None)
    fused.build(None)
    assert [s.dim for s in separate.sets] == [2, 5, 2, 3] and fused.table_set.dim == 12
    for name, table in fused.table_set.tables.items():  # the fused rows: [task 0 | task 1 | task 2 | shared]
        table.embeddings.assign(np.concatenate([s.tables[name].embeddings.numpy() for s in separate.sets], axis=1))

    def run(layer):
        with tf.GradientTape() as tape:
            outs = layer(inputs, training=True)
            loss = tf.add_n([tf.reduce_sum(tf.sin(o) * (i + 1)) for i, o in enumerate(outs)]) + tf.add_n(layer.losses)
        grads = tape.gradient(loss, layer.trainable_variables)
        return [o.numpy() for o in outs], float(tf.add_n(layer.losses)), grads

    outs_f, l2_f, grads_f = run(fused)
    outs_s, l2_s, grads_s = run(separate)
    assert [o.shape for o in outs_f] == [o.shape for o in outs_s] == [(B, 4 * d + 1) for d in (2, 5, 2, 3)]
    for a, b in zip(outs_f, outs_s):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7)
    assert l2_f == pytest.approx(l2_s, rel=1e-5) and l2_f > 0
    dense = {v.path: tf.convert_to_tensor(g).numpy() for v, g in zip(fused.trainable_variables, grads_f)}
    by_set = [{v.path.split("/")[-2]: tf.convert_to_tensor(g).numpy()
               for v, g in zip(s.trainable_variables, grads_s[i * 3:(i + 1) * 3])} for i, s in enumerate(separate.sets)]
    assert len(grads_s) == 12 and len(grads_f) == 3
    for path, grad in dense.items():
        table = path.split("/")[-2]
        np.testing.assert_allclose(grad, np.concatenate([g[table] for g in by_set], axis=1), rtol=1e-5, atol=1e-7)


def test_narrow_dense_equals_dense():
    """Gates' and logits' NarrowDense: Dense's outputs and gradients, its weights' layout."""
    from mtlrec.layers.narrow import NarrowDense

    x = tf.random.normal([64, 9])
    narrow, dense = NarrowDense(3), keras.layers.Dense(3)
    narrow.build(x.shape)
    dense.build(x.shape)
    dense.set_weights([w + 0.1 for w in narrow.get_weights()])  # non-zero bias
    narrow.set_weights(dense.get_weights())
    assert [w.path.split("/")[-1] for w in narrow.weights] == ["kernel", "bias"]
    _assert_same(_outputs_and_grads(lambda: [narrow(x)], narrow.trainable_variables, [x]),
                 _outputs_and_grads(lambda: [dense(x)], dense.trainable_variables, [x]))
