"""Lateral residual links between task towers (APLE's ResFlow)."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from mtlrec.layers.dropout import Dropout
from mtlrec.layers.embedding import float32_layer
from mtlrec.layers.narrow import NarrowDense


@keras.saving.register_keras_serializable(package="mtlrec")
class ResidualInterTaskBlock(keras.layers.Layer):
    """Task towers joined in funnel order by parameter-free residuals.

    `o_t^l = block_t^l(o_t^(l-1)) + o_(t-1)^l` for t > 0 (click -> like ->
    share -> follow), `o_0^l = block_0^l(o_0^(l-1))`; each block is a dense
    layer with an activation, then each task's logit from `o_t^L`. The links
    add no weights: the block has exactly the weights of T plain towers.

    Args:
        num_tasks: number of towers T, in funnel order.
        units: hidden widths (shared by all towers, so outputs can be added).
        activation: activation of each block.
        dropout: dropout after each block.

    Input: a list of T tensors `(batch, d_t)`. Output: a list of T
    probabilities `(batch,)`.

    References: APLE's "Residual Inter-Task Block" (docs/DESIGN.md);
    ResFlow (Li et al., 2024).
    """

    def __init__(self, num_tasks: int, units: Sequence[int], activation: str = "relu", dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        units = [int(u) for u in units]
        if num_tasks < 1 or not units or min(units) < 1:
            raise ValueError(f"Received: num_tasks={num_tasks}, units={units}")
        self.num_tasks = int(num_tasks)
        self.units = units
        self.activation = activation
        self.dropout = dropout
        # Flat list: block (t, l) at t * L + l (Keras saving tracks flat lists).
        self.blocks = [
            keras.layers.Dense(u, activation=activation, name=f"task{t}_block{level}")
            for t in range(num_tasks) for level, u in enumerate(units)
        ]
        self.logits = [NarrowDense(1, dtype=float32_layer(), name=f"task{t}_logit") for t in range(num_tasks)]
        self.dropout_layer = Dropout(dropout) if dropout else None

    def block(self, t: int, level: int) -> keras.layers.Dense:
        return self.blocks[t * len(self.units) + level]

    def build(self, input_shape):
        for t in range(self.num_tasks):
            shape = tuple(input_shape[t])
            for level, u in enumerate(self.units):
                self.block(t, level).build(shape)
                shape = shape[:-1] + (u,)
            self.logits[t].build(shape)
        self.built = True

    def call(self, inputs, training=None):
        h = list(inputs)
        for level in range(len(self.units)):
            previous = None
            for t in range(self.num_tasks):
                o = self.block(t, level)(h[t])
                if self.dropout_layer is not None:
                    o = self.dropout_layer(o, training=training)
                if previous is not None:
                    o = o + previous
                h[t] = previous = o
        return [ops.sigmoid(ops.squeeze(self.logits[t](h[t]), -1)) for t in range(self.num_tasks)]

    def compute_output_shape(self, input_shape):
        return [tuple(input_shape[0][:-1])] * self.num_tasks

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "units": self.units,
                "activation": self.activation, "dropout": self.dropout}
