"""Decisions the chief makes, shared with every worker: all-reduces in
which only the chief's first replica contributes (a flag, a JSON text).
In a single process they are the values themselves."""

from __future__ import annotations

import numpy as np
import tensorflow as tf

from mtlrec import cluster


def _from_chief(strategy: tf.distribute.Strategy, values: np.ndarray) -> np.ndarray:
    """`values` of the chief's first replica, on every worker: an all-reduce
    sum to which every other replica adds zeros (of the same shape)."""
    def fn():
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        return tf.where(first, tf.constant(values, tf.float32), tf.zeros(values.shape, tf.float32))

    with strategy.scope():
        return strategy.reduce("SUM", strategy.run(fn), axis=None).numpy()


def agree(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """The chief's `flag`, on every worker (`_from_chief`); the flag itself
    in a single process."""
    if not cluster.current().multi:
        return flag
    return bool(_from_chief(strategy, np.array([float(flag)], np.float32))[0] > 0.5)


def share_from_chief(strategy: tf.distribute.Strategy, text: str | None) -> str:
    """The chief's `text` on every worker (two `_from_chief` all-reduces:
    its length, then its bytes); other workers pass None. `text` itself in
    a single process."""
    worker = cluster.current()
    if not worker.multi:
        return text or ""
    data = np.frombuffer((text or "").encode(), np.uint8).astype(np.float32) if worker.is_chief else np.zeros(0)
    length = int(round(float(_from_chief(strategy, np.array([len(data)], np.float32))[0])))
    if not worker.is_chief:
        data = np.zeros(length, np.float32)
    return bytes(np.rint(_from_chief(strategy, data)).astype(np.uint8)).decode() if length else ""
