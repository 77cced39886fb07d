"""APLE and DLEN pieces: exact values with fixed weights, weight counts."""

import numpy as np
import pytest
from keras import ops

from mtlrec.config import ModelConfig
from mtlrec.data import load_manifest
from mtlrec.layers import Tower
from mtlrec.layers.dlen import LatentPreferenceHead
from mtlrec.layers.embedding import feature_specs
from mtlrec.layers.multi_embedding import AsymmetricMultiEmbedding, LowRankMultiEmbedding, embedding_params
from mtlrec.layers.residual import ResidualInterTaskBlock
from mtlrec.models import build_model
from tests.helpers import assert_keras_round_trip, valid_features

SPECS = [
    {"name": "item", "kind": "id", "table": "item", "vocab_size": 5, "hashed": False},
    {"name": "user", "kind": "id", "table": "user", "vocab_size": 3, "hashed": False},
    {"name": "price", "kind": "numeric", "mean": 0.0, "std": 1.0},
]
INPUTS = {"item": np.array([0, 4, 9]), "user": np.array([2, 0, 1]), "price": np.array([0.5, -1.0, 2.0], "float32")}


def test_ame_gives_each_task_its_own_set_and_width():
    layer = AsymmetricMultiEmbedding(SPECS, num_tasks=3, task_dims=[2, 4], shared_dim=3)
    outs = layer(INPUTS)
    assert [o.shape[-1] for o in outs] == [2 * 2 + 1, 4 * 2 + 1, 2 * 2 + 1, 3 * 2 + 1]
    tables = [s.tables["item"].embeddings for s in layer.sets]
    assert len({id(t) for t in tables}) == 4  # four distinct tables
    # Task 0's output is exactly its own table's rows.
    w = ops.convert_to_numpy(layer.sets[0].tables["item"].embeddings)
    np.testing.assert_array_equal(ops.convert_to_numpy(outs[0])[:, :2], w[[1, 5, 0]])


