"""Asymmetric multi-embedding (APLE's AME) and its low-rank variant."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
from keras import ops

from mtlrec.layers.embedding import FeatureEmbedding, float32_layer


def _field_counts(features: list[dict[str, Any]]) -> tuple[int, int]:
    """(embedded fields, numeric features) of `feature_specs` settings."""
    fields = sum(f["kind"] != "numeric" for f in features)
    return fields, len(features) - fields


def _dims(dims: Sequence[int], n: int, what: str) -> list[int]:
    dims = [int(d) for d in dims]
    if not dims or min(dims) < 1:
        raise ValueError(f"{what} must be positive widths. Received: {dims}")
    return [dims[t % len(dims)] for t in range(n)]


@keras.saving.register_keras_serializable(package="mtlrec")
class AsymmetricMultiEmbedding(keras.layers.Layer):
    """A shared embedding set plus one per task, each of its own width.

    Task t's experts read `x_t = E_t(features)` (width `task_dims[t]` per
    field) and the shared experts read `x_s = E_s(features)` (width
    `shared_dim`): no two tasks share one representation space, and the
    widths differ (APLE used 32 and 128 for the tasks and 64 shared).

    Args:
        features: per-feature settings (`feature_specs(manifest)`).
        num_tasks: number of tasks T.
        task_dims: width per task (cycled if shorter than T).
        shared_dim: width of the shared set.
        l2: L2 on looked-up rows, for every set.
        fused: keep the T + 1 sets of a feature as column blocks of one
            table (`[task 1 | ... | task T | shared]`, one table per feature
            in the `embedding` layer) instead of one table per set and
            feature (layers `task<t>_embedding`, `shared_embedding`). The
            outputs, the L2 and the gradients are the same; one lookup, one
            gradient and one row-sparse update per feature instead of T + 1
            make APLE's and STEM's steps faster. Unfused, each task's set is
            a variable of its own, which per-task early stopping needs to
            freeze it; the builders fuse unless that is on.

    Input: the raw feature dict. Output: a list of T + 1 tensors
    `[x_1, ..., x_T, x_s]`, each `(batch, width_t * #fields + #numeric)`.

    References: APLE (PLE + asymmetric multi-embedding + ResFlow, on
    Tenrec), summarised in docs/DESIGN.md.
    """

    def __init__(self, features: list[dict[str, Any]], num_tasks: int, task_dims: Sequence[int] = (32, 128),
                 shared_dim: int = 64, l2: float = 0.0, fused: bool = False, **kwargs):
        super().__init__(**{**kwargs, "dtype": float32_layer()})  # tables: see embedding.FLOAT32
        self.features = [dict(f) for f in features]
        self.num_tasks = int(num_tasks)
        self.task_dims = _dims(task_dims, num_tasks, "task_dims")
        self.shared_dim = int(shared_dim)
        self.l2 = float(l2)
        self.fused = bool(fused)
        self.widths = [*self.task_dims, self.shared_dim]
        if self.fused:
            self.table_set = FeatureEmbedding(features, sum(self.widths), l2=l2, name="embedding")
            self.sets = []
        else:
            self.sets = [FeatureEmbedding(features, d, l2=l2, name=f"task{t}_embedding")
                         for t, d in enumerate(self.task_dims)]
            self.sets.append(FeatureEmbedding(features, shared_dim, l2=l2, name="shared_embedding"))
        self.num_fields, self.num_numeric = _field_counts(features)

    def build(self, input_shape=None):
        for s in self.sets or [self.table_set]:
            s.build(input_shape)
        self.built = True

    def call(self, inputs, training=None):
        if not self.fused:
            return [s(inputs, training=training) for s in self.sets]
        # The L2 of the wide rows is the sum of the sets' L2: squared norms add over column blocks.
        # Each field's row splits into its sets' blocks, and each set concatenates its blocks: two
        # copies, where stacking the fields, splitting the stack and appending the numbers took three.
        fields, numeric = self.table_set.embed_field_list(inputs, training=training)
        cuts = np.cumsum(self.widths)[:-1].tolist()
        blocks = [ops.split(field, cuts, axis=-1) for field in fields]
        tail = [] if numeric is None else [numeric]
        return [ops.concatenate([b[s] for b in blocks] + tail, axis=-1) for s in range(len(self.widths))]

    def compute_output_shape(self, input_shape):
        return [(None, self.num_fields * d + self.num_numeric) for d in self.widths]

    def get_config(self):
        return {**super().get_config(), "features": self.features, "num_tasks": self.num_tasks,
                "task_dims": self.task_dims, "shared_dim": self.shared_dim, "l2": self.l2, "fused": self.fused}


@keras.saving.register_keras_serializable(package="mtlrec")
class LowRankMultiEmbedding(keras.layers.Layer):
    """AME with one shared table and a rank-r map per task and field.

    `e_{t,f} = e_{s,f} A_{t,f} B_{t,f}` with `A_{t,f}: shared_dim x r` and
    `B_{t,f}: r x task_dims[t]`: each task still sees its own space of its
    own width, but the per-task vocabulary-sized tables are replaced by
    `r * (shared_dim + task_dim)` weights per field (the APLE seed's open
    item: "matrix factorization to replace multiple embedding matrices").

    Args:
        features: per-feature settings (`feature_specs(manifest)`).
        num_tasks: number of tasks T.
        task_dims: width per task (cycled if shorter than T).
        shared_dim: width of the one shared table set.
        rank: r.
        l2: L2 on looked-up shared rows.

    Input/Output: as `AsymmetricMultiEmbedding`.
    """

    def __init__(self, features: list[dict[str, Any]], num_tasks: int, task_dims: Sequence[int] = (32, 128),
                 shared_dim: int = 64, rank: int = 8, l2: float = 0.0, **kwargs):
        super().__init__(**{**kwargs, "dtype": float32_layer()})  # tables: see embedding.FLOAT32
        if rank < 1:
            raise ValueError(f"rank must be >= 1. Received: rank={rank}")
        self.features = [dict(f) for f in features]
        self.num_tasks = int(num_tasks)
        self.task_dims = _dims(task_dims, num_tasks, "task_dims")
        self.shared_dim = int(shared_dim)
        self.rank = int(rank)
        self.l2 = float(l2)
        self.shared = FeatureEmbedding(features, shared_dim, l2=l2, name="shared_embedding")
        self.num_fields, self.num_numeric = _field_counts(features)

    def build(self, input_shape=None):
        self.shared.build(input_shape)
        self.down = [
            self.add_weight(shape=(self.num_fields, self.shared_dim, self.rank), name=f"task{t}_down",
                            initializer=keras.initializers.RandomNormal(stddev=self.shared_dim**-0.5))
            for t in range(self.num_tasks)
        ]
        self.up = [
            self.add_weight(shape=(self.num_fields, self.rank, d), name=f"task{t}_up",
                            initializer=keras.initializers.RandomNormal(stddev=self.rank**-0.5))
            for t, d in enumerate(self.task_dims)
        ]
        self.built = True

    def call(self, inputs, training=None):
        fields, numeric = self.shared.embed_fields(inputs, training=training)
        outputs = []
        for t, d in enumerate(self.task_dims):
            low = ops.einsum("bfd,fdr->bfr", fields, self.down[t])
            task = ops.reshape(ops.einsum("bfr,frk->bfk", low, self.up[t]), (-1, self.num_fields * d))
            outputs.append(task if numeric is None else ops.concatenate([task, numeric], axis=-1))
        shared = ops.reshape(fields, (-1, self.num_fields * self.shared_dim))
        outputs.append(shared if numeric is None else ops.concatenate([shared, numeric], axis=-1))
        return outputs

    def compute_output_shape(self, input_shape):
        return [(None, self.num_fields * d + self.num_numeric) for d in [*self.task_dims, self.shared_dim]]

    def get_config(self):
        return {**super().get_config(), "features": self.features, "num_tasks": self.num_tasks,
                "task_dims": self.task_dims, "shared_dim": self.shared_dim, "rank": self.rank, "l2": self.l2}


def embedding_params(vocab_rows: dict[str, int], num_fields: int, task_dims: Sequence[int], shared_dim: int,
                     rank: int | None = None) -> int:
    """Parameters of AME (rank None) or low-rank AME, from table sizes.

    `vocab_rows`: rows of each distinct table (vocabulary + the OOV row).
    """
    rows = sum(vocab_rows.values())
    if rank is None:
        return rows * (shared_dim + sum(task_dims))
    return rows * shared_dim + sum(num_fields * rank * (shared_dim + d) for d in task_dims)
