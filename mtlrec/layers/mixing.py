"""The arithmetic shared by the expert layers (MoE, CGC/PLE, STEM).

On a 2-core CPU a PLE level spent more time in the gate mixtures' stack +
einsum (and the unstack in their gradient) than in the experts' matrix
products (profile in docs/BENCHMARKS.md). `mix` computes a gate's weighted
sum of expert outputs, `sum_i g_i e_i`, as broadcast products instead: no
stacked `(batch, n, d)` tensor, no einsum; the same outputs and gradients up
to float32 rounding (tests/test_mixing.py).

Each expert stays its own MLP call: concatenating the kernels of experts
that read one input into one wide matmul measured slower on CPU at every
size tried (docs/BENCHMARKS.md).
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf


@tf.custom_gradient
def _mix_two(g0, e0, e1):
    """`g0 e0 + (1 - g0) e1` as `e1 + g0 (e0 - e1)`: one product forward,
    and backward one product and one difference for the experts and one
    product for the gate, where the two-term sum needs two of each."""
    diff = e0 - e1

    def grad(dout):
        de0 = dout * g0
        return tf.reduce_sum(dout * diff, axis=-1, keepdims=True), de0, dout - de0

    return e1 + g0 * diff, grad


def mix(gates, experts: Sequence, sum_to_one: bool = False) -> object:
    """`sum_i gates[:, i] * experts[i]`: gates `(batch, n)`, experts n x `(batch, d)`.

    `sum_to_one`: the gates are a softmax (each row sums to one), so two
    experts mix as `e_1 + g_0 (e_0 - e_1)`: fewer passes over the experts
    (PLE's 2-expert gates, 4096 x 256: ~0.6 ms less per gate, forward and
    backward). Its gradient reaches the gate logits only through `g_0`,
    which under a softmax is the same gradient."""
    if sum_to_one and len(experts) == 2:
        return _mix_two(gates[:, 0:1], experts[0], experts[1])
    out = gates[:, 0:1] * experts[0]
    for i in range(1, len(experts)):
        out = out + gates[:, i : i + 1] * experts[i]
    return out
