"""TensorBoard: per epoch, the training loss per task and the learning rate,
validation AUC and logloss per task, and the gates' weights as histograms."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import tensorflow as tf

from mtlrec import diagnostics
from mtlrec import io as mio
from mtlrec.config import TaskSpec


class TensorBoard:
    """The writers of one run under `root/tensorboard/{train,validation,gates}`;
    writes nothing when `enabled` is false (off, or not the chief)."""

    def __init__(self, root: str, enabled: bool, gates: diagnostics.GateProbe):
        self.gates = gates
        self.writers: dict[str, Any] = {}
        if enabled:
            parts = ("train", "validation") + (("gates",) if gates.layers else ())
            self.writers = {p: tf.summary.create_file_writer(mio.join(root, "tensorboard", p)) for p in parts}

    def write(self, epoch: int, train_logs: dict[str, float], learning_rate: float, tasks: Sequence[TaskSpec],
              valid: dict[str, Any], valid_ds: tf.data.Dataset) -> None:
        """Epoch `epoch` (from 1); the gates' histograms over (up to 20k
        rows of) `valid_ds`."""
        if not self.writers:
            return
        with self.writers["train"].as_default():
            for name, value in train_logs.items():
                tf.summary.scalar(f"epoch_{name}", value, step=epoch)
            tf.summary.scalar("epoch_learning_rate", learning_rate, step=epoch)
        with self.writers["validation"].as_default():
            for t in tasks:
                tf.summary.scalar(f"epoch_{t.name}_auc", valid[t.name]["auc"], step=epoch)
                tf.summary.scalar(f"epoch_{t.name}_logloss", valid[t.name]["logloss"], step=epoch)
            tf.summary.scalar("epoch_auc_mean", valid["auc_mean"], step=epoch)
        if "gates" in self.writers:
            with self.writers["gates"].as_default():
                self.gates.write_histograms(valid_ds, step=epoch)
        for writer in self.writers.values():
            writer.flush()
