"""The CGC extraction layer; PLE stacks several."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from mtlrec.layers.mixing import mix
from mtlrec.layers.mlp import MLP
from mtlrec.layers.narrow import NarrowDense


@keras.saving.register_keras_serializable(package="mtlrec")
class CGCLayer(keras.layers.Layer):
    """Customized Gate Control: task-specific and shared experts.

    Task t mixes its own experts and the shared ones,
    `y_t = sum_i g_t(x_t)_i * [E_t(x_t), E_s(x_s)]_i`; unless this is the
    last level, a shared gate mixes every expert for the next level,
    `y_s = sum_i g_s(x_s)_i * [E_1(x_1), ..., E_T(x_T), E_s(x_s)]_i`.

    Args:
        num_tasks: number of tasks T.
        num_task_experts: experts per task.
        num_shared_experts: shared experts.
        expert_units: widths of each expert MLP.
        is_last: last level: no shared output.
        dropout: dropout inside the experts.

    Input: a list of T + 1 tensors `(batch, d)`: each task's input then the
    shared input (the same tensor T + 1 times at the first level).
    Output: a list of T task outputs (+ the shared output unless `is_last`),
    each `(batch, expert_units[-1])`; with `return_gates=True`, also the gate
    weights (task gates then the shared gate).

    References: Tang et al., "Progressive Layered Extraction (PLE)",
    RecSys 2020, sections 4.2-4.3.
    """

    def __init__(self, num_tasks: int, num_task_experts: int, num_shared_experts: int,
                 expert_units: Sequence[int], is_last: bool = False, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if num_tasks < 1 or num_task_experts < 0 or num_shared_experts < 0:
            raise ValueError(
                f"Received: num_tasks={num_tasks}, num_task_experts={num_task_experts}, "
                f"num_shared_experts={num_shared_experts}"
            )
        if num_task_experts + num_shared_experts < 1:
            raise ValueError("CGC needs at least one expert per task gate.")
        self.num_tasks = int(num_tasks)
        self.num_task_experts = int(num_task_experts)
        self.num_shared_experts = int(num_shared_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.is_last = bool(is_last)
        self.dropout = dropout
        # A flat list (task t's experts at t * num_task_experts + i): Keras
        # saving tracks layers in lists, not in lists of lists.
        self.task_expert_list = [
            MLP(self.expert_units, dropout=dropout, name=f"task{t}_expert{i}")
            for t in range(num_tasks)
            for i in range(num_task_experts)
        ]
        self.shared_experts = [
            MLP(self.expert_units, dropout=dropout, name=f"shared_expert{i}") for i in range(num_shared_experts)
        ]
        self.task_gates = [NarrowDense(self.task_gate_width(), name=f"task{t}_gate") for t in range(num_tasks)]
        self.shared_gate = (
            None if is_last
            else NarrowDense(num_tasks * num_task_experts + num_shared_experts, name="shared_gate")
        )

    def task_gate_width(self) -> int:
        """Experts a task gate weighs: its own and the shared ones."""
        return self.num_task_experts + self.num_shared_experts

    @property
    def task_experts(self) -> list[list[MLP]]:
        k = self.num_task_experts
        return [self.task_expert_list[t * k : (t + 1) * k] for t in range(self.num_tasks)]

    def build(self, input_shape):
        if len(input_shape) != self.num_tasks + 1:
            raise ValueError(
                f"CGCLayer expects {self.num_tasks + 1} inputs (tasks + shared). "
                f"Received: {len(input_shape)}"
            )
        for t in range(self.num_tasks):
            for layer in (*self.task_experts[t], self.task_gates[t]):
                layer.build(input_shape[t])
        for layer in self.shared_experts:
            layer.build(input_shape[-1])
        if self.shared_gate is not None:
            self.shared_gate.build(input_shape[-1])
        self.built = True

    def call(self, inputs, training=None, return_gates=False):
        k = self.num_task_experts
        own = [[e(inputs[t], training=training) for e in self.task_expert_list[t * k : (t + 1) * k]]
               for t in range(self.num_tasks)]
        shared = [e(inputs[-1], training=training) for e in self.shared_experts]
        outputs, gates = [], []
        for t in range(self.num_tasks):
            g = ops.softmax(self.task_gates[t](inputs[t]), axis=-1)
            outputs.append(mix(g, own[t] + shared, sum_to_one=True))
            gates.append(g)
        if self.shared_gate is not None:
            g = ops.softmax(self.shared_gate(inputs[-1]), axis=-1)
            outputs.append(mix(g, [e for task in own for e in task] + shared, sum_to_one=True))
            gates.append(g)
        return (outputs, gates) if return_gates else outputs

    def compute_output_shape(self, input_shape):
        n = self.num_tasks + (0 if self.is_last else 1)
        return [tuple(input_shape[0][:-1]) + (self.expert_units[-1],)] * n

    def get_config(self):
        return {
            **super().get_config(),
            "num_tasks": self.num_tasks,
            "num_task_experts": self.num_task_experts,
            "num_shared_experts": self.num_shared_experts,
            "expert_units": self.expert_units,
            "is_last": self.is_last,
            "dropout": self.dropout,
        }
