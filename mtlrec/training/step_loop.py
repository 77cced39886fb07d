"""The loop of steps: many training steps in one `tf.function` call
(`--steps_per_execution`), so Python calls TensorFlow less often and one
step's tail overlaps the next one's head."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import tensorflow as tf


def repeat(step: Callable, keys: Sequence[str]):
    """`steps(iterator, count)`: `count` calls of `step(iterator)` (any
    count >= 1, one trace), returning the global loss of each and each
    step's outputs `keys`, stacked (`[count]`)."""
    keys = list(keys)

    def steps(iterator, count):
        def body(i, totals, outs):
            total, out = step(iterator)
            if sorted(out) != sorted(keys):
                raise AssertionError(f"step outputs {sorted(out)}, expected {sorted(keys)}")
            return i + 1, totals.write(i, total), {k: outs[k].write(i, tf.cast(out[k], tf.float32)) for k in keys}

        start = (tf.constant(0), tf.TensorArray(tf.float32, size=count, element_shape=()),
                 {k: tf.TensorArray(tf.float32, size=count, element_shape=()) for k in keys})
        _, totals, outs = tf.while_loop(lambda i, *_: i < count, body, start)
        return totals.stack(), {k: v.stack() for k, v in outs.items()}

    return tf.function(steps, autograph=False)
