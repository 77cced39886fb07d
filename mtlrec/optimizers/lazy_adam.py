"""Row-sparse embedding updates: Adam that touches only the rows in the batch.

Keras 3's Adam turns an embedding's `tf.IndexedSlices` gradient into a dense
update of the whole table, so its step time grows with vocabulary size
(205 ms/step for a 2M x 32 table against 7.7 ms for 10k rows, docs/DESIGN.md).
`LazyAdam` updates the moments and the weights of the gathered rows only;
dense gradients get plain Adam.

The dense variables share one flat momentum and one flat velocity vector
per dtype (`flat_moments`), updated in one step.
"""

from __future__ import annotations

import keras
import tensorflow as tf
from keras import ops

from mtlrec.optimizers import flat_moments
from mtlrec.optimizers.flat_moments import FlatGroup
from mtlrec.optimizers.row_sparse import SPARSE_RULES, is_row_sparse


@keras.saving.register_keras_serializable(package="mtlrec")
class LazyAdam(keras.optimizers.Adam):
    """Adam with lazy (row-sparse) updates for `tf.IndexedSlices` gradients.

    For a sparse gradient with rows `I`, only `m[I]`, `v[I]` and `w[I]`
    change: `m[I] = b1 m[I] + (1 - b1) g`, `v[I] = b2 v[I] + (1 - b2) g^2`,
    `w[I] -= lr_t m[I] / (sqrt(v[I]) + eps)`. Rows not in the batch keep
    their moments (no decay), as in TF-Addons' LazyAdam. Duplicate indices
    are summed first. Same arguments as `keras.optimizers.Adam` (amsgrad
    unsupported).

    `sparse_rule` changes what the row-sparse (embedding) gradients get:
    `"adagrad"`: `a[I] += g^2`, `w[I] -= lr g / sqrt(0.1 + a[I] + eps)`
    (Keras' Adagrad with its initial accumulator 0.1; `a` lives in the
    second-moment slot, so checkpoints keep their layout); `"sgd"`:
    `w[I] -= lr g`. `sparse_learning_rate` replaces the learning rate for
    those rows (default: the same). Dense variables always get Adam.

    `sparse_decay` (d, default 0: off) shrinks every row of the row-sparse
    variables by `1 - d` at every step, whether the batch holds it or not:
    a whole-table decay, as a Keras-2 L2 regularizer on an embedding gives
    DeepCTR's dense Adam, that leaves rare ids near zero and frequent ones
    where their gradients put them. It is applied lazily, so the step time
    stays flat in vocabulary size: each row remembers the step it was last
    brought up to date (`last`), and when it is next updated it is first
    multiplied by `(1 - d)^(steps since)`. `settle_rows` applies what every
    row still owes (before validation, export or a reset). The one
    difference from decaying every row at every step: a row's gradient is
    computed before its pending decay is applied.
    """

    def __init__(self, *args, sparse_rule: str = "adam", sparse_learning_rate: float | None = None,
                 sparse_decay: float = 0.0, **kwargs):
        super().__init__(*args, **kwargs)
        if self.amsgrad:
            raise ValueError("LazyAdam does not support amsgrad=True.")
        if sparse_rule not in SPARSE_RULES:
            raise ValueError(f"sparse_rule must be one of {SPARSE_RULES}. Received: {sparse_rule!r}")
        if sparse_learning_rate is not None and not sparse_learning_rate > 0:
            raise ValueError(f"sparse_learning_rate must be > 0. Received: {sparse_learning_rate}")
        if not 0 <= sparse_decay < 1:
            raise ValueError(f"sparse_decay must be in [0, 1). Received: {sparse_decay}")
        self.sparse_rule = sparse_rule
        self.sparse_learning_rate = sparse_learning_rate
        self.sparse_decay = float(sparse_decay)

    def get_config(self):
        return {**super().get_config(), "sparse_rule": self.sparse_rule,
                "sparse_learning_rate": self.sparse_learning_rate, "sparse_decay": self.sparse_decay}

    def build(self, var_list):
        """Moments of their own for the row-sparse variables
        (`mark_row_sparse`); one flat momentum and velocity per dtype for the
        rest. `_momentums[i]` / `_velocities[i]` are None for a grouped
        variable: `slots(variable)` reads either kind."""
        if self.built:
            return
        keras.optimizers.Optimizer.build(self, var_list)  # Adam's build would give every variable its own moments
        self._momentums, self._velocities, self._last = [], [], []
        by_dtype: dict[str, list] = {}
        for var in var_list:
            if is_row_sparse(var):
                self._momentums.append(self.add_variable_from_reference(var, name="momentum"))
                self._velocities.append(self.add_variable_from_reference(var, name="velocity"))
                # The step each row was last decayed to (float32: exact to 2^24 steps). Only with a decay,
                # so checkpoints without one keep their layout.
                self._last.append(self.add_variable((var.shape[0],), dtype="float32", initializer="zeros",
                                                    name="last_decayed")
                                  if self.sparse_decay else None)
            else:
                self._momentums.append(None)
                self._velocities.append(None)
                self._last.append(None)
                by_dtype.setdefault(keras.backend.standardize_dtype(var.dtype), []).append(var)
        self._groups: dict[str, FlatGroup] = {}
        self._group_of: dict = {}  # a grouped variable's (dtype, place in its group)
        for dtype, members in by_dtype.items():
            sizes, offsets = flat_moments.layout(members)
            total = sum(sizes)
            self._groups[dtype] = FlatGroup(
                sizes, offsets,
                self.add_variable((total,), dtype=dtype, initializer="zeros", name=f"dense_momentum_{dtype}"),
                self.add_variable((total,), dtype=dtype, initializer="zeros", name=f"dense_velocity_{dtype}"))
            for i, v in enumerate(members):
                self._group_of[self._var_key(v)] = (dtype, i)

    def slots(self, variable) -> tuple[tf.Tensor, tf.Tensor]:
        """The (momentum, velocity) of `variable`, shaped like it (for a
        grouped variable, its slices of the flat vectors)."""
        key = self._var_key(variable)
        if key not in self._group_of:
            i = self._get_variable_index(variable)
            return self._momentums[i].value, self._velocities[i].value
        dtype, i = self._group_of[key]
        return flat_moments.slots(self._groups[dtype], i, variable.shape)

    def _distributed_tf_update_step(self, distribution, grads_and_vars, learning_rate):
        """Row-sparse variables one by one (`update_step`); each dense group
        in one update (`_group_step`)."""
        rows, grouped = [], {}
        for grad, var in grads_and_vars:
            key = self._var_key(var)
            if key in self._group_of:
                dtype, i = self._group_of[key]
                grouped.setdefault(dtype, {})[i] = (grad, var)
            else:
                rows.append((grad, var))
        super()._distributed_tf_update_step(distribution, rows, learning_rate)
        for dtype, present in grouped.items():
            group = self._groups[dtype]
            order = sorted(present)
            distribution.extended.update(
                group.momentum.value, self._group_step,
                args=(group.velocity.value, dtype, order, [present[i][0] for i in order],
                      [present[i][1] for i in order], learning_rate),
                group=False)

    def _group_step(self, momentum, velocity, dtype, present, grads, variables, learning_rate):
        """`flat_moments.adam_step` on a dense group (in its replica context)."""
        c = self._step_scalars(learning_rate, momentum.dtype)
        flat_moments.adam_step(self, momentum, velocity, self._groups[dtype].sizes, present, grads, variables, c)

    def reset_slots(self, variable) -> None:
        """Zeroes the slots (moments, or the Adagrad accumulator) of a
        row-sparse `variable`."""
        index = self._get_variable_index(variable)
        if self._momentums[index] is None:
            raise ValueError(f"{variable.path} is not row-sparse (mark_row_sparse): its moments are shared")
        for slots in (self._momentums, self._velocities):
            slots[index].assign(tf.zeros_like(slots[index]))
        if self._last[index] is not None:  # a re-drawn table owes no decay
            self._last[index].assign(tf.fill(self._last[index].shape, tf.cast(self.iterations, tf.float32)))

    def settle_rows(self, variable) -> None:
        """Applies to every row of a row-sparse `variable` the decay it owes
        (`sparse_decay`), as if each had been decayed at every step so far.
        A no-op without a decay."""
        if not self.built or not self.sparse_decay:
            return
        last = self._last[self._get_variable_index(variable)]
        now = tf.cast(self.iterations, tf.float32)
        owed = tf.pow(tf.constant(1 - self.sparse_decay, tf.float32), now - last.value)
        variable.assign(variable.value * tf.cast(owed, variable.dtype)[:, None])
        last.assign(tf.fill(last.shape, now))

    def _decay_rows(self, variable, rows, shape) -> None:
        """Brings `rows` of `variable` up to date with the decay, this step's included."""
        last = self._last[self._get_variable_index(variable)]
        now = tf.cast(self.iterations + 1, tf.float32)
        owed = tf.pow(tf.constant(1 - self.sparse_decay, tf.float32), now - tf.gather(last.value, rows))
        decayed = tf.gather(variable, rows) * tf.cast(owed, variable.dtype)[:, None]
        self.assign(variable, tf.IndexedSlices(decayed, rows, shape))
        self.assign(last, tf.IndexedSlices(tf.fill(tf.shape(rows), now), rows, shape[:1]))

    def apply(self, grads, trainable_variables=None):
        self._scalars = {}  # this call's step size and constants, shared by its variables
        try:
            return super().apply(grads, trainable_variables)
        finally:
            self._scalars = None  # outside apply nothing is cached: no step size outlives its step

    def _step_scalars(self, learning_rate, dtype) -> dict[str, tf.Tensor]:
        """Keras Adam's step size `alpha = lr sqrt(1 - b2^t) / (1 - b1^t)`
        and the constants `1 - b1`, `1 - b2`, `b1`, `b2`, `eps` as tensors,
        built once per `apply`, learning rate and graph instead of once per
        variable. They are the same values; Keras' per-variable copies were
        half of a PLE train step's ops to trace and to optimise."""
        cache = getattr(self, "_scalars", None)
        key = (id(learning_rate), dtype, id(tf.compat.v1.get_default_graph()))
        if cache is not None and key in cache:
            return cache[key]
        lr = ops.cast(learning_rate, dtype)
        step = ops.cast(self.iterations + 1, dtype)
        alpha = lr * ops.sqrt(1 - ops.power(ops.cast(self.beta_2, dtype), step)) / (
            1 - ops.power(ops.cast(self.beta_1, dtype), step)
        )
        scalars = {"alpha": alpha, **{name: tf.constant(value, dtype) for name, value in (
            ("b1", self.beta_1), ("b2", self.beta_2), ("1-b1", 1 - self.beta_1), ("1-b2", 1 - self.beta_2),
            ("eps", self.epsilon))}}
        if cache is not None:
            cache[key] = scalars
        return scalars

    def _dense_step(self, gradient, variable, learning_rate):
        """Keras' Adam update, op for op (the same numbers, tested), with the
        scalars from `_step_scalars`."""
        c = self._step_scalars(learning_rate, variable.dtype)
        gradient = tf.cast(gradient, variable.dtype)
        index = self._get_variable_index(variable)
        m, v = self._momentums[index].value, self._velocities[index].value
        self.assign_add(m, (gradient - m) * c["1-b1"])
        self.assign_add(v, (tf.square(gradient) - v) * c["1-b2"])
        self.assign_sub(variable, (m * c["alpha"]) / (tf.sqrt(v) + c["eps"]))

    def update_step(self, gradient, variable, learning_rate):
        if not isinstance(gradient, tf.IndexedSlices):
            return self._dense_step(gradient, variable, learning_rate)
        dtype = variable.dtype
        rows, position = tf.unique(gradient.indices)
        grad = tf.math.unsorted_segment_sum(
            tf.cast(gradient.values, dtype), position, tf.shape(rows)[0]
        )
        if self.sparse_learning_rate is not None:
            learning_rate = self.sparse_learning_rate
        if self.sparse_decay:
            self._decay_rows(variable, rows, gradient.dense_shape)
        if self.sparse_rule != "adam":
            return self._other_sparse_step(grad, rows, gradient.dense_shape, variable, learning_rate)
        c = self._step_scalars(learning_rate, dtype)
        m = self._momentums[self._get_variable_index(variable)]
        v = self._velocities[self._get_variable_index(variable)]
        m_rows = c["b1"] * tf.gather(m.value, rows) + c["1-b1"] * grad
        v_rows = c["b2"] * tf.gather(v.value, rows) + c["1-b2"] * tf.square(grad)
        shape = gradient.dense_shape
        self.assign(m, tf.IndexedSlices(m_rows, rows, shape))
        self.assign(v, tf.IndexedSlices(v_rows, rows, shape))
        step_rows = c["alpha"] * m_rows / (tf.sqrt(v_rows) + c["eps"])
        self.assign_sub(variable, tf.IndexedSlices(step_rows, rows, shape))

    def _other_sparse_step(self, grad, rows, shape, variable, learning_rate):
        lr = ops.cast(learning_rate, variable.dtype)
        if self.sparse_rule == "sgd":
            return self.assign_sub(variable, tf.IndexedSlices(lr * grad, rows, shape))
        accumulator = self._velocities[self._get_variable_index(variable)]
        acc_rows = tf.gather(accumulator.value, rows) + tf.square(grad)
        self.assign(accumulator, tf.IndexedSlices(acc_rows, rows, shape))
        self.assign_sub(variable, tf.IndexedSlices(lr * grad / tf.sqrt(0.1 + acc_rows + self.epsilon), rows, shape))


def reset_rows_state(optimizer: LazyAdam, variable) -> None:
    """Zeroes the optimizer slots of a row-sparse `variable` (`LazyAdam.reset_slots`)."""
    optimizer.reset_slots(variable)
