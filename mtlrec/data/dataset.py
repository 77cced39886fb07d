"""The tf.data input pipeline over prepared column blocks.

Files are sharded per input pipeline (worker), interleaved, blocks parsed
with one `decode_raw` per column, shuffled (seeded, block order and rows
within a block), re-batched to the requested batch size and prefetched.
Users see rows: dicts of `[batch]` tensors (`[batch, length]` for sequences).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import tensorflow as tf

from mtlrec import io as mio
from mtlrec.config import Schema, TaskSpec, did_you_mean
from mtlrec.data.manifest import Manifest, load_manifest

AUTOTUNE = tf.data.AUTOTUNE


def _block_spec(schema: Schema) -> dict[str, tf.io.FixedLenFeature | tf.io.RaggedFeature]:
    spec: dict = {}
    for f in schema.features:
        if f.kind == "categorical":
            spec[f.name] = tf.io.RaggedFeature(tf.string)
        else:
            spec[f.name] = tf.io.FixedLenFeature([], tf.string)
    for label in schema.labels:
        spec[label.name] = tf.io.FixedLenFeature([], tf.string)
    return spec


def _fixed_width(schema: Schema) -> dict[str, tf.DType]:
    """Columns stored as one little-endian byte string per block, and their dtype."""
    dtypes = {f.name: tf.float32 if f.kind == "numeric" else tf.int64
              for f in schema.features if f.kind != "categorical"}
    dtypes.update({label.name: tf.float32 for label in schema.labels})
    return dtypes


def decode_blocks(serialized: tf.Tensor, schema: Schema) -> dict[str, tf.Tensor]:
    """Serialized blocks `[k]` -> column name -> `[rows]` / `[rows, length]` tensor.

    The blocks' rows are concatenated in order. Decoding several blocks per
    call (one `parse_example`, one `decode_raw` per column) keeps tf.data's
    per-element cost off the per-block path. Blocks of one size (all but
    the last of a file) decode straight from the parsed strings; otherwise
    each column's bytes are joined first.
    """
    parsed = tf.io.parse_example(serialized, _block_spec(schema))
    dtypes = _fixed_width(schema)

    def direct():
        return {k: tf.reshape(tf.io.decode_raw(parsed[k], t, little_endian=True), [-1]) for k, t in dtypes.items()}

    def joined():
        return {k: tf.io.decode_raw(tf.strings.reduce_join(parsed[k]), t, little_endian=True)
                for k, t in dtypes.items()}

    columns = {}
    if dtypes:
        lengths = tf.strings.length(parsed[next(iter(dtypes))])
        columns = tf.cond(tf.reduce_all(tf.equal(lengths, lengths[0])), direct, joined)
    out: dict[str, tf.Tensor] = {}
    for f in schema.features:
        if f.kind == "categorical":
            out[f.name] = parsed[f.name].flat_values
        elif f.kind == "sequence":
            out[f.name] = tf.reshape(columns[f.name], [-1, len(f.columns)])
        else:
            out[f.name] = columns[f.name]
    for label in schema.labels:
        out[label.name] = columns[label.name]
    return out


def decode_block(serialized: tf.Tensor, schema: Schema) -> dict[str, tf.Tensor]:
    """One serialized block -> column name -> `[rows]` / `[rows, length]` tensor."""
    return decode_blocks(tf.reshape(serialized, [1]), schema)


def _as_manifest(data: str | Manifest) -> Manifest:
    return data if isinstance(data, Manifest) else load_manifest(data)


def read_columns(
    data: str | Manifest,
    split: str,
    batch_size: int,
    *,
    shuffle: bool = False,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    shuffle_blocks: int = 64,
    blocks_per_call: int = 16,
    in_order: bool = False,
) -> tf.data.Dataset:
    """Every column of a split, as dicts of batched tensors.

    Args:
        data: a prepared dataset directory or its `Manifest`.
        split: "train", "valid" or "test".
        batch_size: rows per batch (per input pipeline under tf.distribute).
        shuffle: shuffle files, blocks and rows within blocks (seeded).
        seed: the shuffle seed; the same seed gives the same order.
        repeat: repeat forever (training by steps).
        drop_remainder: drop a last partial batch (static batch shape).
        input_context: from `distribute_datasets_from_function`; files are
            sharded across its input pipelines.
        shuffle_blocks: block-level shuffle buffer (blocks of 1024 rows).
        blocks_per_call: blocks decoded together; rows are shuffled within
            such a group (so across blocks, not only inside one).
        in_order: the rows in their stored order, one file after another
            (for a split made with `--order_by`: time order); no shuffle.
    """
    manifest = _as_manifest(data)
    schema = manifest.schema
    files = manifest.files(split)
    if in_order and shuffle:
        raise ValueError("read_columns: in_order=True reads the stored order; it cannot also shuffle")
    if not files:
        raise ValueError(f"Split {split!r} of {manifest.root} has no rows.")
    ds = tf.data.Dataset.from_tensor_slices(files)
    shards = input_context.num_input_pipelines if input_context else 1
    shard_files = shards > 1 and len(files) >= shards
    if shard_files:
        ds = ds.shard(shards, input_context.input_pipeline_id)
    if shuffle:
        ds = ds.shuffle(len(files), seed=seed)
    # Local files: one reading thread is enough and the parallel
    # interleave's threads cost ~6% more CPU per row on 2 cores. Object
    # stores need parallel reads to hide their latency.
    parallel = {"num_parallel_calls": AUTOTUNE, "deterministic": True} if mio.is_remote(files[0]) else {}
    ds = ds.interleave(tf.data.TFRecordDataset, cycle_length=1 if in_order else min(4, len(files)), **parallel)
    if shards > 1 and not shard_files:
        ds = ds.shard(shards, input_context.input_pipeline_id)
    if repeat:
        ds = ds.repeat()
    if shuffle:
        ds = ds.shuffle(shuffle_blocks, seed=seed)
    ds = ds.batch(blocks_per_call)
    if shuffle:
        ds = ds.enumerate().map(
            lambda i, s: _permute_rows(decode_blocks(s, schema), seed, i),
            num_parallel_calls=AUTOTUNE, deterministic=True,
        )
    else:
        ds = ds.map(lambda s: decode_blocks(s, schema), num_parallel_calls=AUTOTUNE, deterministic=True)
    return ds.rebatch(batch_size, drop_remainder=drop_remainder).prefetch(AUTOTUNE)


def _permute_rows(block: dict[str, tf.Tensor], seed: int, index: tf.Tensor) -> dict[str, tf.Tensor]:
    rows = tf.shape(next(iter(block.values())))[0]
    order = tf.random.experimental.stateless_shuffle(
        tf.range(rows), seed=tf.stack([tf.constant(seed, tf.int64), index])
    )
    return {k: tf.gather(v, order) for k, v in block.items()}


def label_maps(
    columns: dict[str, tf.Tensor], tasks: Sequence[TaskSpec]
) -> tuple[dict[str, tf.Tensor], dict[str, tf.Tensor]]:
    """Per-task targets and sample weights from raw label columns.

    A task `given` a label column is masked (weight 0) on rows where that
    column is 0; a task with a `weight` column multiplies it in.
    """
    labels, weights = {}, {}
    for t in tasks:
        y = columns[t.label]
        w = tf.ones_like(y)
        if t.given is not None:
            w = w * tf.cast(columns[t.given] > 0, w.dtype)
        if t.weight is not None:
            w = w * tf.cast(columns[t.weight], w.dtype)
        labels[t.name], weights[t.name] = y, w
    return labels, weights


def check_tasks(schema: Schema, tasks: Sequence[TaskSpec]) -> None:
    names = [lb.name for lb in schema.labels]
    numeric = {f.name for f in schema.features if f.kind == "numeric"}
    for t in tasks:
        for role, col in (("label", t.label), ("given", t.given), ("weight", t.weight)):
            if col is None:
                continue
            if role == "weight" and col in numeric:
                continue
            if col not in names:
                raise ValueError(
                    f"Task '{t.name}': {role} column {col!r} is not a label of the dataset"
                    f"{did_you_mean(col, names)}. Labels: {', '.join(names)}"
                )


def make_dataset(
    data: str | Manifest,
    split: str,
    batch_size: int,
    tasks: Sequence[TaskSpec],
    *,
    shuffle: bool | None = None,
    seed: int = 0,
    repeat: bool = False,
    drop_remainder: bool = False,
    input_context: tf.distribute.InputContext | None = None,
    in_order: bool = False,
) -> tf.data.Dataset:
    """`(features, labels, sample_weights)` batches for training or evaluation.

    `features` holds the schema's input features only (label columns such as
    `watching_times` are never inputs); `labels` and `sample_weights` are
    keyed by task name. `shuffle` defaults to True for the train split, but
    with `in_order` (the stored order, files one after another).
    """
    manifest = _as_manifest(data)
    check_tasks(manifest.schema, tasks)
    feature_names = [f.name for f in manifest.schema.features]
    ds = read_columns(
        manifest, split, batch_size,
        shuffle=split == "train" and not in_order if shuffle is None else shuffle,
        seed=seed, repeat=repeat, drop_remainder=drop_remainder, input_context=input_context, in_order=in_order,
    )

    def to_example(columns):
        labels, weights = label_maps(columns, tasks)
        return {k: columns[k] for k in feature_names}, labels, weights

    return ds.map(to_example, num_parallel_calls=AUTOTUNE)


def csv_rows(data: str | Manifest, split: str, rows: int) -> dict:
    """The first `rows` rows of a split as numpy arrays keyed by CSV column."""
    manifest = _as_manifest(data)
    batch = next(iter(read_columns(manifest, split, rows)))
    out = {}
    for f in manifest.schema.features:
        value = batch[f.name].numpy()
        if f.kind == "sequence":
            out.update({c: value[:, j] for j, c in enumerate(f.columns)})
        else:
            out[f.name] = value
    return out


# Id features with fewer ids than this (gender, age, category) have no cold start to train for.
OOV_MIN_VOCAB = 100


def oov_features(manifest: Manifest, names: Sequence[str] = ()) -> list[str]:
    """The id features whose ids `drop_to_oov` drops: `names`, or by default
    every `id` feature with an out-of-vocabulary row (not hashed: a hashed
    id always lands in a bucket) and at least `OOV_MIN_VOCAB` ids in its
    vocabulary (users, items: where unseen ids come up)."""
    schema = manifest.schema
    eligible = [f.name for f in schema.features
                if f.kind == "id" and schema.feature(f.vocab_from or f.name).hash_buckets is None]
    if names:
        wrong = [n for n in names if n not in eligible]
        if wrong:
            raise ValueError(f"--oov_features={','.join(names)}: {wrong} are not id features with an "
                             f"out-of-vocabulary row; expected some of {eligible}")
        return list(names)
    return [n for n in eligible if manifest.vocab_size[n] >= OOV_MIN_VOCAB]


def drop_to_oov(ds: tf.data.Dataset, features: Sequence[str], rate: float, seed: int) -> tf.data.Dataset:
    """Id dropout for cold start: in `(features, labels, weights)` batches,
    each id of `features` becomes -1 with probability `rate`, independently
    per row and feature, so the model trains the out-of-vocabulary row that
    unseen ids are scored through. Seeded by `seed` and the batch's
    position: the same dataset and seed drop the same ids."""
    if not rate:
        return ds
    names = list(features)

    def drop(index, batch):
        inputs, labels, weights = batch
        inputs = dict(inputs)
        for k, name in enumerate(names):
            x = inputs[name]
            key = tf.stack([tf.constant(seed, tf.int64), index * len(names) + k])
            hit = tf.random.stateless_uniform(tf.shape(x), seed=key) < rate
            inputs[name] = tf.where(hit, tf.constant(-1, x.dtype), x)
        return inputs, labels, weights

    return ds.enumerate().map(drop, num_parallel_calls=AUTOTUNE)


def split_ids(data: str | Manifest, split: str, names: Sequence[str], merge_at: int = 1 << 22,
              batch_rows: int = 1 << 16) -> dict[str, np.ndarray]:
    """The distinct ids of the id features `names` in a split (sorted).

    Memory follows the distinct ids, not the split's rows: each batch's
    distinct ids are kept and merged into the running set once they add up
    to `merge_at`. (Holding every id first took 4.1 GB for Tenrec's 96M
    training rows, more than the training steps after it: 1.5 GB.)"""
    if not names:
        return {}
    distinct = {name: np.empty(0, np.int64) for name in names}
    pending: dict[str, list] = {name: [] for name in names}
    held = dict.fromkeys(names, 0)

    def merge(name):
        distinct[name] = np.unique(np.concatenate([distinct[name], *pending[name]]))
        pending[name], held[name] = [], 0

    for batch in read_columns(data, split, batch_rows):
        for name in names:
            ids = np.unique(batch[name].numpy())
            pending[name].append(ids)
            held[name] += len(ids)
            if held[name] >= merge_at:
                merge(name)
    for name in names:
        merge(name)
    return distinct
