"""DLEN's latent "user prefers" head."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from mtlrec.layers.embedding import float32_layer
from mtlrec.layers.mlp import MLP


@keras.saving.register_keras_serializable(package="mtlrec")
class LatentPreferenceHead(keras.layers.Layer):
    """Couples every task to a latent target UP by Bayes' rule.

    A hidden-state network gives `P(UP) = sigmoid(h(x))` (shared by all
    tasks). Tower t maps its representation to `X^t` (eq. 8) and gives
    `P(t|UP) = sigmoid(W^{t|UP} X^t)` (9) and
    `P(t|~UP) = alpha_t * sigmoid(W^{t|~UP} X^t)` (10), so
    `0 < P(t|~UP) < alpha_t` (7). Then
    `P(t) = P(t|UP) P(UP) + P(t|~UP) (1 - P(UP))` (1), trained with
    cross-entropy, and `P(t, UP) = P(t|UP) P(UP)` (4) ranks.

    Args:
        alphas: upper bound alpha_t of P(t|~UP) per task (the paper found
            0.1-0.5x the task's positive rate works best).
        tower_units: widths of each task's tower MLP (eq. 8).
        hidden_units: widths of the hidden-state network.
        dropout: dropout in the MLPs.

    Input: `[X_1, ..., X_T, x]`: task representations then the input of
    the hidden-state network. Output: a list of 2T + 1 tensors `(batch,)`:
    `P(t)` for each task, `P(t, UP)` for each task, then `P(UP)`.

    References: Zhang et al., "Deep Latent Emotion Network for Multi-Task
    Learning" (Tencent PCG), formulas (1)-(10); docs/DESIGN.md.
    """

    def __init__(self, alphas: Sequence[float], tower_units: Sequence[int] = (32,),
                 hidden_units: Sequence[int] = (64, 32), dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        alphas = [float(a) for a in alphas]
        if not alphas or min(alphas) <= 0 or max(alphas) > 1:
            raise ValueError(f"alphas must be in (0, 1]. Received: alphas={alphas}")
        self.alphas = alphas
        self.tower_units = [int(u) for u in tower_units]
        self.hidden_units = [int(u) for u in hidden_units]
        self.dropout = dropout
        n = len(alphas)
        self.towers = [MLP(self.tower_units, dropout=dropout, name=f"task{t}_tower") for t in range(n)] if self.tower_units else []
        self.given_up = [keras.layers.Dense(1, dtype=float32_layer(), name=f"task{t}_given_up") for t in range(n)]
        self.given_not_up = [keras.layers.Dense(1, dtype=float32_layer(), name=f"task{t}_given_not_up") for t in range(n)]
        self.hidden = MLP(self.hidden_units, dropout=dropout, name="hidden_state")
        self.up_logit = keras.layers.Dense(1, dtype=float32_layer(), name="up_logit")

    def build(self, input_shape):
        n = len(self.alphas)
        if len(input_shape) != n + 1:
            raise ValueError(f"Expected {n} task inputs and the hidden-state input. Received: {len(input_shape)}")
        for t in range(n):
            shape = tuple(input_shape[t])
            if self.towers:
                self.towers[t].build(shape)
                shape = self.towers[t].compute_output_shape(shape)
            self.given_up[t].build(shape)
            self.given_not_up[t].build(shape)
        self.hidden.build(tuple(input_shape[-1]))
        self.up_logit.build(self.hidden.compute_output_shape(tuple(input_shape[-1])))
        self.built = True

    def call(self, inputs, training=None):
        n = len(self.alphas)
        p_up = ops.sigmoid(ops.squeeze(self.up_logit(self.hidden(inputs[-1], training=training)), -1))
        probs, joint = [], []
        for t in range(n):
            x = self.towers[t](inputs[t], training=training) if self.towers else inputs[t]
            given_up = ops.sigmoid(ops.squeeze(self.given_up[t](x), -1))
            given_not_up = self.alphas[t] * ops.sigmoid(ops.squeeze(self.given_not_up[t](x), -1))
            probs.append(given_up * p_up + given_not_up * (1.0 - p_up))
            joint.append(given_up * p_up)
        return probs + joint + [p_up]

    def compute_output_shape(self, input_shape):
        return [tuple(input_shape[0][:-1])] * (2 * len(self.alphas) + 1)

    def get_config(self):
        return {**super().get_config(), "alphas": self.alphas, "tower_units": self.tower_units,
                "hidden_units": self.hidden_units, "dropout": self.dropout}
