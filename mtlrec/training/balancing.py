"""How the task losses (or their gradients) are combined into one step.

`--loss_balancing=` picks one rule; `w0_t` are the fixed `--loss_weights`
(1 by default), which every rule keeps as a prior factor:

- `fixed`: `L = sum_t w0_t L_t`.
- `ple_schedule`: the PLE paper's schedule (Tang et al., RecSys 2020,
  section 4.3), `w_t(s) = w0_t * gamma_t ** s` with `gamma_t` from
  `--loss_weight_decay` (1: no decay) and `s` the optimizer step. (The
  paper counts `s` in epochs; a per-epoch decay `g` is a per-step decay
  `g ** (1 / steps_per_epoch)`.)
- `uncertainty`: homoscedastic uncertainty (Kendall et al., CVPR 2018),
  `L = sum_t w0_t (exp(-s_t) L_t + s_t)` with a learned `s_t = log sigma_t^2`
  per task; for a fixed `L_t` the optimum is `s_t = log L_t`, an effective
  weight `exp(-s_t) = 1 / L_t`.
- `dwa`: dynamic weight averaging (Liu et al., CVPR 2019), per epoch:
  `w_t = w0_t * K exp(r_t / T) / sum_k exp(r_k / T)`, `r_t = L_t(e-1) / L_t(e-2)`
  the ratio of the task's mean training losses of the last two epochs
  (`w_t = w0_t` for the first two epochs), `T` = `--dwa_temperature`.
- `gradnorm`: GradNorm (Chen et al., ICML 2018). Learned weights `w_t`
  (starting at 1, kept summing to K) scale `w0_t L_t`. Each step, on the
  last shared layer `W`: `G_t = w_t ||grad_W w0_t L_t||`, `r_t` = the task's
  loss ratio `L_t / L_t(0)` over its mean, target `G_mean r_t ** alpha`
  (a constant), and `w_t -= lr * sign(G_t - target_t) ||grad_W w0_t L_t||`,
  the gradient of `sum_t |G_t - target_t|`, then `w` is renormalised.
- `pcgrad`: gradient surgery (Yu et al., NeurIPS 2020). On the shared
  parameters, each task's gradient `g_i` is projected, in a random order of
  the other tasks `j`, off every `g_j` it conflicts with
  (`g_i . g_j < 0`: `g_i -= (g_i . g_j) / |g_j|^2 g_j`), and the projected
  gradients are summed; a parameter only one task reaches keeps that
  task's gradient.

The effective weight of each task is reported per step (`weights`) and per
epoch in metrics.json and TensorBoard.

PCGrad is computed in the space of the task gradients: every projected
gradient is a combination `sum_j A_ij g_j` of the original ones, and `A`
follows from their Gram matrix alone, so only `K x K` dot products are
formed and the sum is `sum_j (sum_i A_ij) g_j`. Embedding tables keep
row-sparse (`tf.IndexedSlices`) gradients: dot products run over the rows
the tasks touched (duplicate rows summed first), never the whole table.
Under `tf.distribute`, the per-task gradients are summed over replicas
before the surgery (it is not linear), so a step equals the single-device
step.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence

import numpy as np
import tensorflow as tf

METHODS = ("fixed", "ple_schedule", "uncertainty", "dwa", "gradnorm", "pcgrad")


@dataclasses.dataclass(frozen=True)
class Balancing:
    """`--loss_balancing` and its settings."""

    method: str = "fixed"
    decay: dict[str, float] = dataclasses.field(default_factory=dict)  # ple_schedule: gamma per task
    dwa_temperature: float = 2.0
    gradnorm_alpha: float = 1.5
    gradnorm_learning_rate: float = 0.025

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"--loss_balancing={self.method}: expected one of {', '.join(METHODS)}")
        for task, gamma in self.decay.items():
            if not (math.isfinite(gamma) and 0 < gamma <= 1):
                raise ValueError(f"--loss_weight_decay={task}={gamma}: a decay per step must be in (0, 1]")
        if self.method == "ple_schedule" and not self.decay:
            raise ValueError("--loss_balancing=ple_schedule needs --loss_weight_decay (task=gamma per step, e.g. "
                             "like=0.998): without a decay the schedule is the fixed rule")
        if self.decay and self.method != "ple_schedule":
            raise ValueError(f"--loss_weight_decay is the ple_schedule's decay; --loss_balancing={self.method} "
                             "would ignore it")
        for name in ("dwa_temperature", "gradnorm_learning_rate"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ValueError(f"--{name} must be a finite number > 0. Received: {value}")
        if not (math.isfinite(self.gradnorm_alpha) and self.gradnorm_alpha >= 0):
            raise ValueError(f"--gradnorm_alpha must be a finite number >= 0. Received: {self.gradnorm_alpha}")

    def acting_settings(self) -> dict:
        """The settings (by flag name) that change what this rule trains: none for `fixed`."""
        used = {"ple_schedule": {"loss_weight_decay": dict(self.decay)}, "dwa": {"dwa_temperature": self.dwa_temperature},
                "gradnorm": {"gradnorm_alpha": self.gradnorm_alpha,
                             "gradnorm_learning_rate": self.gradnorm_learning_rate}}
        return {} if self.method == "fixed" else {"loss_balancing": self.method, **used.get(self.method, {})}

    @property
    def per_task_gradients(self) -> bool:
        return self.method in ("gradnorm", "pcgrad")


# ---- the rules, on plain values -------------------------------------------------------------------------------


def ple_schedule_weights(w0: tf.Tensor, gamma: tf.Tensor, step) -> tf.Tensor:
    """`w0 * gamma ** step`."""
    return w0 * tf.pow(gamma, tf.cast(step, tf.float32))


def uncertainty_loss(losses: tf.Tensor, log_variance: tf.Tensor, w0: tf.Tensor) -> tf.Tensor:
    """`sum_t w0_t (exp(-s_t) L_t + s_t)`."""
    return tf.reduce_sum(w0 * (tf.exp(-log_variance) * losses + log_variance))


def dwa_weights(epoch_losses: Sequence[Sequence[float]], temperature: float, k: int) -> np.ndarray:
    """DWA's weights (summing to `k`, the tasks) for the next epoch from the
    mean task losses of the epochs so far (oldest first); ones before two."""
    if len(epoch_losses) < 2:
        return np.ones(k)
    last, before = np.asarray(epoch_losses[-1], float), np.asarray(epoch_losses[-2], float)
    ratio = last / np.maximum(before, 1e-12)
    e = np.exp((ratio - ratio.max()) / temperature)  # shifted: same softmax, no overflow
    return len(ratio) * e / e.sum()


def gradnorm_update(weights: tf.Tensor, grad_norms: tf.Tensor, losses: tf.Tensor, initial_losses: tf.Tensor,
                    alpha: float, learning_rate: float) -> tf.Tensor:
    """GradNorm's new task weights from this step's norms `||grad_W w0_t L_t||`
    (unweighted by `w`), losses and first-step losses."""
    k = tf.cast(tf.size(weights), tf.float32)
    g = weights * grad_norms
    inverse_rate = losses / tf.maximum(initial_losses, 1e-12)
    relative = inverse_rate / tf.maximum(tf.reduce_mean(inverse_rate), 1e-12)
    target = tf.stop_gradient(tf.reduce_mean(g) * tf.pow(relative, alpha))
    new = weights - learning_rate * tf.sign(g - target) * grad_norms
    new = tf.maximum(new, 1e-3)
    return new * k / tf.reduce_sum(new)


def pcgrad_coefficients(gram: tf.Tensor, order: tf.Tensor) -> tf.Tensor:
    """`A` (K x K) with projected `g'_i = sum_j A_ij g_j`, from the Gram
    matrix `gram_ij = g_i . g_j` and the order `order` (a permutation of
    0..K-1) in which each task meets the others."""
    k = gram.shape[0]
    rows = []
    for i in range(k):
        a = tf.one_hot(i, k, dtype=gram.dtype)  # g'_i as coefficients of the g_j
        for position in range(k):
            j = order[position]
            dot = tf.tensordot(a, gram[:, j], 1)  # g'_i . g_j
            norm2 = gram[j, j]
            conflict = tf.logical_and(tf.logical_and(tf.not_equal(j, i), dot < 0), norm2 > 0)
            c = tf.where(conflict, dot / tf.where(norm2 > 0, norm2, 1.0), 0.0)
            a = a - c * tf.one_hot(j, k, dtype=gram.dtype)
        rows.append(a)
    return tf.stack(rows)


def _rows(grad: tf.IndexedSlices, rows: tf.Tensor) -> tf.Tensor:
    """A row-sparse gradient's values on the sorted `rows`, duplicates summed."""
    position = tf.searchsorted(rows, tf.cast(grad.indices, rows.dtype))
    return tf.math.unsorted_segment_sum(grad.values, position, tf.shape(rows)[0])


