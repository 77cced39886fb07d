"""Expert groups mixed by softmax gates: OMoE (one gate), MMoE (a gate per task)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from mtlrec.layers.mixing import mix
from mtlrec.layers.mlp import MLP
from mtlrec.layers.narrow import NarrowDense


@keras.saving.register_keras_serializable(package="mtlrec")
class MixtureOfExperts(keras.layers.Layer):
    """`num_gates` softmax-gated mixtures of shared experts.

    For gate k: `y_k = sum_i g_k(x)_i * e_i(x)`, `g_k(x) = softmax(W_k x)`.
    One gate is OMoE; one gate per task is MMoE.

    Args:
        num_experts: number of expert MLPs.
        expert_units: widths of each expert MLP.
        num_gates: number of gates (mixtures returned).
        dropout: dropout inside the experts.

    Input shape: `(batch, d)`.
    Output: a list of `num_gates` tensors `(batch, expert_units[-1])`; with
    `return_gates=True` in `call`, also the list of `(batch, num_experts)`
    gate weights.

    References: Ma et al., "Modeling Task Relationships in Multi-task
    Learning with Multi-gate Mixture-of-Experts", KDD 2018, section 4.
    """

    def __init__(self, num_experts: int, expert_units: Sequence[int], num_gates: int = 1,
                 dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if num_experts < 1 or num_gates < 1:
            raise ValueError(
                f"num_experts and num_gates must be >= 1. Received: num_experts={num_experts}, "
                f"num_gates={num_gates}"
            )
        self.num_experts = int(num_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.num_gates = int(num_gates)
        self.dropout = dropout
        self.experts = [MLP(self.expert_units, dropout=dropout, name=f"expert_{i}") for i in range(num_experts)]
        self.gates = [NarrowDense(num_experts, name=f"gate_{k}") for k in range(num_gates)]

    def build(self, input_shape):
        for layer in (*self.experts, *self.gates):
            layer.build(input_shape)
        self.built = True

    def call(self, x, training=None, return_gates=False):
        experts = [e(x, training=training) for e in self.experts]
        outputs, weights = [], []
        for gate in self.gates:
            g = ops.softmax(gate(x), axis=-1)
            outputs.append(mix(g, experts, sum_to_one=True))
            weights.append(g)
        return (outputs, weights) if return_gates else outputs

    def compute_output_shape(self, input_shape):
        return [tuple(input_shape[:-1]) + (self.expert_units[-1],)] * self.num_gates

    def get_config(self):
        return {
            **super().get_config(),
            "num_experts": self.num_experts,
            "expert_units": self.expert_units,
            "num_gates": self.num_gates,
            "dropout": self.dropout,
        }
