"""Expert groups computed as few large ops instead of many small ones.

The expert layers (MoE, CGC/PLE, STEM) keep one `MLP` per expert, so their
weights, checkpoints and saved models are laid out as before; only the
arithmetic is regrouped. On a 2-core CPU a level of five 64-wide experts
spent more time in per-op overhead, the gate mixture's einsum and its
stack/unstack gradient than in the matrix products (profile in
docs/BENCHMARKS.md).

- `parallel_experts`: experts reading the same input run as one matmul per
  layer (the kernels concatenated: `x [W_1 ... W_n]`), deeper layers as one
  batched matmul over the stacked kernels.
- `mix`: a gate's weighted sum of expert outputs, `sum_i g_i e_i`, as
  broadcast products (no stacked `(batch, n, d)` tensor, no einsum).

Both give the unfused layers' outputs and gradients up to float32 rounding
(tests/test_fused.py). Dropout is drawn once for the whole group instead of
once per expert: the same rate on every unit, a different random stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import tensorflow as tf
from keras import ops

from mtlrec.layers.mlp import MLP


def parallel_experts(experts: Sequence[MLP], x, training=None) -> list:
    """`[e(x) for e in experts]` for MLPs of equal widths and activation."""
    if len(experts) == 1:
        return [experts[0](x, training=training)]
    n, first = len(experts), experts[0]
    dropout = first.dropout_layer
    for depth in range(len(first.units)):
        layers = [e.dense_layers[depth] for e in experts]
        if depth == 0:  # one input: (b, d) @ (d, n * u)
            x = ops.matmul(x, ops.concatenate([d.kernel for d in layers], axis=1))
            x = x + ops.concatenate([d.bias for d in layers], axis=0)
        else:  # n inputs: (n, b, u) @ (n, u, u')
            if depth == 1:
                x = ops.transpose(ops.reshape(x, (-1, n, first.units[0])), (1, 0, 2))
            kernels = tf.stack([d.kernel.value for d in layers])
            biases = tf.stack([d.bias.value for d in layers])
            x = ops.matmul(x, kernels) + biases[:, None, :]
        x = layers[0].activation(x)
        if dropout is not None:
            x = dropout(x, training=training)
    if len(first.units) == 1:
        return ops.split(x, n, axis=1)
    return [x[i] for i in range(n)]


def mix(gates, experts: Sequence) -> object:
    """`sum_i gates[:, i] * experts[i]`: gates `(batch, n)`, experts n x `(batch, d)`."""
    out = gates[:, 0:1] * experts[0]
    for i in range(1, len(experts)):
        out = out + gates[:, i : i + 1] * experts[i]
    return out


def grouped_experts(groups: Sequence[tuple[object, Sequence[MLP]]], training=None) -> list[list]:
    """Outputs of `[(input, experts), ...]`, one list per group; groups that
    read the same tensor (a PLE's first level) run as one `parallel_experts`."""
    merged: dict[int, tuple[object, list[MLP]]] = {}
    for x, experts in groups:
        merged.setdefault(id(x), (x, []))[1].extend(experts)
    outputs = {key: iter(parallel_experts(mlps, x, training=training)) for key, (x, mlps) in merged.items() if mlps}
    return [[next(outputs[id(x)]) for _ in experts] for x, experts in groups]