def gram_matrix(task_grads: Sequence[Sequence]) -> tf.Tensor:
    """`G_ij = sum_v g_i[v] . g_j[v]` over the variables `v`; `task_grads[i][v]`
    is a tensor, `tf.IndexedSlices` or None (the task does not reach it)."""
    k = len(task_grads)
    total = tf.zeros([k, k])
    for v in range(len(task_grads[0])):
        grads = [task_grads[i][v] for i in range(k)]
        present = [g for g in grads if g is not None]
        if not present:
            continue
        if any(isinstance(g, tf.IndexedSlices) for g in present):
            rows = tf.sort(tf.unique(tf.concat([tf.cast(g.indices, tf.int64) for g in present
                                                if isinstance(g, tf.IndexedSlices)], 0))[0])
            dense_shape = next(g.dense_shape for g in present if isinstance(g, tf.IndexedSlices))
            flat = []
            for g in grads:
                if g is None:
                    flat.append(tf.zeros([tf.size(rows, out_type=tf.int64) * tf.reduce_prod(tf.cast(dense_shape[1:], tf.int64))]))
                elif isinstance(g, tf.IndexedSlices):
                    flat.append(tf.reshape(tf.cast(_rows(g, rows), tf.float32), [-1]))
                else:  # a dense gradient of a table another task reads sparsely
                    flat.append(tf.reshape(tf.cast(tf.gather(g, rows), tf.float32), [-1]))
        else:
            size = tf.size(present[0])
            flat = [tf.zeros([size]) if g is None else tf.reshape(tf.cast(g, tf.float32), [-1]) for g in grads]
        stacked = tf.stack(flat)
        total += tf.matmul(stacked, stacked, transpose_b=True)
    return total


