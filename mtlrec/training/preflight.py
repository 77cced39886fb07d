"""Checks before the first training step: everything knowable up front.

A run that cannot give a right answer stops here, with a message, instead of
after an epoch (an empty test split), in the middle (an out-of-memory table)
or never (a batch larger than the data, which silently repeats rows).
"""

from __future__ import annotations

import dataclasses
import os

from mtlrec.data.dataset import check_tasks, oov_features

SPLITS_NEEDED = ("train", "valid", "test")
MONITOR_METRICS = ("auc", "logloss", "gauc")
# Bytes per embedding value while training: the weight and LazyAdam's two moments.
BYTES_PER_VALUE = 4 * 3
# An id table this much larger than the distinct ids seen is sparse numbering.
SPARSE_FACTOR = 100
SPARSE_MIN_ROWS = 1_000_000


def available_memory() -> int:
    """Bytes of memory available to a new allocation (Linux MemAvailable)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")


def check_run(config, manifest, memory: int | None = None) -> None:
    """Raises ValueError naming the setting or data that makes `config` fail."""
    check_tasks(manifest.schema, config.tasks)
    for split in SPLITS_NEEDED:
        if split not in manifest.splits or manifest.rows(split) == 0:
            raise ValueError(
                f"{manifest.root}: the {split} split has no rows (split fractions "
                f"{manifest.raw.get('split_fractions')}); training needs train, valid and test rows: "
                "re-run mtlrec-prepare with --splits giving each a share"
            )
    train_rows = manifest.rows("train")
    if config.batch_size > train_rows:
        raise ValueError(
            f"--batch_size={config.batch_size} is larger than the train split ({train_rows} rows of "
            f"{manifest.root}): each batch would repeat rows; use --batch_size <= {train_rows}"
        )
    _check_monitor(config)
    check_compute(config)
    manifest.check_files(SPLITS_NEEDED)
    check_tables(config, manifest, available_memory() if memory is None else memory)
    if config.oov_dropout:
        oov_features(manifest, config.oov_features)  # names a wrong --oov_features


def check_compute(config, gpus: int | None = None) -> None:
    """--mixed_precision and --jit_compile settings that cannot run as asked.
    `gpus`: GPUs visible (default: asks TensorFlow)."""
    from mtlrec import cluster
    from mtlrec.training.step import JIT_BALANCING

    if config.jit_compile and config.loss_balancing not in JIT_BALANCING:
        raise ValueError(f"--jit_compile with --loss_balancing={config.loss_balancing}: {config.loss_balancing} takes "
                         f"per-task gradients through the embedding tables, which stay outside XLA; use "
                         f"--nojit_compile, or one of --loss_balancing={', '.join(JIT_BALANCING)}")
    if config.mixed_precision == "mixed_float16":
        if config.loss_balancing not in JIT_BALANCING:
            raise ValueError(f"--mixed_precision=mixed_float16 with --loss_balancing={config.loss_balancing}: its "
                             "per-task gradients are not loss-scaled; use mixed_bfloat16, or another --loss_balancing")
        if gpus is None:
            import tensorflow as tf
            gpus = len(tf.config.list_logical_devices("GPU"))
        several = len(config.devices) > 1 or cluster.current().multi or (not config.devices and gpus > 1)
        if several:
            raise ValueError("--mixed_precision=mixed_float16 trains on one device (its loss scaling skips a step "
                             "whose gradients overflow, which mtlrec does not yet agree on across replicas); "
                             "use --mixed_precision=mixed_bfloat16 on several devices, or one --devices entry")


def _check_monitor(config) -> None:
    if config.monitor == "auc_mean":
        return
    task, _, metric = config.monitor.partition("/")
    tasks = [t.name for t in config.tasks]
    if task not in tasks or metric not in MONITOR_METRICS:
        raise ValueError(f"--monitor={config.monitor}: expected auc_mean or <task>/<metric> with a task of "
                         f"{tasks} and a metric of {list(MONITOR_METRICS)}")


def _id_tables(manifest) -> dict[str, int]:
    """Rows of each id table (vocabulary owner -> vocab_size + the OOV row)."""
    schema = manifest.schema
    return {f.name: int(manifest.vocab_size[f.name]) + 1 for f in schema.features if f.kind == "id"}


def check_tables(config, manifest, memory: int) -> None:
    """Sparse id numbering and embedding tables that cannot fit in memory."""
    distinct = manifest.raw.get("id_distinct_at_most", {})
    for name, rows in _id_tables(manifest).items():
        if manifest.schema.feature(name).hash_buckets:
            continue
        seen = distinct.get(name)
        if seen and rows > SPARSE_MIN_ROWS and rows > SPARSE_FACTOR * seen:
            raise ValueError(
                f"feature '{name}': ids go up to {rows - 2} but the train split holds at most {seen} distinct "
                f"ones, so its embedding table would have {rows:,} rows. Number the ids densely, or give "
                f"'{name}' \"hash_buckets\": {_suggest(seen)} in a schema JSON (--schema) and re-run mtlrec-prepare"
            )
    tables = _id_tables(manifest)
    if sum(tables.values()) * _width_bound(config) * BYTES_PER_VALUE < 0.2 * memory:
        return  # fits whatever the model: skip building the probe
    widths = table_widths(config, manifest)
    need = sum(tables.get(name, 0) * width for name, width in widths.items()) * BYTES_PER_VALUE
    if need > 0.8 * memory:
        biggest = max(tables, key=lambda n: tables[n] * widths.get(n, 0))
        raise ValueError(
            f"the embedding tables need {need / 2**30:.1f} GiB to train (weights and optimizer moments) but "
            f"{memory / 2**30:.1f} GiB of memory is available; the largest is '{biggest}' with "
            f"{tables[biggest]:,} rows x {widths[biggest]}. Give it \"hash_buckets\" in a schema JSON and re-run "
            "mtlrec-prepare, or lower --embedding_dim"
        )


def _width_bound(config) -> int:
    """An upper bound of any model's total width per id table (sets x widths)."""
    mc, tasks = config.model_config, len(config.tasks)
    return (mc.embedding_dim + mc.ame_shared_dim + max(mc.ame_task_dims or (0,)) * tasks) * (tasks + 1)


def _suggest(distinct: int) -> int:
    return 1 << max(10, (4 * distinct - 1).bit_length())


def table_widths(config, manifest) -> dict[str, int]:
    """Total embedding width per id table, summed over the model's embedding
    sets (one for most models; a set per task and a shared one for APLE,
    STEM). Read off a probe of the model built with one-row vocabularies."""
    from mtlrec.layers.embedding import EmbeddingTable
    from mtlrec.models import build_model

    probe = dataclasses.replace(manifest, vocab_size={k: 1 for k in manifest.vocab_size})

    def widths_at(dim: int) -> dict[str, int]:
        model_config = dataclasses.replace(config.model_config, embedding_dim=dim)
        network = build_model(config.model, probe, model_config, task_labels={t.name: t.label for t in config.tasks})
        widths: dict[str, int] = {}
        for layer in network._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, EmbeddingTable):
                name = layer.name.removesuffix("_embedding")
                widths[name] = widths.get(name, 0) + layer.dim
        return widths

    # Probes at two small widths, extrapolated: each table's width is a
    # constant (APLE's dims) plus a multiple of --embedding_dim, and a probe
    # at --embedding_dim itself could not be built when that is what is too
    # large (its first dense layer alone).
    dim = config.model_config.embedding_dim
    low, high = widths_at(8), widths_at(16)
    return {name: low[name] + (high[name] - low[name]) * (dim - 8) // 8 for name in low}
