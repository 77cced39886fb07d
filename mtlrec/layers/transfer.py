"""AITM's adaptive information transfer unit."""

from __future__ import annotations

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="mtlrec")
class AdaptiveInformationTransfer(keras.layers.Layer):
    """Mixes a task's own representation with what the previous task passes on.

    `p = transfer(z_(t-1))` (a dense projection), then attention over the
    two candidates `u in {q_t, p}`: `w_u = softmax_u(<h1(u), h2(u)> / sqrt(d))`,
    `z_t = sum_u w_u h3(u)`, with learned query/key/value projections
    h1, h2, h3.

    Args:
        units: width d of the projections and of the output.

    Input: `[q_t, z_prev]`, each `(batch, d_in)`. Output: `(batch, units)`;
    with `return_weights=True` also the `(batch, 2)` attention weights.

    References: Xi et al., "Modeling the Sequential Dependence among
    Audience Multi-step Conversions with Multi-task Learning" (AITM), KDD
    2021, section 3.3, equations (3)-(6).
    """

    def __init__(self, units: int, **kwargs):
        super().__init__(**kwargs)
        if units < 1:
            raise ValueError(f"units must be >= 1. Received: units={units}")
        self.units = int(units)
        self.transfer = keras.layers.Dense(units, activation="relu", name="transfer")
        self.query = keras.layers.Dense(units, use_bias=False, name="query")
        self.key = keras.layers.Dense(units, use_bias=False, name="key")
        self.value = keras.layers.Dense(units, use_bias=False, name="value")
        self.own = keras.layers.Dense(units, activation="relu", name="own")

    def build(self, input_shape):
        own_shape, prev_shape = tuple(input_shape[0]), tuple(input_shape[1])
        self.transfer.build(prev_shape)
        self.own.build(own_shape)
        shape = own_shape[:-1] + (self.units,)
        for layer in (self.query, self.key, self.value):
            layer.build(shape)
        self.built = True

    def call(self, inputs, return_weights=False):
        q_t, z_prev = inputs
        # The projections act on each candidate as a 2-D (batch, d) matmul:
        # a Dense on the stacked (batch, 2, d) tensor gives the same numbers,
        # but its gradient is a broadcast batch matmul plus a reduction,
        # which took two thirds of AITM's step on CPU (docs/BENCHMARKS.md).
        candidates = [self.own(q_t), self.transfer(z_prev)]
        scores = ops.stack([ops.sum(self.query(u) * self.key(u), axis=-1) for u in candidates], axis=1)
        weights = ops.softmax(scores / (self.units**0.5), axis=-1)  # (b, 2)
        z = weights[:, 0:1] * self.value(candidates[0]) + weights[:, 1:2] * self.value(candidates[1])
        return (z, weights) if return_weights else z

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[0][:-1]) + (self.units,)

    def get_config(self):
        return {**super().get_config(), "units": self.units}
