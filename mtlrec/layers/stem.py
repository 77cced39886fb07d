"""STEM's extraction layer: all forward, task-specific backward."""

from __future__ import annotations

from collections.abc import Sequence

import keras
from keras import ops

from mtlrec.layers.extraction import CGCLayer
from mtlrec.layers.mixing import mix


@keras.saving.register_keras_serializable(package="mtlrec")
class STEMLayer(CGCLayer):
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

    A `CGCLayer` (the same experts, gates, variable names and config) whose
    task gates are as wide as every expert and whose forward pass differs.
    """

    def __init__(self, num_tasks: int, num_task_experts: int, num_shared_experts: int,
                 expert_units: Sequence[int], is_last: bool = False, dropout: float = 0.0, **kwargs):
        if num_task_experts < 1:
            raise ValueError(
                f"Received: num_tasks={num_tasks}, num_task_experts={num_task_experts}, "
                f"num_shared_experts={num_shared_experts}"
            )
        super().__init__(num_tasks, num_task_experts, num_shared_experts, expert_units, is_last=is_last,
                         dropout=dropout, **kwargs)

    def task_gate_width(self) -> int:
        """Every expert: the task's own, the other tasks' and the shared ones."""
        return self.num_tasks * self.num_task_experts + self.num_shared_experts

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
