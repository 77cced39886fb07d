"""`--mixed_precision`: the Keras dtype policy the dense part of a network
is built with, and the loss scaling float16 needs.

What changes: experts, gates, towers' hidden layers and the other dense
layers compute in bfloat16 or float16 (Keras' `mixed_*` policies: their
variables stay float32, read as 16-bit inside the layer). What does not:
embedding tables and their lookups (`mtlrec.layers.embedding.FLOAT32`),
every task's logit and probability (the logit layers and `FunnelProduct`
are float32 layers), the losses and metrics (computed on float32 casts),
and the optimizer, whose slots follow the float32 variables.

`mixed_float16` scales the loss (`LossScale`): float16's range underflows
small gradients. `mixed_bfloat16` has float32's range and needs none.
"""

from __future__ import annotations

import contextlib

import keras
import tensorflow as tf

from mtlrec.training.config import MIXED_PRECISION as POLICIES  # noqa: E402


def check(name: str) -> None:
    if name not in POLICIES:
        raise ValueError(f"--mixed_precision must be one of {', '.join(POLICIES)}. Received: {name!r}")


@contextlib.contextmanager
def building(name: str):
    """Layers created inside take the `name` policy (unless they fix their
    own dtype); the global policy is put back afterwards, so one process
    can build runs of different precision (mtlrec-tune's trials)."""
    check(name)
    before = keras.config.dtype_policy()
    keras.config.set_dtype_policy(name)
    try:
        yield
    finally:
        keras.config.set_dtype_policy(before)


def compute_dtypes(network: keras.Model) -> dict[str, int]:
    """How many layers of `network` (nested ones included) compute in each
    dtype: what a run records to show the policy took."""
    counts: dict[str, int] = {}
    for layer in network._flatten_layers(include_self=False, recursive=True):
        if layer.weights and not layer._layers:  # leaf layers that hold weights
            counts[layer.compute_dtype] = counts.get(layer.compute_dtype, 0) + 1
    return dict(sorted(counts.items()))


class LossScale:
    """Dynamic loss scaling for float16: the loss is multiplied by `scale`
    before the gradients, which are divided by it again. A step whose
    gradients are not all finite is skipped (no variable and no optimizer
    slot changes) and halves the scale; `growth_steps` finite steps in a
    row double it. Starts at 2**15, Keras' and TensorFlow's choice."""

    def __init__(self, initial: float = 2.0**15, growth_steps: int = 2000):
        self.scale = tf.Variable(initial, trainable=False, dtype=tf.float32, name="loss_scale",
                                 aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                                 synchronization=tf.VariableSynchronization.ON_WRITE)
        self.good_steps = tf.Variable(0, trainable=False, dtype=tf.int64, name="loss_scale_good_steps",
                                      aggregation=tf.VariableAggregation.ONLY_FIRST_REPLICA,
                                      synchronization=tf.VariableSynchronization.ON_WRITE)
        self.growth_steps = int(growth_steps)

    def unscale(self, gradients):
        inverse = 1.0 / self.scale
        out = []
        for g in gradients:
            if g is None:
                out.append(None)
            elif isinstance(g, tf.IndexedSlices):
                out.append(tf.IndexedSlices(g.values * tf.cast(inverse, g.values.dtype), g.indices, g.dense_shape))
            else:
                out.append(g * tf.cast(inverse, g.dtype))
        return out

    @staticmethod
    def all_finite(gradients) -> tf.Tensor:
        parts = [tf.reduce_all(tf.math.is_finite(g.values if isinstance(g, tf.IndexedSlices) else g))
                 for g in gradients if g is not None]
        return tf.reduce_all(tf.stack(parts)) if parts else tf.constant(True)

    def update(self, finite: tf.Tensor):
        """The scale after a step (`finite`: its gradients were)."""
        grown = self.good_steps + 1 >= self.growth_steps
        new_scale = tf.where(finite, tf.where(grown, self.scale * 2.0, self.scale), tf.maximum(self.scale / 2.0, 1.0))
        new_good = tf.where(tf.logical_and(finite, tf.logical_not(grown)), self.good_steps + 1,
                            tf.zeros_like(self.good_steps))
        return tf.group(self.scale.assign(new_scale), self.good_steps.assign(new_good))
