"""The loss model: `MultiTaskTrainer` wraps a network with the weighted
per-task cross-entropy, the model's own loss terms and the balancing
rule's task weights."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import keras
import tensorflow as tf

from mtlrec.training import balancing
from mtlrec.training.balancing import Balancing
from mtlrec.training.losses import EPS, model_loss


@keras.saving.register_keras_serializable(package="mtlrec")
class MultiTaskTrainer(keras.Model):
    """Wraps a functional network with the multi-task loss.

    `L = sum_t w_t * sum_i s_ti * BCE(y_ti, p_ti) / B + extra + sum(layer losses)`,
    with per-row sample weights `s` (0 on masked rows) and `B` the batch
    size, so a masked task's loss stays on the scale of the batch. The task
    weights `w_t` are `loss_weights` as they are, or as `balancing` (a
    `mtlrec.training.balancing.Balancing`) makes them each step. Under
    `tf.distribute` the per-replica loss is divided by the replica count:
    the gradient sum over replicas is then the single-device gradient.
    Only the task outputs get cross-entropy; `extra_loss` (a
    `mtlrec.training.losses.loss_spec`) adds a model's own terms (ESCM2, AITM).
    """

    def __init__(self, network: keras.Model, tasks: Sequence[str], loss_weights: dict[str, float] | None = None,
                 extra_loss: dict[str, Any] | None = None, balancing: dict[str, Any] | Balancing | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.tasks = list(tasks)
        self.loss_weights = {t: float((loss_weights or {}).get(t, 1.0)) for t in self.tasks}
        self.extra_loss = extra_loss
        if isinstance(balancing, dict):
            balancing = Balancing(**balancing)
        self.balancing = balancing or Balancing()
        k = len(self.tasks)
        self.w0 = tf.constant([self.loss_weights[t] for t in self.tasks], tf.float32)
        self.decay = tf.constant([float(self.balancing.decay.get(t, 1.0)) for t in self.tasks], tf.float32)
        method = self.balancing.method
        if method == "uncertainty":  # s_t = log sigma_t^2, trained with the network
            self.log_variance = self.add_weight(shape=(k,), initializer="zeros", name="task_log_variance")
        if method in ("dwa", "gradnorm"):  # set between steps (gradnorm) or epochs (dwa), checkpointed
            self.task_weights = self.add_weight(shape=(k,), initializer="ones", trainable=False, name="task_weights")
        if method == "gradnorm":
            self.initial_losses = self.add_weight(shape=(k,), initializer="zeros", trainable=False,
                                                  name="initial_task_losses")
        # Per-task training loss, logged as `<task>_loss`: shows which task
        # a non-finite total came from.
        self.task_loss_trackers = [keras.metrics.Mean(name=f"{t}_loss") for t in self.tasks]

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def task_losses(self, y, y_pred, sample_weight):
        losses = {}
        for t in self.tasks:
            p = tf.clip_by_value(tf.cast(y_pred[t], tf.float32), EPS, 1 - EPS)
            label = tf.cast(y[t], tf.float32)
            bce = -(label * tf.math.log(p) + (1 - label) * tf.math.log(1 - p))
            w = tf.ones_like(bce) if sample_weight is None else tf.cast(sample_weight[t], tf.float32)
            loss = tf.reduce_sum(w * bce) / tf.cast(tf.maximum(tf.size(bce), 1), tf.float32)
            # Clipping maps NaN predictions to a finite loss: report them as NaN.
            finite = tf.reduce_all(tf.math.is_finite(tf.cast(y_pred[t], tf.float32)))
            losses[t] = tf.where(finite, loss, tf.constant(float("nan")))
        return losses

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        losses = self.task_losses(y, y_pred, sample_weight)
        if training:
            for t, tracker in zip(self.tasks, self.task_loss_trackers):
                tracker.update_state(losses[t])
        return self.total_loss(losses, y, y_pred)

    def effective_weights(self) -> tf.Tensor:
        """The weight each task's loss has in this step (K,)."""
        method = self.balancing.method
        if method == "ple_schedule":
            return balancing.ple_schedule_weights(self.w0, self.decay, self.optimizer.iterations)
        if method == "uncertainty":
            return self.w0 * tf.exp(-tf.convert_to_tensor(self.log_variance))
        if method in ("dwa", "gradnorm"):
            return self.w0 * tf.convert_to_tensor(self.task_weights)
        return self.w0

    def task_terms(self, losses) -> list[tf.Tensor]:
        """`w_t L_t` per task, before the division by replicas."""
        weights = self.effective_weights()
        return [weights[i] * losses[t] for i, t in enumerate(self.tasks)]

    def common_loss(self, y, y_pred, layer_losses=None):
        """Everything but the weighted task losses: the model's extra terms,
        the layer losses (`layer_losses`, default `self.losses`) and the
        uncertainty rule's `sum_t w0_t s_t`."""
        total = model_loss(self.extra_loss, y, y_pred, self.tasks)
        layer_losses = self.losses if layer_losses is None else layer_losses
        if layer_losses:
            total = total + tf.add_n([tf.cast(v, tf.float32) for v in layer_losses])
        if self.balancing.method == "uncertainty":
            total = total + tf.reduce_sum(self.w0 * tf.convert_to_tensor(self.log_variance))
        return tf.convert_to_tensor(total, tf.float32)

    def total_loss(self, losses, y, y_pred, layer_losses=None):
        """The weighted task losses plus `common_loss`, divided by the
        replicas in sync (see the class doc)."""
        total = tf.add_n(self.task_terms(losses)) + self.common_loss(y, y_pred, layer_losses)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return total / replicas if replicas > 1 else total

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
            "tasks": self.tasks,
            "loss_weights": self.loss_weights,
            "extra_loss": self.extra_loss,
            "balancing": dataclasses.asdict(self.balancing),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)