def test_low_rank_task_embedding_is_shared_row_times_a_times_b():
    layer = LowRankMultiEmbedding(SPECS, num_tasks=2, task_dims=[3, 2], shared_dim=4, rank=2)
    outs = [ops.convert_to_numpy(o) for o in layer(INPUTS)]
    item = ops.convert_to_numpy(layer.shared.tables["item"].embeddings)[[1, 5, 0]]  # (3, 4)
    user = ops.convert_to_numpy(layer.shared.tables["user"].embeddings)[[3, 1, 2]]
    for t, d in enumerate([3, 2]):
        a, b = ops.convert_to_numpy(layer.down[t]), ops.convert_to_numpy(layer.up[t])
        np.testing.assert_allclose(outs[t][:, :d], item @ a[0] @ b[0], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outs[t][:, d : 2 * d], user @ a[1] @ b[1], rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(outs[t][:, -1], INPUTS["price"])
    np.testing.assert_allclose(outs[2][:, :4], item, rtol=1e-6)


def test_embedding_param_formula_matches_layers():
    rows = {"item": 6, "user": 4}
    ame = AsymmetricMultiEmbedding(SPECS, num_tasks=2, task_dims=[3, 5], shared_dim=4)
    ame(INPUTS)
    assert ame.count_params() == embedding_params(rows, 2, [3, 5], 4)
    low = LowRankMultiEmbedding(SPECS, num_tasks=2, task_dims=[3, 5], shared_dim=4, rank=2)
    low(INPUTS)
    assert low.count_params() == embedding_params(rows, 2, [3, 5], 4, rank=2)


def test_residual_block_exact_values_and_no_extra_weights():
    units = [3, 2]
    block = ResidualInterTaskBlock(num_tasks=3, units=units, activation="linear")
    rng = np.random.default_rng(0)
    xs = [rng.normal(size=(4, 5)).astype("float32") for _ in range(3)]
    out = [ops.convert_to_numpy(o) for o in block(xs)]
    h = list(xs)
    for level in range(2):
        prev = None
        for t in range(3):
            w, b = block.block(t, level).get_weights()
            o = h[t] @ w + b
            if prev is not None:
                o = o + prev
            h[t] = prev = o
    for t in range(3):
        w, b = block.logits[t].get_weights()
        np.testing.assert_allclose(out[t], 1 / (1 + np.exp(-(h[t] @ w + b)[:, 0])), rtol=1e-5)
    plain = [Tower(units) for _ in range(3)]
    for tower, x in zip(plain, xs):
        tower(x)
    assert block.count_params() == sum(t.count_params() for t in plain)


def test_dlen_head_formulas_exactly():
    head = LatentPreferenceHead(alphas=[0.1, 0.05], tower_units=[], hidden_units=[3])
    rng = np.random.default_rng(1)
    xs = [rng.normal(size=(6, 4)).astype("float32") for _ in range(3)]
    out = [ops.convert_to_numpy(o) for o in head(xs)]
    sig = lambda z: 1 / (1 + np.exp(-z))  # noqa: E731
    w1, b1 = head.hidden.dense_layers[0].get_weights()
    w2, b2 = head.up_logit.get_weights()
    p_up = sig((np.maximum(xs[2] @ w1 + b1, 0) @ w2 + b2)[:, 0])
    np.testing.assert_allclose(out[4], p_up, rtol=1e-5)
    for t, alpha in enumerate([0.1, 0.05]):
        wu, bu = head.given_up[t].get_weights()
        wn, bn = head.given_not_up[t].get_weights()
        given_up = sig((xs[t] @ wu + bu)[:, 0])
        given_not = alpha * sig((xs[t] @ wn + bn)[:, 0])
        np.testing.assert_allclose(out[t], given_up * p_up + given_not * (1 - p_up), rtol=1e-5)
        np.testing.assert_allclose(out[2 + t], given_up * p_up, rtol=1e-5)


def test_dlen_not_up_probability_stays_below_alpha():
    head = LatentPreferenceHead(alphas=[0.2], tower_units=[], hidden_units=[2])
    x = np.full((3, 2), 1e4, "float32")
    head([x, x])
    head.given_not_up[0].set_weights([np.ones((2, 1), "float32"), np.array([50.0], "float32")])
    head.given_up[0].set_weights([np.full((2, 1), -1.0, "float32"), np.zeros(1, "float32")])
    head.up_logit.set_weights([np.full((2, 1), -1.0, "float32"), np.zeros(1, "float32")])
    p_task, p_joint, p_up = (ops.convert_to_numpy(o) for o in head([x, x]))
    # P(UP) ~ 0 and P(t|UP) ~ 0: P(t) is P(t|~UP), which must stay <= alpha.
    assert (p_task <= 0.2 + 1e-7).all() and (p_task > 0.19).all()
    assert (p_joint < 1e-6).all()
    with pytest.raises(ValueError, match="alphas must be in"):
        LatentPreferenceHead(alphas=[0.0])


@pytest.mark.parametrize("name", ["aple", "aple_lowrank", "ple_ame", "ple_residual", "mmoe_dlen", "ple_dlen"])
def test_keras_round_trip(name, small_dataset, tmp_path):
    m = load_manifest(small_dataset)
    net = build_model(name, m, ModelConfig(tasks=("click", "like", "share"), embedding_dim=4, expert_units=(8,),
                                          tower_units=(4,), ame_task_dims=(4, 8), ame_shared_dim=4, ame_rank=2))
    assert_keras_round_trip(net, valid_features(small_dataset), str(tmp_path / "m.keras"))
    if name.endswith("dlen"):
        rates = m.splits["train"]["positive_rate"]
        head = net.get_layer("dlen")
        assert head.alphas == pytest.approx([0.3 * rates[t] for t in ("click", "like", "share")])


def test_ple_residual_has_exactly_ples_weights(small_dataset):
    m = load_manifest(small_dataset)
    cfg = ModelConfig(tasks=("click", "like", "share"), embedding_dim=4, expert_units=(8,), tower_units=(4,))
    assert build_model("ple_residual", m, cfg).count_params() == build_model("ple", m, cfg).count_params()


def test_feature_specs_cover_schema(small_dataset):
    specs = feature_specs(load_manifest(small_dataset))
    assert [s["name"] for s in specs] == ["user_id", "item_id", "video_category", "gender", "age", "hist"]
    assert specs[-1]["table"] == "item_id"
