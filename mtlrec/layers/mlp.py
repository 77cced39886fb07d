"""A stack of dense layers."""

from __future__ import annotations

from collections.abc import Sequence

import keras

from mtlrec.layers.dropout import Dropout


@keras.saving.register_keras_serializable(package="mtlrec")
class MLP(keras.layers.Layer):
    """Dense layers with an activation and optional dropout after each.

    Args:
        units: width of each layer, e.g. `(256, 128)`.
        activation: activation of every layer.
        dropout: dropout rate after each layer (0 for none).

    Input shape: `(batch, d)`. Output shape: `(batch, units[-1])`.

    Example:
        >>> MLP((64, 32))(keras.ops.ones((2, 8))).shape
        (2, 32)
    """

    def __init__(self, units: Sequence[int], activation: str = "relu", dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        units = [int(u) for u in units]
        if not units or min(units) < 1:
            raise ValueError(f"MLP needs at least one positive width. Received: units={units}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1). Received: dropout={dropout}")
        self.units = units
        self.activation = activation
        self.dropout = dropout
        self.dense_layers = [
            keras.layers.Dense(u, activation=activation, name=f"dense_{i}") for i, u in enumerate(units)
        ]
        self.dropout_layer = Dropout(dropout) if dropout else None

    def build(self, input_shape):
        shape = tuple(input_shape)
        for layer in self.dense_layers:
            layer.build(shape)
            shape = layer.compute_output_shape(shape)
        self.built = True

    def call(self, x, training=None):
        for layer in self.dense_layers:
            x = layer(x)
            if self.dropout_layer is not None:
                x = self.dropout_layer(x, training=training)
        return x

    def compute_output_shape(self, input_shape):
        return tuple(input_shape[:-1]) + (self.units[-1],)

    def get_config(self):
        return {**super().get_config(), "units": self.units, "activation": self.activation, "dropout": self.dropout}
