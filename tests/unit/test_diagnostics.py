"""mtlrec.diagnostics: reliability bins and the gates' mean weights."""

import numpy as np

from mtlrec import diagnostics
from mtlrec.config import ModelConfig, parse_tasks
from mtlrec.data import load_manifest, make_dataset
from mtlrec.models import build_model


def test_reliability_bins_have_equal_counts_of_the_weighted_rows():
    probs = np.array([0.1, 0.9, 0.2, 0.8, 0.3, 0.7, 0.5, 0.5])
    labels = np.array([0, 1, 0, 1, 1, 0, 1, 0])
    weights = np.array([1, 1, 1, 1, 1, 1, 0, 0])  # the two 0.5s are masked
    out = diagnostics.reliability(labels, probs, weights, bins=3)
    assert out["rows"] == [2, 2, 2]
    np.testing.assert_allclose(out["mean_prediction"], [0.15, 0.5, 0.85])
    np.testing.assert_allclose(out["positive_rate"], [0.0, 0.5, 1.0])
    assert diagnostics.reliability([1, 0], [0.4, 0.6], bins=10)["rows"] == [1, 1]


def test_mean_gate_weights_of_mmoe_sum_to_one_per_gate(small_dataset):
    manifest = load_manifest(small_dataset)
    tasks = ("click", "like")
    network = build_model("mmoe", manifest, ModelConfig(tasks=tasks, embedding_dim=4, expert_units=(8,),
                                                         tower_units=(4,), num_experts=3))
    probe = diagnostics.GateProbe(network, list(tasks))
    assert [layer.name for layer in probe.layers] == [layer.name for layer in diagnostics.gated_layers(network)]
    ds = make_dataset(manifest, "valid", 64, parse_tasks("click,like"), shuffle=False)
    (layer,) = probe.mean_weights(ds, max_rows=100)
    assert layer["rows"] == 100 and len(layer["gates"]) == 2 and len(layer["experts"]) == 3
    np.testing.assert_allclose(np.sum(layer["weights"], axis=1), [1.0, 1.0], atol=1e-5)