def combine(grads: Sequence, coefficients: tf.Tensor):
    """`sum_j c_j g_j` of one variable's task gradients (None: absent);
    row-sparse when any of them is."""
    present = [(j, g) for j, g in enumerate(grads) if g is not None]
    if not present:
        return None
    if any(isinstance(g, tf.IndexedSlices) for _, g in present):
        parts = [g if isinstance(g, tf.IndexedSlices) else dense_as_slices(g) for _, g in present]
        values = tf.concat([coefficients[j] * p.values for (j, _), p in zip(present, parts)], 0)
        indices = tf.concat([tf.cast(p.indices, tf.int64) for p in parts], 0)
        return tf.IndexedSlices(values, indices, parts[0].dense_shape)
    return tf.add_n([coefficients[j] * g for j, g in present])


def dense_as_slices(g: tf.Tensor) -> tf.IndexedSlices:
    rows = tf.range(tf.shape(g, out_type=tf.int64)[0])
    return tf.IndexedSlices(g, rows, tf.shape(g, out_type=tf.int64))


def add(a, b):
    """Two gradients of one variable (either may be None or row-sparse)."""
    if a is None or b is None:
        return b if a is None else a
    if isinstance(a, tf.IndexedSlices) and isinstance(b, tf.IndexedSlices):
        return tf.IndexedSlices(tf.concat([a.values, b.values], 0),
                                tf.concat([tf.cast(a.indices, tf.int64), tf.cast(b.indices, tf.int64)], 0),
                                a.dense_shape)
    return tf.convert_to_tensor(a) + tf.convert_to_tensor(b)


def scale(g, factor):
    if g is None:
        return None
    if isinstance(g, tf.IndexedSlices):
        return tf.IndexedSlices(g.values * factor, g.indices, g.dense_shape)
    return g * factor


def pcgrad(task_grads: Sequence[Sequence], order: tf.Tensor | None = None) -> tuple[list, tf.Tensor]:
    """The PCGrad sum of per-task gradients `task_grads[i][v]` (all variables
    shared), and the number of conflicting pairs `g_i . g_j < 0` met."""
    k = len(task_grads)
    gram = gram_matrix(task_grads)
    if order is None:
        order = tf.range(k)
    coefficients = tf.reduce_sum(pcgrad_coefficients(gram, order), axis=0)
    off_diagonal = 1.0 - tf.eye(k)
    conflicts = tf.reduce_sum(tf.cast(gram * off_diagonal < 0, tf.float32)) / 2
    return [combine([task_grads[i][v] for i in range(k)], coefficients) for v in range(len(task_grads[0]))], conflicts


# ---- the gradient assembly of the rules that need each task's gradients (gradnorm, pcgrad) --------------------


