"""One training run, built once from its config and dataset: the network
and its loss model, the optimizer, the checkpoints (and where they go),
the run state, the validation data, the gate probe and TensorBoard, and the
values derived from the config (steps per epoch, the id features of
`--oov_dropout`, the user feature of GAUC)."""

from __future__ import annotations

import os
import shutil
import tempfile
import time
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mtlrec import cluster, diagnostics
from mtlrec import io as mio
from mtlrec.data.dataset import make_dataset, split_ids
from mtlrec.data.manifest import Manifest
from mtlrec.layers.dropout import seed_states
from mtlrec.layers.embedding import set_seen_ids
from mtlrec.models import build_model
from mtlrec.optimizers import LazyAdam
from mtlrec.training import inputs, precision
from mtlrec.training.config import EMBEDDING_OPTIMIZERS, TrainConfig
from mtlrec.training.evaluation import Predictor
from mtlrec.training.losses import loss_spec
from mtlrec.training.state import RunState
from mtlrec.training.task_stopping import TaskStopping
from mtlrec.training.tensorboard import TensorBoard
from mtlrec.training.trainer import MultiTaskTrainer


class Run:
    """State of one training run, in memory and on disk: checkpoint, best
    weights, state.json. Only the chief writes MODEL_DIR; other workers save
    their (equal) checkpoints to a temporary folder, removed by `close`."""

    def __init__(self, config: TrainConfig, manifest: Manifest, strategy: tf.distribute.Strategy):
        self.config = config
        self.manifest = manifest
        self.strategy = strategy
        self.started = time.time()  # of this process's part of the run
        self.worker = cluster.current()
        self.scratch = None if self.worker.is_chief else tempfile.mkdtemp(prefix=f"mtlrec-worker{self.worker.index}-")
        d = self.scratch or config.model_dir
        self.read_ckpt_dir = mio.join(config.model_dir, "checkpoints")
        self.ckpt_dir = mio.join(d, "checkpoints")
        self.best_path = mio.join(d, "best.weights.h5")
        self.state_path = mio.join(config.model_dir, "state.json")
        self.user_feature = "user_id" if "user_id" in {f.name for f in manifest.schema.features} else None
        self.dropped = inputs.dropped_features(config, manifest)
        self.masked = inputs.masked_features(config, manifest)
        self.epochs, self.steps_per_epoch = inputs.schedule(config, manifest)
        with strategy.scope():
            keras.utils.set_random_seed(config.seed)
            # Ids unseen in training read the out-of-vocabulary row (set_seen_ids), which id dropout trains.
            with precision.building(config.mixed_precision):
                self.network = build_model(config.model, manifest, config.model_config,
                                           task_labels={t.name: t.label for t in config.tasks},
                                           unseen_to_oov=self.masked,
                                           fused_embedding_sets=config.fused_embedding_sets)
            self.loss_scale = precision.LossScale() if config.mixed_precision == "mixed_float16" else None
            self._seen: dict[str, np.ndarray] = {}
            if self.masked:
                seen = self.seen_ids(self.masked)
                set_seen_ids(self.network, seen)
                logging.info("ids unseen in training read the out-of-vocabulary row: %s",
                             ", ".join(f"{n} ({len(v)} seen of {manifest.vocab_size[n]})" for n, v in seen.items()))
            self.trainer = MultiTaskTrainer(self.network, [t.name for t in config.tasks], config.loss_weights,
                                            extra_loss=loss_spec(config.model, config.model_config),
                                            balancing=config.balancing)
            self.trainer.compile(optimizer=LazyAdam(config.learning_rate,
                                                    sparse_rule=EMBEDDING_OPTIMIZERS[config.embedding_optimizer],
                                                    sparse_learning_rate=config.sparse_learning_rate(),
                                                    sparse_decay=config.embedding_decay))
            self._build()
            self.stopping = (TaskStopping(self.network, [t.name for t in config.tasks], config.task_patience)
                             if config.task_patience else None)
            extra = {"task_best": self.stopping.checkpoint()} if self.stopping else {}
            if self.loss_scale is not None:
                extra["loss_scale"] = tf.train.Checkpoint(scale=self.loss_scale.scale,
                                                          good_steps=self.loss_scale.good_steps)
            self._parts = {"model": self.trainer, "optimizer": self.trainer.optimizer, **extra}
            # The dropout masks' generators: without them a resumed run draws other masks than an uninterrupted one.
            self._seeds = {f"seed_{i}": v for i, v in enumerate(seed_states(self.network))}
            if self._seeds:
                self._parts["dropout_seeds"] = tf.train.Checkpoint(**self._seeds)
            self.checkpoint = tf.train.Checkpoint(**self._parts)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.ckpt_dir, max_to_keep=2)
        self.state = RunState()
        self.valid_ds = make_dataset(manifest, "valid", config.eval_batch_size, config.tasks, shuffle=False)
        self.test_ds: tf.data.Dataset | None = None  # built on first use
        self.predictor = Predictor(self.network)
        self.gates = diagnostics.GateProbe(self.network, [t.name for t in config.tasks])
        self.tensorboard = TensorBoard(d, config.tensorboard and self.worker.is_chief, self.gates)

    def _build(self):
        # Create the variables (model and optimizer) before a restore.
        features, _, _ = next(iter(make_dataset(self.manifest, "valid", 2, self.config.tasks, shuffle=False)))
        self.trainer(features)
        self.trainer.optimizer.build(self.trainer.trainable_variables)

    def train_data(self, epoch: int) -> tf.distribute.DistributedDataset:
        """Epoch `epoch`'s batches (its own shuffle seed, so a resumed run
        reads what an uninterrupted one would)."""
        return inputs.distributed_train_data(self.strategy, self.manifest, self.config,
                                             seed=self.config.seed + epoch - 1, dropped=self.dropped)

    def validate(self) -> dict[str, Any]:
        """The metrics of the weights as they are on the validation split."""
        return self.predictor.evaluate(self.valid_ds, self.config.tasks, self.user_feature)

    def seen_ids(self, names) -> dict[str, np.ndarray]:
        """The distinct ids of the train split of the id features `names` (read once)."""
        missing = [n for n in names if n not in self._seen]
        if missing:
            self._seen.update(split_ids(self.manifest, "train", missing))
        return {n: self._seen[n] for n in names}

    def test_split(self) -> tf.data.Dataset:
        if self.test_ds is None:
            self.test_ds = make_dataset(self.manifest, "test", self.config.eval_batch_size, self.config.tasks,
                                        shuffle=False)
        return self.test_ds

    def restore(self) -> int:
        """Resume from the last checkpoint; returns the epochs already done."""
        latest = tf.train.latest_checkpoint(self.read_ckpt_dir) if mio.exists(self.read_ckpt_dir) else None
        if latest and mio.exists(self.state_path):  # every worker resumes from the chief's checkpoint
            checkpoint = self.checkpoint
            if self._seeds and not any(name.startswith("dropout_seeds/") for name, _ in tf.train.list_variables(latest)):
                # Written before the seeds were checkpointed: the weights resume, the dropout masks start afresh.
                logging.warning("%s holds no dropout seeds (an older mtlrec wrote it): the resumed run draws other "
                                "dropout masks than an uninterrupted one would", latest)
                checkpoint = tf.train.Checkpoint(**{k: v for k, v in self._parts.items() if k != "dropout_seeds"})
            try:
                checkpoint.restore(latest).assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise ValueError(
                    f"{latest}: does not match this model ({str(e).splitlines()[0][:200]}); "
                    "pass --overwrite to start over, or choose another --model_dir"
                ) from None
            self.state = RunState.read(self.state_path)
            logging.info("resumed from %s after epoch %d", latest, self.state.epoch)
            return self.state.epoch
        return 0

    def save_checkpoint(self):
        self.manager.save(checkpoint_number=self.state.epoch)  # every worker: saving may be collective
        if self.worker.is_chief:
            mio.write_atomic(self.state_path, self.state.to_json())

    def save_best(self):
        tmp = f"{self.best_path}.tmp-{os.getpid()}.weights.h5"
        self.network.save_weights(tmp)
        os.replace(tmp, self.best_path)

    def load_best(self):
        """The selected weights (the last ones when no epoch was validated)."""
        if mio.exists(self.best_path):
            self.network.load_weights(self.best_path)

    def save_model(self):
        """`model.keras`, written whole or not at all."""
        final = mio.join(self.config.model_dir, "model.keras")
        tmp = f"{final}.tmp-{os.getpid()}.keras"
        self.network.save(tmp)
        os.replace(tmp, final)

    def close(self):
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)
