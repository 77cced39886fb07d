"""STEM's extraction layer: all forward, task-specific backward."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from mtlrec.layers.mixing import mix
from mtlrec.layers.mlp import MLP
from mtlrec.layers.narrow import NarrowDense


@keras.saving.register_keras_serializable(package="mtlrec")
class STEMLayer(keras.layers.Layer):
    """Task-specific and shared experts; every task gate sees every expert.

    Task t's gate (on task t's input) weighs all experts: its own, the
    shared ones, and the other tasks' specific experts, which reach it
    through a stop-gradient: they inform task t's forward pass, but task
    t's loss never trains them (so each task-specific embedding and expert
    is trained by its own task only). A shared gate (on the shared input)
    mixes every expert, other tasks' specific experts stop-gradiented
    likewise, for the next level.

    Args:
        num_tasks: T.
        num_task_experts: experts per task.
        num_shared_experts: shared experts.
        expert_units: widths of each expert MLP.
        is_last: last level: no shared output.
        dropout: dropout inside the experts.

    Input: `[x_1, ..., x_T, x_s]`. Output: T task outputs (+ shared unless
    `is_last`), each `(batch, expert_units[-1])`; with `return_gates=True`
    in `call`, also the gate weights `(batch, T * num_task_experts +
    num_shared_experts)` (task gates then the shared gate).

    References: Su et al., "STEM: Unleashing the Power of Embeddings for
    Multi-task Recommendation", AAAI 2024, section 4 ("All Forward
    Task-specific Backward" gating).
    """

    def __init__(self, num_tasks: int, num_task_experts: int, num_shared_experts: int,
                 expert_units: Sequence[int], is_last: bool = False, dropout: float = 0.0, **kwargs):
        super().__init__(**kwargs)
        if num_tasks < 1 or num_task_experts < 1 or num_shared_experts < 0:
            raise ValueError(
                f"Received: num_tasks={num_tasks}, num_task_experts={num_task_experts}, "
                f"num_shared_experts={num_shared_experts}"
            )
        self.num_tasks = int(num_tasks)
        self.num_task_experts = int(num_task_experts)
        self.num_shared_experts = int(num_shared_experts)
        self.expert_units = [int(u) for u in expert_units]
        self.is_last = bool(is_last)
        self.dropout = dropout
        n_all = num_tasks * num_task_experts + num_shared_experts
        self.task_expert_list = [
            MLP(self.expert_units, dropout=dropout, name=f"task{t}_expert{i}")
            for t in range(num_tasks) for i in range(num_task_experts)
        ]
        self.shared_experts = [MLP(self.expert_units, dropout=dropout, name=f"shared_expert{i}") for i in range(num_shared_experts)]
        self.task_gates = [NarrowDense(n_all, name=f"task{t}_gate") for t in range(num_tasks)]
        self.shared_gate = None if is_last else NarrowDense(n_all, name="shared_gate")

    def build(self, input_shape):
        k = self.num_task_experts
        for t in range(self.num_tasks):
            for e in self.task_expert_list[t * k : (t + 1) * k]:
                e.build(input_shape[t])
            self.task_gates[t].build(input_shape[t])
        for e in self.shared_experts:
            e.build(input_shape[-1])
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
            experts = [e if s == t else ops.stop_gradient(e) for s in range(self.num_tasks) for e in own[s]]
            g = ops.softmax(self.task_gates[t](inputs[t]), axis=-1)
            outputs.append(mix(g, experts + shared, sum_to_one=True))
            gates.append(g)
        if self.shared_gate is not None:
            experts = [ops.stop_gradient(e) for task in own for e in task]
            g = ops.softmax(self.shared_gate(inputs[-1]), axis=-1)
            outputs.append(mix(g, experts + shared, sum_to_one=True))
            gates.append(g)
        return (outputs, gates) if return_gates else outputs

    def compute_output_shape(self, input_shape):
        n = self.num_tasks + (0 if self.is_last else 1)
        return [tuple(input_shape[0][:-1]) + (self.expert_units[-1],)] * n

    def get_config(self):
        return {**super().get_config(), "num_tasks": self.num_tasks, "num_task_experts": self.num_task_experts,
                "num_shared_experts": self.num_shared_experts, "expert_units": self.expert_units,
                "is_last": self.is_last, "dropout": self.dropout}
