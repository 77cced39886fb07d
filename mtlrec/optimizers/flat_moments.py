"""Flat dense moments: Adam's momentum and velocity of many dense variables
of one dtype in two flat vectors, updated by one step (a concatenation of
the gradients, Adam's formula once, a split back into each variable).

Adam's per-variable update is about 15 graph ops; for a PLE with 30 dense
variables they were a third of the train step's ops to trace and to
optimise, and many small kernels per step. The numbers are Keras Adam's,
bit for bit (the same elementwise operations).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import tensorflow as tf


class FlatGroup(NamedTuple):
    """Dense variables of one dtype whose moments live in two flat vectors."""

    sizes: list[int]  # in the flat vectors' order
    offsets: list[int]
    momentum: object
    velocity: object


def layout(variables: Sequence) -> tuple[list[int], list[int]]:
    """(sizes, offsets) of `variables` in a flat vector, in their order."""
    sizes = [int(np.prod(v.shape)) for v in variables]
    return sizes, [int(o) for o in np.cumsum([0, *sizes[:-1]])]


def slots(group: FlatGroup, i: int, shape) -> tuple[tf.Tensor, tf.Tensor]:
    """Member `i`'s (momentum, velocity), shaped `shape`."""
    start, size = group.offsets[i], group.sizes[i]
    return tuple(tf.reshape(slot.value[start:start + size], shape) for slot in (group.momentum, group.velocity))


def adam_step(optimizer, momentum, velocity, sizes: Sequence[int], present: Sequence[int], grads: Sequence,
              variables: Sequence, c: dict[str, tf.Tensor]) -> None:
    """Keras Adam over a group's flat `momentum` and `velocity`, with the
    step scalars `c` (`alpha`, `1-b1`, `1-b2`, `eps`), through the
    optimizer's assign ops. `present`: the members with a gradient in this
    step (`grads`, `variables` in that order); absent ones (frozen, or no
    gradient) contribute zeros, and their moments are kept as they were."""
    flat = {i: tf.reshape(tf.cast(tf.convert_to_tensor(g), momentum.dtype), [-1]) for i, g in zip(present, grads)}
    everyone = len(present) == len(sizes)
    g = tf.concat([flat[i] if i in flat else tf.zeros([n], momentum.dtype) for i, n in enumerate(sizes)], axis=0)
    if everyone:
        optimizer.assign_add(momentum, (g - momentum) * c["1-b1"])
        optimizer.assign_add(velocity, (tf.square(g) - velocity) * c["1-b2"])
    else:
        keep = tf.concat([tf.fill([n], i in flat) for i, n in enumerate(sizes)], axis=0)
        optimizer.assign(momentum, tf.where(keep, momentum + (g - momentum) * c["1-b1"], momentum))
        optimizer.assign(velocity, tf.where(keep, velocity + (tf.square(g) - velocity) * c["1-b2"], velocity))
    step = (momentum * c["alpha"]) / (tf.sqrt(velocity) + c["eps"])
    pieces = tf.split(step, sizes, axis=0)
    for i, var in zip(present, variables):
        optimizer.assign_sub(var, tf.reshape(pieces[i], var.shape))