def all_reduce_sum(values: list, replicas: int) -> list:
    """Sum over the replicas (in a replica context) of a list holding
    tensors, IndexedSlices and None."""
    present = [i for i, v in enumerate(values) if v is not None]
    if replicas == 1 or not present:
        return values
    reduced = tf.distribute.get_replica_context().all_reduce("SUM", [values[i] for i in present])
    out = list(values)
    for i, r in zip(present, reduced):
        out[i] = r
    return out


def reach(per_task: list[list]) -> list[int]:
    """How many tasks' gradients reach each variable (known when tracing)."""
    return [sum(g[v] is not None for g in per_task) for v in range(len(per_task[0]))]


def last_shared_block(variables: Sequence, reach: Sequence[int], sparse: Sequence[bool]) -> list[int]:
    """GradNorm's `W`: the dense weights two or more tasks reach, in the last
    top-level layer holding such weights (MMoE: the experts; PLE: the last
    level's shared experts; Shared-Bottom: the bottom MLP)."""
    shared = [i for i, v in enumerate(variables) if reach[i] >= 2 and not sparse[i]]
    if not shared:
        raise ValueError("--loss_balancing=gradnorm: the tasks share no dense layer in this model")
    block = variables[shared[-1]].path.split("/")[0]
    return [i for i in shared if variables[i].path.split("/")[0] == block]


def pcgrad_gradients(tape: tf.GradientTape, terms: list, common: tf.Tensor, variables: Sequence, iterations,
                     replicas: int) -> tuple[list, tf.Tensor]:
    """One replica's gradients under PCGrad, and the conflicts of the step.
    `terms`: each task's weighted loss, `common`: the rest (both already
    divided by the replicas). On the parameters two or more tasks reach, the
    per-task gradients are summed over the replicas, operated on, and
    divided by the replicas again (the optimizer sums over replicas); the
    others keep the plain sum of the task gradients. The order of the tasks
    is drawn from the step number."""
    per_task = [tape.gradient(term, variables) for term in terms]
    common_grads = tape.gradient(common, variables)
    reached = reach(per_task)
    shared = [v for v in range(len(variables)) if reached[v] >= 2]
    flat = all_reduce_sum([per_task[i][v] for i in range(len(terms)) for v in shared], replicas)
    task_grads = [flat[i * len(shared):(i + 1) * len(shared)] for i in range(len(terms))]
    seed = tf.stack([tf.cast(iterations, tf.int32), 7])
    order = tf.argsort(tf.random.stateless_uniform([len(terms)], seed=seed))
    surgery, conflicts = pcgrad(task_grads, order)
    gradients = []
    for v in range(len(variables)):
        if v in shared:  # the global sum, handed to an optimizer that sums over replicas
            g = scale(surgery[shared.index(v)], 1.0 / replicas)
        else:
            g = None
            for i in range(len(terms)):
                g = add(g, per_task[i][v])
        gradients.append(add(g, common_grads[v]))
    return gradients, conflicts


def gradnorm_step(tape: tf.GradientTape, plain: list, gradients: Sequence, variables: Sequence,
                  task_losses: tf.Tensor, task_weights: tf.Tensor, recorded_initial: tf.Tensor,
                  settings: Balancing, replicas: int) -> tuple[tf.Tensor, tf.Tensor]:
    """GradNorm's task weights after this step, and the initial losses
    (`recorded_initial` where recorded, else this step's). `plain`: each
    task's `w0_t L_t / replicas`; the norms are taken on the last shared
    dense block, summed over the replicas; the losses are their means."""
    sparse = [isinstance(g, tf.IndexedSlices) for g in gradients]
    per_task = [tape.gradient(term, variables) for term in plain]
    block = last_shared_block(variables, reach(per_task), sparse)
    flat = all_reduce_sum([per_task[i][v] for i in range(len(plain)) for v in block], replicas)
    norms = tf.stack([tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in
                                        flat[i * len(block):(i + 1) * len(block)] if g is not None]))
                      for i in range(len(plain))])
    if replicas > 1:
        task_losses = tf.distribute.get_replica_context().all_reduce("MEAN", task_losses)
    initial = tf.where(recorded_initial > 0, recorded_initial, task_losses)
    weights = gradnorm_update(task_weights, norms, task_losses, initial, settings.gradnorm_alpha,
                              settings.gradnorm_learning_rate)
    return weights, initial


def dwa_before_epoch(trainer, epoch_losses: Sequence[Sequence[float]]) -> None:
    """DWA, before an epoch: the task weights from the last two epochs' mean losses."""
    weights = dwa_weights(epoch_losses, trainer.balancing.dwa_temperature, len(trainer.tasks))
    trainer.task_weights.assign(weights.astype(np.float32))
