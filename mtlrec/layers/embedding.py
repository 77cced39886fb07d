"""Embeds a schema's raw features, with the preprocessing inside the graph."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from keras import ops

from mtlrec.optimizers import mark_row_sparse

# Embedding tables, their lookups and the layers holding them compute in float32 whatever the global dtype
# policy (--mixed_precision): under a mixed policy Keras casts a variable to the compute dtype when it is
# read, which for a table is the whole table every step, and its gradient would no longer be row-sparse.
FLOAT32 = "float32"


def float32_layer() -> str | None:
    """The `dtype` of a layer that must compute in float32 (tables, logits,
    probabilities): "float32" under a mixed global policy, None (the global
    float32 policy itself) otherwise. An explicit "float32" where the global
    policy is float32 anyway made ESMM's step 6% slower (27.9 against 26.2
    ms, DeepCTR's sizes, in-process alternation)."""
    return None if keras.config.dtype_policy().name == FLOAT32 else FLOAT32


@keras.saving.register_keras_serializable(package="mtlrec")
class EmbeddingTable(keras.layers.Layer):
    """An embedding table whose lookups read only the rows they need.

    `keras.layers.Embedding` reads the whole table (`ops.take` converts the
    variable to a tensor); a later in-place row update of a table whose
    buffer is still referenced then copies all of it, every step. Gathering
    from the resource variable (`ResourceGather`) reads just the rows, and
    its gradient is a row-sparse `tf.IndexedSlices` for `LazyAdam`.

    Args:
        rows: number of rows.
        dim: width of each row.

    Input shape: any integer shape `s`. Output shape: `s + (dim,)`.
    """

    def __init__(self, rows: int, dim: int, **kwargs):
        super().__init__(**{**kwargs, "dtype": float32_layer()})
        if rows < 1 or dim < 1:
            raise ValueError(f"rows and dim must be >= 1. Received: rows={rows}, dim={dim}")
        self.rows = int(rows)
        self.dim = int(dim)

    STDDEV = 0.05

    def build(self, input_shape=None):
        self.embeddings = self.add_weight(
            shape=(self.rows, self.dim),
            initializer=keras.initializers.RandomNormal(stddev=self.STDDEV),
            name="embeddings",
        )
        mark_row_sparse(self.embeddings)
        self.built = True

    def reinitialize(self, seed: int) -> None:
        """Draws the table afresh from its initializer (seeded): MEDA's reset."""
        self.embeddings.assign(keras.initializers.RandomNormal(stddev=self.STDDEV, seed=seed)((self.rows, self.dim)))

    def call(self, ids):
        return tf.gather(self.embeddings.value, ids)

    def mean_of(self, ids, valid):
        """Mean of the rows `ids` `(batch, length)` over the positions where
        `valid` is true, `(batch, dim)`; zeros for a row with none.

        Each distinct id is gathered once and the positions are averaged by
        `sparse_segment_mean`, so the gradient holds one row per distinct id
        instead of one per position: fewer rows to look up, to sum again and
        to update. The distinct ids include those of invalid positions, so
        the optimizer touches the same rows as a per-position lookup would.

        Under more than one replica the lookup stays one row per position:
        the count of distinct ids differs between replicas, and TensorFlow's
        all-gather of such row-sparse gradients inside the train loop failed
        with a shape mismatch (2 mirrored CPUs, TF 2.17). The values are the
        same either way.
        """
        context = tf.distribute.get_replica_context()
        if context is not None and context.num_replicas_in_sync > 1:
            mask = tf.cast(valid, self.embeddings.dtype)[..., None]
            count = tf.reduce_sum(mask, axis=1)
            return tf.reduce_sum(self(ids) * mask, axis=1) / tf.maximum(count, 1.0)
        batch, length = tf.shape(ids)[0], tf.shape(ids)[1]
        rows, position = tf.unique(tf.reshape(ids, [-1]))
        valid = tf.reshape(valid, [-1])
        segment = tf.repeat(tf.range(batch), length)
        return tf.sparse.segment_mean(
            tf.gather(self.embeddings.value, rows), tf.boolean_mask(position, valid),
            tf.boolean_mask(segment, valid), num_segments=batch,
        )

    def compute_output_shape(self, input_shape):
        return tuple(input_shape) + (self.dim,)

    def get_config(self):
        return {**super().get_config(), "rows": self.rows, "dim": self.dim}


