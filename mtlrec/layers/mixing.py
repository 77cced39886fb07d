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


def mix_gates(gates: Sequence, members: Sequence[Sequence[int]], experts: Sequence) -> list:
    """Several softmax gates over one list of experts at once: gate j mixes
    `experts[i] for i in members[j]` (its columns, in that order). Returns
    each gate's mixture, the same as `mix(gates[j], [experts[i] for i in
    members[j]], sum_to_one=True)` for each j.

    When every gate holds a common expert r (CGC's shared experts, every
    gate of an MMoE), each mixture is `e_r + sum_i g_i (e_i - e_r)` and the
    differences `e_i - e_r` are computed once for all gates, forward and
    backward, with a hand-written gradient that sums each expert's
    gradient over the gates in one pass. A CGC level of two tasks with one
    expert each and one shared (PLE at DeepCTR's sizes) makes 27 passes
    over `(batch, d)` tensors instead of 31. The gradient reaches each
    gate through its columns other than r; under the softmax that is the
    same gradient (rows sum to one). One gate, or gates without a common
    expert, mix one by one (`mix`)."""
    common = set(members[0]).intersection(*members[1:])
    if len(gates) < 2 or not common:
        return [mix(g, [experts[i] for i in m], sum_to_one=True) for g, m in zip(gates, members)]
    ref = max(common)
    used = sorted({i for m in members for i in m} - {ref})
    n_gates = len(gates)

    @tf.custom_gradient
    def fused(*args):
        gs, es = args[:n_gates], args[n_gates:]
        diffs = {i: es[i] - es[ref] for i in used}
        outs = []
        for g, m in zip(gs, members):
            out = es[ref]
            for col, i in enumerate(m):
                if i != ref:
                    out = out + g[:, col:col + 1] * diffs[i]
            outs.append(out)

        def grad(*douts):
            dgates, parts = [], {i: [] for i in used}
            for g, m, dout in zip(gs, members, douts):
                cols = []
                for col, i in enumerate(m):
                    if i == ref:
                        cols.append(tf.zeros_like(g[:, col:col + 1]))
                    else:
                        cols.append(tf.reduce_sum(dout * diffs[i], axis=-1, keepdims=True))
                        parts[i].append(g[:, col:col + 1] * dout)
                dgates.append(tf.concat(cols, axis=1))
            dexperts = [tf.zeros_like(e) for e in es]
            for i in used:
                dexperts[i] = tf.add_n(parts[i])
            total = tf.add_n(list(douts))
            dexperts[ref] = total - tf.add_n([dexperts[i] for i in used]) if used else total
            return [*dgates, *dexperts]

        return outs, grad

    return list(fused(*gates, *experts))
