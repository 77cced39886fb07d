"""Dropout with a 16-bit random mask: the same layer, less random-number work.

Keras' dropout draws one float32 uniform per element (`StatelessRandomUniformV2`)
and masks with a select in both directions. In APLE's step on a 2-core CPU
that was a fifth of the op time (docs/BENCHMARKS.md, issue 12). Here each
32-bit random word gives two 16-bit draws, and the mask, already scaled, is
one multiply forward and one backward.
"""

from __future__ import annotations

import keras
import tensorflow as tf

LEVELS = 1 << 16


@tf.custom_gradient
def _scale(x, mask):
    def grad(dy):
        return dy * mask, None

    return x * mask, grad


def dropout16(x, rate: float, seed):
    """Inverted dropout of `x` (float32, any shape with a static last axis)
    with drop probability `round(rate * 65536) / 65536`: an element is kept
    when its 16-bit draw is at least that threshold, and kept elements are
    scaled by `1 / (1 - that probability)`, so the expectation is `x`.
    `seed`: a `[2]` integer tensor (stateless: the same seed, the same mask)."""
    threshold = round(rate * LEVELS)
    if threshold <= 0:
        return x
    shape = tf.shape(x)
    if x.shape[-1] is not None and x.shape[-1] % 2 == 0:  # the usual case: no odd last word to cut off
        words_shape = tf.concat([shape[:-1], [x.shape[-1] // 2]], axis=0)
        draws = tf.bitcast(tf.random.stateless_uniform(words_shape, seed=seed, minval=None, maxval=None,
                                                       dtype=tf.uint32), tf.uint16)
    else:
        n = tf.size(x)
        words = tf.random.stateless_uniform([(n + 1) // 2], seed=seed, minval=None, maxval=None, dtype=tf.uint32)
        draws = tf.reshape(tf.bitcast(words, tf.uint16), [-1])[:n]
    # cast * scale, not a select between two scalars: the same mask, but the
    # broadcasting select cost ~2 ms per 2048 x 256 more on CPU (issue 12).
    keep = tf.cast(draws >= tf.constant(threshold, tf.uint16), x.dtype)
    mask = keep * tf.constant(LEVELS / (LEVELS - threshold), x.dtype)
    return _scale(x, tf.reshape(mask, shape))


@keras.saving.register_keras_serializable(package="mtlrec")
class Dropout(keras.layers.Layer):
    """`keras.layers.Dropout` (no `noise_shape`), drawing its mask with
    `dropout16`: the rate is rounded to a multiple of 1/65536 (0.1 drops
    with probability 0.1000061). Seeded by a `keras.random.SeedGenerator`
    (reproducible under `keras.utils.set_random_seed`)."""

    def __init__(self, rate: float, seed: int | None = None, **kwargs):
        super().__init__(**kwargs)
        if not 0.0 <= rate < 1.0:
            raise ValueError(f"dropout rate must be in [0, 1). Received: {rate}")
        self.rate = float(rate)
        self.seed = seed
        self.seed_generator = keras.random.SeedGenerator(seed)

    def call(self, inputs, training=None):
        if not training or not self.rate:
            return inputs
        seed = self.seed_generator.next()
        seed = tf.cast(tf.math.floormod(seed, tf.int32.max - 1), tf.int32)
        return dropout16(inputs, self.rate, seed)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "rate": self.rate, "seed": self.seed}


def seed_states(network: keras.Model) -> list:
    """The state variables of the dropout layers' seed generators, in a
    fixed order: a checkpoint that holds them resumes the same masks."""
    layers = [layer for layer in network._flatten_layers(include_self=False, recursive=True)
              if isinstance(layer, Dropout)]
    return sorted((layer.seed_generator.state for layer in layers), key=lambda v: v.path)
