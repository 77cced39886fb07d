"""Task heads: towers, and the ESMM product over a funnel of tasks."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from mtlrec.layers.embedding import float32_layer
from mtlrec.layers.mlp import MLP
from mtlrec.layers.narrow import NarrowDense


@keras.saving.register_keras_serializable(package="mtlrec")
class Tower(keras.layers.Layer):
    """A task tower: an MLP, then one logit; returns the probability.

    Args:
        units: hidden widths (empty: a logistic regression on the input).
        dropout: dropout after each hidden layer.

    Input shape: `(batch, d)`. Output shape: `(batch,)` probabilities.
    """

    def __init__(self, units: Sequence[int] = (), dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        self.units = [int(u) for u in units]
        self.dropout = dropout
        self.mlp = MLP(self.units, dropout=dropout, name="mlp") if self.units else None
        self.logit = NarrowDense(1, dtype=float32_layer(), name="logit")  # logits and probabilities in float32

    def build(self, input_shape):
        shape = tuple(input_shape)
        if self.mlp is not None:
            self.mlp.build(shape)
            shape = self.mlp.compute_output_shape(shape)
        self.logit.build(shape)
        self.built = True

    def call(self, x, training=None):
        if self.mlp is not None:
            x = self.mlp(x, training=training)
        return ops.sigmoid(ops.squeeze(self.logit(x), axis=-1))

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1])

    def get_config(self):
        return {**super().get_config(), "units": self.units, "dropout": self.dropout}


@keras.saving.register_keras_serializable(package="mtlrec")
class FunnelProduct(keras.layers.Layer):
    """ESMM's product over a funnel, on probabilities (never logits).

    Given conditional probabilities `[p(a), p(b | a), p(c | a, b), ...]`
    returns the joint probabilities `[p(a), p(a, b), p(a, b, c), ...]`:
    `p(a, b) = p(a) * p(b | a)`, and so on down the chain.

    Input: a list of `(batch,)` probabilities in funnel order.
    Output: a list of `(batch,)` joint probabilities, same order.

    References: Ma et al., "Entire Space Multi-Task Model", SIGIR 2018,
    equation (2).
    """

    def __init__(self, **kwargs):
        super().__init__(**{**kwargs, "dtype": float32_layer()})  # products of probabilities, never in 16 bits

    def call(self, conditionals):
        joint, out = None, []
        for p in conditionals:
            joint = p if joint is None else joint * p
            out.append(joint)
        return out

    def compute_output_shape(self, input_shape):
        return list(input_shape)