def feature_specs(manifest, unseen_to_oov: Sequence[str] = ()) -> list[dict[str, Any]]:
    """The per-feature settings `FeatureEmbedding` needs, from a `Manifest`.
    `unseen_to_oov`: id features whose ids unseen in training are scored
    through the out-of-vocabulary row (`FeatureEmbedding`, `set_seen_ids`)."""
    schema = manifest.schema
    specs = []
    for f in schema.features:
        spec: dict[str, Any] = {"name": f.name, "kind": f.kind}
        if f.kind in ("id", "sequence"):
            owner = schema.feature(f.vocab_from or f.name)
            spec["table"] = owner.name
            spec["vocab_size"] = int(manifest.vocab_size[f.name])
            spec["hashed"] = owner.hash_buckets is not None
            if f.name in unseen_to_oov:
                spec["unseen_to_oov"] = True
            if f.kind == "sequence":
                spec["length"] = len(f.columns)
        elif f.kind == "categorical":
            spec["table"] = f.name
            spec["vocabulary"] = manifest.vocabulary(f.name)
        else:
            stats = manifest.numeric_stats[f.name]
            spec["mean"], spec["std"] = float(stats["mean"]), float(stats["std"]) or 1.0
        specs.append(spec)
    return specs


@keras.saving.register_keras_serializable(package="mtlrec")
class FeatureEmbedding(keras.layers.Layer):
    """Raw feature dict -> one concatenated vector per row.

    - id: `idx = id + 1` for `0 <= id < vocab_size`, else row 0 (out of
      vocabulary: unseen, negative and huge ids); hashed ids take
      `id mod buckets + 1`. With `"unseen_to_oov"` in its spec, a feature
      keeps a non-trainable mask of the ids seen in training
      (`<name>_seen`, set by `set_seen_ids`), and an id inside the range
      that training never saw reads row 0 too, instead of a row that was
      never trained.
    - categorical: string lookup in the training vocabulary; unseen -> row 0.
    - sequence: looked up in the table it shares (e.g. `hist` in
      `item_id`'s) and mean-pooled over non-padding items (raw id 0 is
      padding; an empty history gives zeros).
    - numeric: `(x - mean) / std` with training-split statistics.

    Embedding L2 is applied to the rows looked up in the batch (never the
    whole table), which keeps the gradient row-sparse for `LazyAdam`.

    Args:
        features: per-feature settings, see `feature_specs(manifest)`.
        dim: embedding width of every table.
        l2: L2 weight on looked-up embedding rows (mean over the batch).

    Input: dict feature name -> `(batch,)` ids / strings / floats, or
    `(batch, length)` ids for sequences.
    Output shape: `(batch, dim * (#id + #categorical + #sequence) + #numeric)`.
    """

    def __init__(self, features: list[dict[str, Any]], dim: int, l2: float = 0.0, **kwargs):
        super().__init__(**{**kwargs, "dtype": float32_layer()})
        if dim < 1:
            raise ValueError(f"Embedding dim must be >= 1. Received: dim={dim}")
        if l2 < 0:
            raise ValueError(f"l2 must be >= 0. Received: l2={l2}")
        self.features = [dict(f) for f in features]
        self.dim = int(dim)
        self.l2 = float(l2)
        self.lookups: dict[str, keras.layers.StringLookup] = {}
        self.tables: dict[str, keras.layers.Embedding] = {}
        for f in self.features:
            if f["kind"] == "numeric" or f["table"] in self.tables:
                continue
            if f["kind"] == "categorical":
                self.lookups[f["name"]] = keras.layers.StringLookup(
                    vocabulary=f["vocabulary"] or [""], num_oov_indices=1, name=f"{f['name']}_lookup"
                )
                rows = len(f["vocabulary"] or [""]) + 1
            else:
                rows = f["vocab_size"] + 1
            self.tables[f["table"]] = EmbeddingTable(rows, self.dim, name=f"{f['table']}_embedding")

    @property
    def output_dim(self) -> int:
        return sum(1 if f["kind"] == "numeric" else self.dim for f in self.features)

    def build(self, input_shape=None):
        for table in self.tables.values():
            table.build((None,))
        for lookup in self.lookups.values():
            lookup.build()
        # 1 where the row's id occurs in the training split (all 1 until set_seen_ids).
        self.seen = {f["name"]: self.add_weight(shape=(f["vocab_size"] + 1,), initializer="ones", dtype="int32",
                                                trainable=False, name=f"{f['name']}_seen")
                     for f in self.features if f.get("unseen_to_oov")}
        self.built = True

    def _index(self, f: dict[str, Any], ids):
        ids = ops.cast(ids, "int64")
        if f.get("hashed"):
            return ops.mod(ids, f["vocab_size"]) + 1
        in_range = ops.logical_and(ids >= 0, ids < f["vocab_size"])
        index = ops.where(in_range, ids + 1, ops.zeros_like(ids))
        if f["name"] in getattr(self, "seen", {}):
            seen = tf.gather(self.seen[f["name"]].value, index) > 0
            index = ops.where(seen, index, ops.zeros_like(index))
        return index

    def embed_fields(self, inputs, training=None):
        """`(fields, numeric)`: `(batch, #fields, dim)` embeddings of the id,
        categorical and sequence features, `(batch, #numeric)` normalised
        numbers (`None` without numeric features)."""
        fields, numeric = self.embed_field_list(inputs, training=training)
        return ops.stack(fields, axis=1), numeric

    def embed_field_list(self, inputs, training=None):
        """As `embed_fields`, with the fields as a list of `(batch, dim)`."""
        fields, numeric, penalty = [], [], 0.0
        for f in self.features:
            name, kind = f["name"], f["kind"]
            if name not in inputs:
                raise KeyError(f"Feature '{name}' is missing from the model inputs: {sorted(inputs)}")
            x = inputs[name]
            if kind == "numeric":
                numeric.append((ops.cast(x, "float32") - f["mean"]) / f["std"])
                continue
            table = self.tables[f["table"]]
            if kind == "categorical":
                emb = table(self.lookups[name](x))
            elif kind == "id":
                emb = table(self._index(f, x))
            else:
                emb = table.mean_of(self._index(f, x), ops.not_equal(ops.cast(x, "int64"), 0))
            fields.append(emb)
            if self.l2 and training:
                penalty = penalty + ops.mean(ops.sum(ops.square(emb), axis=-1))
        if self.l2 and training:
            self.add_loss(self.l2 * penalty)
        return fields, (ops.stack(numeric, axis=1) if numeric else None)

    def call(self, inputs, training=None):
        fields, numeric = self.embed_fields(inputs, training=training)
        flat = ops.reshape(fields, (-1, fields.shape[1] * self.dim))
        return flat if numeric is None else ops.concatenate([flat, numeric], axis=-1)

    def compute_output_shape(self, input_shape):
        return (None, self.output_dim)

    def get_config(self):
        return {**super().get_config(), "features": self.features, "dim": self.dim, "l2": self.l2}


def set_seen_ids(network: keras.Model, seen: dict[str, Any]) -> int:
    """Writes the ids seen in training (`seen`: feature -> array of ids)
    into every `FeatureEmbedding` mask of `network`; returns the masks set."""
    count = 0
    for layer in network._flatten_layers(include_self=False, recursive=True):
        if not isinstance(layer, FeatureEmbedding):
            continue
        for name, mask in layer.seen.items():
            values = np.zeros(mask.shape, np.int32)
            values[0] = 1
            ids = np.asarray(seen[name], np.int64)
            values[ids[(ids >= 0) & (ids < mask.shape[0] - 1)] + 1] = 1
            mask.assign(values)
            count += 1
    return count
