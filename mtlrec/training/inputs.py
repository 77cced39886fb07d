"""The training input: shuffled batches split over the replicas (each
worker reads its own files), the id features `--oov_dropout` sends to the
out-of-vocabulary row, and the steps per epoch."""

from __future__ import annotations

import math
import os
from collections.abc import Sequence

import tensorflow as tf
from absl import logging

from mtlrec import cluster
from mtlrec.data.dataset import drop_to_oov, make_dataset, oov_features
from mtlrec.data.manifest import Manifest
from mtlrec.training.config import TrainConfig


def dropped_features(config: TrainConfig, manifest: Manifest) -> list[str]:
    """The id features `--oov_dropout` acts on (none when it is off)."""
    return oov_features(manifest, config.oov_features) if config.oov_dropout else []


def masked_features(config: TrainConfig, manifest: Manifest) -> list[str]:
    """The id features whose ids unseen in training read the
    out-of-vocabulary row: those of `--oov_dropout`, or with
    `--unseen_ids=oov` the users and items (`oov_features`)."""
    if config.oov_dropout or config.unseen_ids == "oov":
        return oov_features(manifest, config.oov_features)
    return []


def distributed_train_data(strategy: tf.distribute.Strategy, manifest: Manifest, config: TrainConfig,
                           seed: int, dropped: Sequence[str] | None = None) -> tf.distribute.DistributedDataset:
    """The repeated training batches (shuffled, or in the stored order with
    `--train_order=stored`), split over the replicas: each
    input pipeline (one per worker) reads its own files and makes batches of
    `batch_size / replicas` rows, one per local replica and step. `dropped`:
    the features of `--oov_dropout` (`dropped_features`, when not given)."""
    replicas = strategy.num_replicas_in_sync
    if config.batch_size % replicas:
        raise ValueError(f"--batch_size={config.batch_size} is not divisible by the {replicas} replicas "
                         f"training in sync: use a multiple of {replicas}")

    worker, files = cluster.current(), manifest.files("train")
    if worker.multi:
        if len(files) < worker.count:
            raise ValueError(f"{manifest.root}: the train split has {len(files)} file(s), fewer than the "
                             f"{worker.count} workers, so they cannot read disjoint files: prepare it again with a "
                             "smaller --chunk_bytes (one file per chunk)")
        mine = files[worker.index :: worker.count]  # as read_columns shards them
        logging.info("%s reads %d of %d train files: %s", worker, len(mine), len(files),
                     ", ".join(os.path.basename(f) for f in mine))

    if dropped is None:
        dropped = dropped_features(config, manifest)

    def dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = make_dataset(manifest, "train", context.get_per_replica_batch_size(config.batch_size), config.tasks,
                          seed=seed, repeat=True, drop_remainder=True, input_context=context,
                          in_order=config.train_order == "stored")  # shuffled unless in order
        return drop_to_oov(ds, dropped, config.oov_dropout, seed * 1000 + context.input_pipeline_id)

    return strategy.distribute_datasets_from_function(dataset)


def schedule(config: TrainConfig, manifest: Manifest) -> tuple[int, int]:
    """(epochs, steps per epoch); `train_steps` caps the total."""
    per_epoch = max(1, manifest.rows("train") // config.batch_size)
    if config.train_steps is None:
        return config.epochs, per_epoch
    per_epoch = max(1, math.ceil(config.train_steps / config.epochs))
    return config.epochs, per_epoch
