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


def mix(gates, experts: Sequence) -> object:
    """`sum_i gates[:, i] * experts[i]`: gates `(batch, n)`, experts n x `(batch, d)`."""
    out = gates[:, 0:1] * experts[0]
    for i in range(1, len(experts)):
        out = out + gates[:, i : i + 1] * experts[i]
    return out

