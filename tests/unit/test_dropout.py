"""The 16-bit-mask dropout (mtlrec.layers.dropout): rate, scale, seeding, gradient."""

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtlrec.layers.dropout import Dropout, dropout16


@pytest.mark.parametrize("rate", [0.1, 0.5, 0.03])
def test_drops_at_the_rate_and_keeps_the_expectation(rate):
    x = tf.ones([1000, 101])  # an odd element count: the last 32-bit word is half used
    y = dropout16(x, rate, tf.constant([4, 2])).numpy()
    q = round(rate * 65536) / 65536
    kept = y != 0
    assert abs(1 - kept.mean() - q) < 4 * np.sqrt(q * (1 - q) / x.shape.num_elements())
    np.testing.assert_allclose(y[kept], 1 / (1 - q), rtol=1e-6)
    assert y.mean() == pytest.approx(1.0, abs=0.02)
    # Columns and rows are not correlated: each column drops at about the rate too.
    assert np.abs((1 - kept.mean(axis=0)) - q).max() < 0.1


def test_same_seed_same_mask_and_gradient_is_the_mask():
    x = tf.random.normal([64, 16])
    seed = tf.constant([7, 1])
    a, b = dropout16(x, 0.3, seed), dropout16(x, 0.3, seed)
    np.testing.assert_array_equal(a.numpy(), b.numpy())
    assert not np.array_equal(a.numpy(), dropout16(x, 0.3, tf.constant([7, 2])).numpy())
    with tf.GradientTape() as tape:
        tape.watch(x)
        y = dropout16(x, 0.3, seed)
        loss = tf.reduce_sum(y * 3.0)
    grad = tape.gradient(loss, x).numpy()
    mask = np.where(y.numpy() != 0, 1 / (1 - round(0.3 * 65536) / 65536), 0.0)
    np.testing.assert_allclose(grad, 3.0 * mask, rtol=1e-6)


def test_layer_is_identity_at_inference_and_reproducible_under_a_seed():
    x = tf.ones([256, 32])
    keras.utils.set_random_seed(5)
    first = Dropout(0.2)
    one = [first(x, training=True).numpy() for _ in range(2)]
    keras.utils.set_random_seed(5)
    second = Dropout(0.2)
    two = [second(x, training=True).numpy() for _ in range(2)]
    np.testing.assert_array_equal(one[0], two[0])
    np.testing.assert_array_equal(one[1], two[1])
    assert not np.array_equal(one[0], one[1])  # a new mask each call
    np.testing.assert_array_equal(first(x, training=False).numpy(), x.numpy())
    np.testing.assert_array_equal(Dropout(0.0)(x, training=True).numpy(), x.numpy())
    assert Dropout.from_config(first.get_config()).rate == 0.2
    with pytest.raises(ValueError, match=r"dropout rate must be in \[0, 1\)"):
        Dropout(1.0)
