"""Training: strategy, per-task losses, checkpoints that resume, best-epoch
selection, early stopping, TensorBoard, and `MODEL_DIR/metrics.json`."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import resource
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mtlrec import balancing, cluster, diagnostics, multi_epoch, preflight, provenance
from mtlrec import io as mio
from mtlrec.balancing import Balancing
from mtlrec.config import ModelConfig, TaskSpec
from mtlrec.data.dataset import drop_to_oov, make_dataset, oov_features, split_ids
from mtlrec.data.manifest import Manifest, load_manifest
from mtlrec.export import save_export_info
from mtlrec.layers.embedding import set_seen_ids
from mtlrec.losses import loss_spec, model_loss
from mtlrec.metrics import auc, task_metrics
from mtlrec.models import build_model
from mtlrec.multi_epoch import RESETS
from mtlrec.optimizers import LazyAdam
from mtlrec.rundir import RunDir
from mtlrec.task_stopping import TaskStopping

# --embedding_optimizer -> LazyAdam's rule for the row-sparse (embedding) gradients.
EMBEDDING_OPTIMIZERS = {"lazy_adam": "adam", "adagrad": "adagrad", "sgd": "sgd"}

EPS = 1e-7


@dataclasses.dataclass(frozen=True)
class TrainConfig:
    """One training run (see `mtlrec-train --help` for each field)."""

    model: str
    model_dir: str
    data: str
    tasks: tuple[TaskSpec, ...]
    model_config: ModelConfig
    loss_weights: dict[str, float] = dataclasses.field(default_factory=dict)
    loss_balancing: str = "fixed"  # mtlrec.balancing.METHODS
    loss_weight_decay: dict[str, float] = dataclasses.field(default_factory=dict)  # ple_schedule, per step
    dwa_temperature: float = 2.0
    gradnorm_alpha: float = 1.5
    gradnorm_learning_rate: float = 0.025
    embedding_reset: str = "none"  # mtlrec.multi_epoch.RESETS: MEDA's reset before every epoch after the first
    embedding_optimizer: str = "lazy_adam"  # lazy_adam | adagrad | sgd, for the row-sparse embedding updates
    embedding_learning_rate: float | None = None  # None: learning_rate
    task_patience: int = 0  # > 0: per-task early stopping (mtlrec.task_stopping); 0: off
    oov_dropout: float = 0.0  # fraction of training ids sent to the out-of-vocabulary row (cold start)
    oov_features: tuple[str, ...] = ()  # the id features oov_dropout acts on; () = users and items (oov_features)
    epochs: int = 1
    train_steps: int | None = None
    batch_size: int = 2048
    steps_per_execution: int = 8  # training steps per tf.function call (speed only; the same steps)
    eval_batch_size: int = 16384
    learning_rate: float = 5e-3
    seed: int = 0
    monitor: str = "auc_mean"
    patience: int = 1
    devices: tuple[str, ...] = ()
    tensorboard: bool = True
    test_each_epoch: bool = False  # also score the test split after every epoch (history[i]["test"])
    verbose: int = 1
    overwrite: bool = False  # start over in a model_dir that holds a run

    def __post_init__(self) -> None:
        names = [t.name for t in self.tasks]
        for name, value in [("learning_rate", self.learning_rate),
                            *((f"loss_weights[{t}]", w) for t, w in self.loss_weights.items())]:
            if not math.isfinite(value) or value < 0:
                raise ValueError(f"{name} must be a finite number >= 0. Received: {value}")
        if tuple(names) != tuple(self.model_config.tasks):
            raise ValueError(f"model_config.tasks {self.model_config.tasks} != tasks {names}")
        for name, given in (("loss_weights", self.loss_weights), ("loss_weight_decay", self.loss_weight_decay)):
            unknown = set(given) - set(names)
            if unknown:
                raise ValueError(f"{name} names unknown task(s) {sorted(unknown)}; tasks are {names}")
        _ = self.balancing  # validates the balancing settings
        if self.embedding_reset not in RESETS:
            raise ValueError(f"embedding_reset must be one of {RESETS}. Received: {self.embedding_reset!r}")
        if self.embedding_optimizer not in EMBEDDING_OPTIMIZERS:
            raise ValueError(f"embedding_optimizer must be one of {tuple(EMBEDDING_OPTIMIZERS)}. "
                             f"Received: {self.embedding_optimizer!r}")
        if self.embedding_learning_rate is not None and not (math.isfinite(self.embedding_learning_rate)
                                                             and self.embedding_learning_rate > 0):
            raise ValueError(f"embedding_learning_rate must be a finite number > 0. "
                             f"Received: {self.embedding_learning_rate}")
        if self.task_patience < 0:
            raise ValueError(f"task_patience must be >= 0 (0: off). Received: {self.task_patience}")
        if not (math.isfinite(self.oov_dropout) and 0 <= self.oov_dropout < 1):
            raise ValueError(f"oov_dropout must be in [0, 1). Received: {self.oov_dropout}")
        if self.epochs < 1 or self.batch_size < 1:
            raise ValueError(f"epochs and batch_size must be >= 1. Received: {self.epochs}, {self.batch_size}")
        if self.steps_per_execution < 1:
            raise ValueError(f"steps_per_execution must be >= 1. Received: {self.steps_per_execution}")


    @property
    def fused_embedding_sets(self) -> bool:
        """APLE's and STEM's embedding sets in one table per feature, unless
        per-task stopping must freeze each task's set as a variable apart."""
        return not self.task_patience

    @property
    def balancing(self) -> Balancing:
        return Balancing(self.loss_balancing, dict(self.loss_weight_decay), self.dwa_temperature,
                         self.gradnorm_alpha, self.gradnorm_learning_rate)


# Keyed by (device type, index): "/cpu:0" and ".../device:CPU:0" are one device.
_STRATEGIES: dict[Any, tf.distribute.Strategy] = {}


def split_cpu(devices: Sequence[str]) -> None:
    """Makes `/cpu:0 .. /cpu:N-1` exist when `devices` names CPUs beyond the
    first (MirroredStrategy over logical CPUs, to try multi-device training
    on a machine without GPUs). Must run before TensorFlow starts its
    runtime; later it changes nothing and `make_strategy` names what exists."""
    specs = [tf.DeviceSpec.from_string(d) for d in devices]
    wanted = 1 + max([s.device_index or 0 for s in specs if (s.device_type or "CPU").upper() == "CPU"], default=0)
    cpu = tf.config.list_physical_devices("CPU")[0]
    if wanted > 1 and len(tf.config.get_logical_device_configuration(cpu) or [None]) < wanted:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * wanted)
        except RuntimeError:
            pass  # the runtime has started: make_strategy reports the missing devices


AUTO_SINGLE_THREAD_CORES = 8  # hosts up to this many cores run each op on one thread by default


def host_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_op_threads(intra: int = -1, inter: int = 0) -> dict[str, int]:
    """TensorFlow's thread pools, set before its runtime starts.

    `intra`: threads one op may split its work over; -1 (auto) is 1 on a host
    of at most `AUTO_SINGLE_THREAD_CORES` cores and TensorFlow's own choice
    above; 0 is TensorFlow's choice (all cores). `inter`: ops run at once; 0
    is TensorFlow's choice (the cores). The models' ops are small (batch
    2048-4096, widths 16-256): on 2 cores, one thread per op and two ops at
    once trained APLE 1.45x, STEM 1.32x and MMoE 1.15-1.38x faster than
    TensorFlow's default, which splits every op over both cores (docs/BENCHMARKS.md, issue 12).

    Once the runtime has started (any TensorFlow op ran), the pools stay as
    they are and this only reports them. Returns `{"intra": .., "inter": ..}`
    as they are now (0: TensorFlow's choice)."""
    if intra < -1 or inter < 0:
        raise ValueError(f"--intra_op_threads must be >= -1 and --inter_op_threads >= 0. "
                         f"Received: {intra}, {inter}")
    if intra == -1:
        intra = 1 if host_cores() <= AUTO_SINGLE_THREAD_CORES else 0
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        logging.info("TensorFlow has started: its op threads stay at %s", op_threads())
    return op_threads()


def op_threads() -> dict[str, int]:
    """TensorFlow's op thread settings (0: its own choice)."""
    return {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter": tf.config.threading.get_inter_op_parallelism_threads()}


def make_strategy(devices: Sequence[str] = ()) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers
    (create it before TensorFlow runs anything: mtlrec-train does so first);
    else MirroredStrategy over the given devices, or over all GPUs when
    there are several; the default (single-device) strategy otherwise.

    One strategy per device set and process: a second MirroredStrategy over
    the same devices reuses collective instance keys, and its all-reduces
    then meet the first one's (seen as "Shape mismatch in the collective
    instance" when a tuner trains several trials in one process).
    """
    if cluster.current().multi:
        if devices:
            raise ValueError("--devices: under multi-worker training (TF_CONFIG) each worker uses all its GPUs; "
                             "choose them with CUDA_VISIBLE_DEVICES instead")
        if "multi_worker" not in _STRATEGIES:
            cluster.check_devices(cluster.current(), len(tf.config.list_physical_devices("GPU")))
            _STRATEGIES["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy()
        return _STRATEGIES["multi_worker"]
    if not devices and len(tf.config.list_logical_devices("GPU")) > 1:
        devices = tuple(d.name for d in tf.config.list_logical_devices("GPU"))
    if not devices:
        return tf.distribute.get_strategy()
    specs = [tf.DeviceSpec.from_string(d) for d in devices]
    key = tuple(sorted(f"{(s.device_type or 'CPU').upper()}:{s.device_index or 0}" for s in specs))
    have = sorted(f"{(s.device_type).upper()}:{s.device_index}" for s in
                  (tf.DeviceSpec.from_string(d.name) for d in tf.config.list_logical_devices()))
    missing = [d for d, k in zip(devices, key) if k not in have]
    if missing:  # MirroredStrategy would wait for them forever
        raise ValueError(f"--devices={','.join(devices)}: no device {', '.join(missing)} here; this process has "
                         f"{', '.join(have)}")
    if key not in _STRATEGIES:
        _STRATEGIES[key] = tf.distribute.MirroredStrategy(list(devices))
    return _STRATEGIES[key]


@keras.saving.register_keras_serializable(package="mtlrec")
class MultiTaskTrainer(keras.Model):
    """Wraps a functional network with the multi-task loss.

    `L = sum_t w_t * sum_i s_ti * BCE(y_ti, p_ti) / B + extra + sum(layer losses)`,
    with per-row sample weights `s` (0 on masked rows) and `B` the batch
    size, so a masked task's loss stays on the scale of the batch. The task
    weights `w_t` are `loss_weights` as they are, or as `balancing` (a
    `mtlrec.balancing.Balancing`) makes them each step. Under
    `tf.distribute` the per-replica loss is divided by the replica count:
    the gradient sum over replicas is then the single-device gradient.
    Only the task outputs get cross-entropy; `extra_loss` (a
    `mtlrec.losses.loss_spec`) adds a model's own terms (ESCM2, AITM).
    """

    def __init__(self, network: keras.Model, tasks: Sequence[str], loss_weights: dict[str, float] | None = None,
                 extra_loss: dict[str, Any] | None = None, balancing: dict[str, Any] | Balancing | None = None,
                 **kwargs):
        super().__init__(**kwargs)
        self.network = network
        self.tasks = list(tasks)
        self.loss_weights = {t: float((loss_weights or {}).get(t, 1.0)) for t in self.tasks}
        self.extra_loss = extra_loss
        if isinstance(balancing, dict):
            balancing = Balancing(**balancing)
        self.balancing = balancing or Balancing()
        k = len(self.tasks)
        self.w0 = tf.constant([self.loss_weights[t] for t in self.tasks], tf.float32)
        self.decay = tf.constant([float(self.balancing.decay.get(t, 1.0)) for t in self.tasks], tf.float32)
        method = self.balancing.method
        if method == "uncertainty":  # s_t = log sigma_t^2, trained with the network
            self.log_variance = self.add_weight(shape=(k,), initializer="zeros", name="task_log_variance")
        if method in ("dwa", "gradnorm"):  # set between steps (gradnorm) or epochs (dwa), checkpointed
            self.task_weights = self.add_weight(shape=(k,), initializer="ones", trainable=False, name="task_weights")
        if method == "gradnorm":
            self.initial_losses = self.add_weight(shape=(k,), initializer="zeros", trainable=False,
                                                  name="initial_task_losses")
        # Per-task training loss, logged as `<task>_loss`: shows which task
        # a non-finite total came from.
        self.task_loss_trackers = [keras.metrics.Mean(name=f"{t}_loss") for t in self.tasks]

    def call(self, inputs, training=None):
        return self.network(inputs, training=training)

    def task_losses(self, y, y_pred, sample_weight):
        losses = {}
        for t in self.tasks:
            p = tf.clip_by_value(tf.cast(y_pred[t], tf.float32), EPS, 1 - EPS)
            label = tf.cast(y[t], tf.float32)
            bce = -(label * tf.math.log(p) + (1 - label) * tf.math.log(1 - p))
            w = tf.ones_like(bce) if sample_weight is None else tf.cast(sample_weight[t], tf.float32)
            loss = tf.reduce_sum(w * bce) / tf.cast(tf.maximum(tf.size(bce), 1), tf.float32)
            # Clipping maps NaN predictions to a finite loss: report them as NaN.
            finite = tf.reduce_all(tf.math.is_finite(tf.cast(y_pred[t], tf.float32)))
            losses[t] = tf.where(finite, loss, tf.constant(float("nan")))
        return losses

    def compute_loss(self, x=None, y=None, y_pred=None, sample_weight=None, training=True):
        losses = self.task_losses(y, y_pred, sample_weight)
        if training:
            for t, tracker in zip(self.tasks, self.task_loss_trackers):
                tracker.update_state(losses[t])
        return self.total_loss(losses, y, y_pred)

    def effective_weights(self) -> tf.Tensor:
        """The weight each task's loss has in this step (K,)."""
        method = self.balancing.method
        if method == "ple_schedule":
            return balancing.ple_schedule_weights(self.w0, self.decay, self.optimizer.iterations)
        if method == "uncertainty":
            return self.w0 * tf.exp(-tf.convert_to_tensor(self.log_variance))
        if method in ("dwa", "gradnorm"):
            return self.w0 * tf.convert_to_tensor(self.task_weights)
        return self.w0

    def task_terms(self, losses) -> list[tf.Tensor]:
        """`w_t L_t` per task, before the division by replicas."""
        weights = self.effective_weights()
        return [weights[i] * losses[t] for i, t in enumerate(self.tasks)]

    def common_loss(self, y, y_pred):
        """Everything but the weighted task losses: the model's extra terms,
        the layer losses and the uncertainty rule's `sum_t w0_t s_t`."""
        total = model_loss(self.extra_loss, y, y_pred, self.tasks)
        if self.losses:
            total = total + tf.add_n([tf.cast(v, tf.float32) for v in self.losses])
        if self.balancing.method == "uncertainty":
            total = total + tf.reduce_sum(self.w0 * tf.convert_to_tensor(self.log_variance))
        return tf.convert_to_tensor(total, tf.float32)

    def total_loss(self, losses, y, y_pred):
        """The weighted task losses plus `common_loss`, divided by the
        replicas in sync (see the class doc)."""
        total = tf.add_n(self.task_terms(losses)) + self.common_loss(y, y_pred)
        replicas = tf.distribute.get_strategy().num_replicas_in_sync
        return total / replicas if replicas > 1 else total

    def get_config(self):
        return {
            **super().get_config(),
            "network": keras.saving.serialize_keras_object(self.network),
            "tasks": self.tasks,
            "loss_weights": self.loss_weights,
            "extra_loss": self.extra_loss,
            "balancing": dataclasses.asdict(self.balancing),
        }

    @classmethod
    def from_config(cls, config):
        config = dict(config)
        config["network"] = keras.saving.deserialize_keras_object(config["network"])
        return cls(**config)


def _reach(per_task: list[list]) -> list[int]:
    """How many tasks' gradients reach each variable (known when tracing)."""
    return [sum(g[v] is not None for g in per_task) for v in range(len(per_task[0]))]


def last_shared_block(variables: Sequence, reach: Sequence[int], sparse: Sequence[bool]) -> list[int]:
    """GradNorm's `W`: the dense weights two or more tasks reach, in the last
    top-level layer holding such weights (MMoE: the experts; PLE: the last
    level's shared experts; Shared-Bottom: the bottom MLP)."""
    shared = [i for i, v in enumerate(variables) if reach[i] >= 2 and not sparse[i]]
    if not shared:
        raise ValueError("--loss_balancing=gradnorm: the tasks share no dense layer in this model")
    block = variables[shared[-1]].path.split("/")[0]
    return [i for i in shared if variables[i].path.split("/")[0] == block]


def make_train_step(trainer: MultiTaskTrainer, strategy: tf.distribute.Strategy, frozen: Sequence = (),
                    loop: bool = False):
    """One optimizer step on the next global batch of a distributed iterator,
    the same under the default strategy, MirroredStrategy and
    MultiWorkerMirroredStrategy: each replica computes its loss (already
    divided by the replicas) and gradients; the optimizer sums the gradients
    over replicas (and workers) before applying them. `gradnorm` and
    `pcgrad` need the global per-task gradients: they are summed over the
    replicas first, and what each replica hands the optimizer is divided by
    the replicas. Returns the global loss, the mean per-task losses and the
    task weights of the step. `frozen`: variables the step leaves alone
    (frozen tasks' own parameters: neither they nor their optimizer slots
    change). Call under `strategy.scope()` with the trainer built (its
    variables exist).

    `loop=False` gives `step(iterator)`: one step, scalars out. `loop=True`
    gives `steps(iterator, count)`: `count` steps (any count >= 1, one
    trace) in one `tf.function` call, each step's values stacked: fewer
    calls from Python, and a step's tail overlaps the next one's head
    (`--steps_per_execution`)."""
    if not trainer.optimizer.built:  # its slots must not be created inside the step
        trainer.optimizer.build(trainer.trainable_variables)
    method = trainer.balancing.method
    replicas = strategy.num_replicas_in_sync

    def all_reduce_sum(values: list):
        """Sum over replicas of a list holding tensors, IndexedSlices and None."""
        present = [i for i, v in enumerate(values) if v is not None]
        if replicas == 1 or not present:
            return values
        reduced = tf.distribute.get_replica_context().all_reduce("SUM", [values[i] for i in present])
        out = list(values)
        for i, r in zip(present, reduced):
            out[i] = r
        return out

    def replica_step(features, labels, weights):
        variables = trainer.trainable_variables
        with tf.GradientTape(persistent=trainer.balancing.per_task_gradients) as tape:
            predictions = trainer(features, training=True)
            losses = trainer.task_losses(labels, predictions, weights)
            if method == "gradnorm":  # w0_t L_t: the norms are taken before GradNorm's own weights
                plain = [trainer.w0[i] * losses[t] / replicas for i, t in enumerate(trainer.tasks)]
            if trainer.balancing.per_task_gradients:
                terms = [term / replicas for term in trainer.task_terms(losses)]
                common = trainer.common_loss(labels, predictions) / replicas
                total = tf.add_n(terms) + common
            else:
                total = trainer.total_loss(losses, labels, predictions)
        effective = trainer.effective_weights()
        extra = {}
        if method == "pcgrad":
            per_task = [tape.gradient(term, variables) for term in terms]
            common_grads = tape.gradient(common, variables)
            reach = _reach(per_task)
            shared = [v for v in range(len(variables)) if reach[v] >= 2]
            flat = all_reduce_sum([per_task[i][v] for i in range(len(terms)) for v in shared])
            task_grads = [flat[i * len(shared):(i + 1) * len(shared)] for i in range(len(terms))]
            seed = tf.stack([tf.cast(trainer.optimizer.iterations, tf.int32), 7])
            order = tf.argsort(tf.random.stateless_uniform([len(terms)], seed=seed))
            surgery, conflicts = balancing.pcgrad(task_grads, order)
            gradients = []
            for v in range(len(variables)):
                if v in shared:  # the global sum, handed to an optimizer that sums over replicas
                    g = balancing.scale(surgery[shared.index(v)], 1.0 / replicas)
                else:
                    g = None
                    for i in range(len(terms)):
                        g = balancing.add(g, per_task[i][v])
                gradients.append(balancing.add(g, common_grads[v]))
            extra["conflicts"] = conflicts
        else:
            gradients = tape.gradient(total, variables)
        if method == "gradnorm":
            sparse = [isinstance(g, tf.IndexedSlices) for g in gradients]
            per_task = [tape.gradient(term, variables) for term in plain]
            block = last_shared_block(variables, _reach(per_task), sparse)
            flat = all_reduce_sum([per_task[i][v] for i in range(len(plain)) for v in block])
            norms = tf.stack([tf.sqrt(tf.add_n([tf.reduce_sum(tf.square(g)) for g in
                                                flat[i * len(block):(i + 1) * len(block)] if g is not None]))
                              for i in range(len(plain))])
            step_losses = tf.stack([losses[t] for t in trainer.tasks])
            if replicas > 1:
                step_losses = tf.distribute.get_replica_context().all_reduce("MEAN", step_losses)
            recorded = tf.convert_to_tensor(trainer.initial_losses)
            initial = tf.where(recorded > 0, recorded, step_losses)
            extra["task_weights"] = balancing.gradnorm_update(
                tf.convert_to_tensor(trainer.task_weights), norms, step_losses, initial,
                trainer.balancing.gradnorm_alpha, trainer.balancing.gradnorm_learning_rate)
            extra["initial_losses"] = initial
        if frozen:
            keep = {id(v) for v in frozen}
            pairs = [(g, v) for g, v in zip(gradients, variables) if id(v) not in keep]
            gradients, variables = [g for g, _ in pairs], [v for _, v in pairs]
        trainer.optimizer.apply(gradients, variables)
        return total, losses, effective, extra

    def step(iterator):
        total, losses, effective, extra = strategy.run(replica_step, args=next(iterator))
        if "task_weights" in extra:  # the same on every replica
            trainer.task_weights.assign(strategy.reduce("MEAN", extra["task_weights"], axis=None))
            trainer.initial_losses.assign(strategy.reduce("MEAN", extra["initial_losses"], axis=None))
        out = {t: strategy.reduce("MEAN", v, axis=None) for t, v in losses.items()}
        weights = strategy.reduce("MEAN", effective, axis=None)
        out.update({f"{t}_weight": weights[i] for i, t in enumerate(trainer.tasks)})
        if "conflicts" in extra:
            out["pcgrad_conflicts"] = strategy.reduce("MEAN", extra["conflicts"], axis=None)
        return strategy.reduce("SUM", total, axis=None), out

    # No AutoGraph: the step has no tensor-dependent Python control flow, and
    # converting its code took 2.7 s of a 4.9 s trace (PLE), paid by every run.
    if not loop:
        return tf.function(step, autograph=False)
    keys = [*trainer.tasks, *(f"{t}_weight" for t in trainer.tasks), *(["pcgrad_conflicts"] if method == "pcgrad" else [])]

    def steps(iterator, count):
        """`count` steps in one call: the global loss of each, and each
        step's outputs, stacked (`[count]`)."""
        def body(i, totals, outs):
            total, out = step(iterator)
            if sorted(out) != sorted(keys):
                raise AssertionError(f"step outputs {sorted(out)}, expected {sorted(keys)}")
            return i + 1, totals.write(i, total), {k: outs[k].write(i, tf.cast(out[k], tf.float32)) for k in keys}

        start = (tf.constant(0), tf.TensorArray(tf.float32, size=count, element_shape=()),
                 {k: tf.TensorArray(tf.float32, size=count, element_shape=()) for k in keys})
        _, totals, outs = tf.while_loop(lambda i, *_: i < count, body, start)
        return totals.stack(), {k: v.stack() for k, v in outs.items()}

    return tf.function(steps, autograph=False)


def dropped_features(config: TrainConfig, manifest: Manifest) -> list[str]:
    """The id features `--oov_dropout` acts on (none when it is off)."""
    return oov_features(manifest, config.oov_features) if config.oov_dropout else []


def distributed_train_data(strategy: tf.distribute.Strategy, manifest: Manifest, config: TrainConfig,
                           seed: int) -> tf.distribute.DistributedDataset:
    """The repeated, shuffled training batches, split over the replicas: each
    input pipeline (one per worker) reads its own files and makes batches of
    `batch_size / replicas` rows, one per local replica and step."""
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

    dropped = dropped_features(config, manifest)

    def dataset(context: tf.distribute.InputContext) -> tf.data.Dataset:
        ds = make_dataset(manifest, "train", context.get_per_replica_batch_size(config.batch_size), config.tasks,
                          shuffle=True, seed=seed, repeat=True, drop_remainder=True, input_context=context)
        return drop_to_oov(ds, dropped, config.oov_dropout, seed * 1000 + context.input_pipeline_id)

    return strategy.distribute_datasets_from_function(dataset)


_PREDICT_STEPS: dict[int, Any] = {}


def predict_split(network: keras.Model, dataset: tf.data.Dataset, tasks: Sequence[TaskSpec], user_feature: str | None):
    """All predictions, labels and weights of a split, as numpy arrays."""
    step = _PREDICT_STEPS.get(id(network))
    if step is None:
        step = _PREDICT_STEPS[id(network)] = tf.function(lambda x: network(x, training=False), reduce_retracing=True)
    cols: dict[str, list[np.ndarray]] = {}
    for features, labels, weights in dataset:
        out = step(features)
        for t in tasks:
            cols.setdefault(f"p/{t.name}", []).append(out[t.name].numpy())
            cols.setdefault(f"y/{t.name}", []).append(labels[t.name].numpy())
            cols.setdefault(f"w/{t.name}", []).append(weights[t.name].numpy())
        if "p_up" in out:
            cols.setdefault("p_up", []).append(out["p_up"].numpy())
        if user_feature:
            cols.setdefault("user", []).append(features[user_feature].numpy())
    return {k: np.concatenate(v) for k, v in cols.items()}


def evaluate(network, dataset, tasks, user_feature=None) -> dict[str, Any]:
    """Per-task metrics of a split; `auc_mean` over tasks."""
    return metrics_of(predict_split(network, dataset, tasks, user_feature), tasks)


def metrics_of(cols: dict[str, np.ndarray], tasks: Sequence[TaskSpec]) -> dict[str, Any]:
    """`evaluate` on the columns of `predict_split`."""
    out: dict[str, Any] = {}
    for t in tasks:
        out[t.name] = task_metrics(cols[f"y/{t.name}"], cols[f"p/{t.name}"], cols[f"w/{t.name}"], cols.get("user"))
    aucs = [m["auc"] for m in out.values() if not math.isnan(m["auc"])]
    out["auc_mean"] = float(np.mean(aucs)) if aucs else float("nan")
    if "p_up" in cols:
        # DLEN's convergence check: P(UP) against "any interaction".
        any_positive = np.max([cols[f"y/{t.name}"] for t in tasks], axis=0)
        out["p_up"] = {"auc_any_interaction": auc(any_positive, cols["p_up"]), "mean": float(cols["p_up"].mean())}
    return out


def _score(metrics: dict[str, Any], monitor: str) -> float:
    """`auc_mean`, or `<task>/<metric>` (higher is better except logloss)."""
    if monitor == "auc_mean":
        return metrics["auc_mean"]
    task, _, name = monitor.partition("/")
    if task not in metrics or not isinstance(metrics[task], dict) or name not in metrics[task]:
        raise ValueError(f"--monitor={monitor}: expected 'auc_mean' or '<task>/<metric>' of {list(metrics)}")
    value = metrics[task][name]
    return -value if name == "logloss" else value


def peak_rss_mb() -> float:
    """This process's peak resident memory, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class TrainingDiverged(ValueError):
    """The loss became NaN or infinite: training stopped at that step."""


def non_finite_weights(network: keras.Model) -> list[str]:
    """Paths of the weights that hold NaN or inf."""
    return [w.path for w in network.weights if not np.isfinite(w.numpy()).all()]


def diverged_message(loss: float, task_losses: dict[str, float], step: int, epoch: int) -> str:
    """The error of a step whose loss is not finite: the step, the epoch
    (from 1), the task(s) it came from and what was kept."""
    bad = [t for t, v in task_losses.items() if not math.isfinite(v)]
    kept = f"the checkpoint of epoch {epoch - 1}" if epoch > 1 else "no checkpoint (epoch 1 never finished)"
    return (f"training diverged: the loss became {loss} at step {step} (epoch {epoch}), "
            f"from task(s) {', '.join(bad) or 'none alone (the extra or regularisation terms)'}; "
            f"kept {kept}, exported nothing. Lower --learning_rate or check the data")


def progress_verbosity(verbose: int) -> int:
    """A progress bar only on a terminal: redirected output gets one line
    per epoch (a bar written to a file is kilobytes of control codes)."""
    return 2 if verbose == 1 and not sys.stdout.isatty() else verbose


class _Run:
    """State of one training run on disk: checkpoint, best weights, state.json."""

    def __init__(self, config: TrainConfig, manifest: Manifest, strategy: tf.distribute.Strategy):
        self.config = config
        self.manifest = manifest
        self.strategy = strategy
        self.started = time.time()  # of this process's part of the run
        self.worker = cluster.current()
        # Only the chief writes MODEL_DIR; other workers save their (equal)
        # checkpoints to a temporary folder, removed at the end (`close`).
        self.scratch = None if self.worker.is_chief else tempfile.mkdtemp(prefix=f"mtlrec-worker{self.worker.index}-")
        d = self.scratch or config.model_dir
        self.read_ckpt_dir = mio.join(config.model_dir, "checkpoints")
        self.ckpt_dir = mio.join(d, "checkpoints")
        self.best_path = mio.join(d, "best.weights.h5")
        self.state_path = mio.join(config.model_dir, "state.json")
        self.user_feature = "user_id" if "user_id" in {f.name for f in manifest.schema.features} else None
        with strategy.scope():
            keras.utils.set_random_seed(config.seed)
            # With id dropout, ids unseen in training read the row it trains (set_seen_ids).
            unseen_to_oov = dropped_features(config, manifest)
            self.network = build_model(config.model, manifest, config.model_config,
                                       task_labels={t.name: t.label for t in config.tasks},
                                       unseen_to_oov=unseen_to_oov,
                                       fused_embedding_sets=config.fused_embedding_sets)
            if unseen_to_oov:
                seen = split_ids(manifest, "train", unseen_to_oov)
                set_seen_ids(self.network, seen)
                logging.info("ids unseen in training read the out-of-vocabulary row: %s",
                             ", ".join(f"{n} ({len(v)} seen of {manifest.vocab_size[n]})" for n, v in seen.items()))
            self.trainer = MultiTaskTrainer(self.network, [t.name for t in config.tasks], config.loss_weights,
                                            extra_loss=loss_spec(config.model, config.model_config),
                                            balancing=config.balancing)
            self.trainer.compile(optimizer=LazyAdam(config.learning_rate,
                                                    sparse_rule=EMBEDDING_OPTIMIZERS[config.embedding_optimizer],
                                                    sparse_learning_rate=config.embedding_learning_rate))
            self._build()
            self.stopping = (TaskStopping(self.network, [t.name for t in config.tasks], config.task_patience)
                             if config.task_patience else None)
            extra = {"task_best": self.stopping.checkpoint()} if self.stopping else {}
            self.checkpoint = tf.train.Checkpoint(model=self.trainer, optimizer=self.trainer.optimizer, **extra)
        self.manager = tf.train.CheckpointManager(self.checkpoint, self.ckpt_dir, max_to_keep=2)
        self.state: dict[str, Any] = {"epoch": 0, "best_score": None, "best_epoch": None, "bad_epochs": 0, "history": []}
        self.valid_ds = make_dataset(manifest, "valid", config.eval_batch_size, config.tasks, shuffle=False)
        self.test_ds: tf.data.Dataset | None = None  # built on first use by --test_each_epoch
        self.gates = diagnostics.GateProbe(self.network, [t.name for t in config.tasks])
        self.writers: dict[str, Any] = {}
        if config.tensorboard and self.worker.is_chief:
            parts = ("train", "validation") + (("gates",) if self.gates.layers else ())
            self.writers = {p: tf.summary.create_file_writer(mio.join(d, "tensorboard", p)) for p in parts}

    def write_tensorboard(self, epoch: int, train_logs: dict[str, float], valid: dict[str, Any]):
        """Epoch `epoch` (from 1): training loss per task and learning rate,
        validation AUC and logloss per task, and (up to 20k validation rows
        of) the gates' weights as histograms."""
        if not self.writers:
            return
        with self.writers["train"].as_default():
            for name, value in train_logs.items():
                tf.summary.scalar(f"epoch_{name}", value, step=epoch)
            tf.summary.scalar("epoch_learning_rate", float(self.trainer.optimizer.learning_rate.numpy()), step=epoch)
        with self.writers["validation"].as_default():
            for t in self.config.tasks:
                tf.summary.scalar(f"epoch_{t.name}_auc", valid[t.name]["auc"], step=epoch)
                tf.summary.scalar(f"epoch_{t.name}_logloss", valid[t.name]["logloss"], step=epoch)
            tf.summary.scalar("epoch_auc_mean", valid["auc_mean"], step=epoch)
        if "gates" in self.writers:
            with self.writers["gates"].as_default():
                self.gates.write_histograms(self.valid_ds, step=epoch)
        for writer in self.writers.values():
            writer.flush()

    def end_epoch(self, epoch: int, train_logs: dict[str, float], seconds: float, examples: int) -> bool:
        """After epoch `epoch` (from 1): checks the weights, validates, keeps
        the best weights, writes TensorBoard and a checkpoint; True when
        early stopping ends the training."""
        bad = non_finite_weights(self.network)
        if bad:  # rows updated in the last steps need not have been read yet
            raise TrainingDiverged(f"training diverged: after epoch {epoch} weights hold NaN or inf "
                                   f"({', '.join(bad[:3])}); kept the checkpoint of epoch {epoch - 1}, exported "
                                   "nothing. Lower --learning_rate or check the data")
        state = self.state
        # Global means (reduced over workers): every worker keeps them, for DWA.
        state.setdefault("task_losses", []).append([train_logs[f"{t}_loss"] for t in self.trainer.tasks])
        if not self.worker.is_chief:  # the chief validates and decides; see `agree`
            self.stop_tasks(epoch, None)
            state["epoch"] = epoch
            self.save_checkpoint()
            return False
        metrics = evaluate(self.network, self.valid_ds, self.config.tasks, self.user_feature)
        score = _score(metrics, self.config.monitor)
        state["history"].append({"epoch": epoch, "loss": train_logs["loss"], "train": train_logs, "valid": metrics})
        if self.config.test_each_epoch:  # for learning curves on test; selection still reads validation only
            if self.test_ds is None:
                self.test_ds = make_dataset(self.manifest, "test", self.config.eval_batch_size, self.config.tasks,
                                            shuffle=False)
            state["history"][-1]["test"] = evaluate(self.network, self.test_ds, self.config.tasks, self.user_feature)
        summary = " ".join(f"{t.name}_auc={metrics[t.name]['auc']:.4f}" for t in self.config.tasks)
        logging.info("epoch %d valid: %s (%s=%.4f)", epoch, summary, self.config.monitor, score)
        self.write_tensorboard(epoch, train_logs, metrics)
        if state["best_score"] is None or score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0, best_after_freezing=False)
            self.save_best()
        else:
            state["bad_epochs"] += 1
        all_frozen = self.stop_tasks(epoch, metrics)
        state["epoch"] = epoch
        state["train_seconds"] = state.get("train_seconds", 0.0) + seconds
        state["train_examples"] = state.get("train_examples", 0) + examples
        state["wall_seconds"] = state.get("wall_seconds_before", 0.0) + time.time() - self.started
        state["peak_rss_mb"] = max(state.get("peak_rss_mb", 0.0), peak_rss_mb())
        stop = state["bad_epochs"] >= self.config.patience or all_frozen
        if stop:
            if all_frozen:
                logging.info("early stop: every task is frozen (--task_patience=%d)", self.config.task_patience)
            else:
                logging.info("early stop: %s did not improve for %d epoch(s)", self.config.monitor,
                             state["bad_epochs"])
            state["stopped_early"] = True
        self.save_checkpoint()
        return stop

    def stop_tasks(self, epoch: int, valid: dict[str, Any] | None) -> bool:
        """Per-task early stopping after epoch `epoch` (`--task_patience`):
        the chief decides from the validation metrics (`valid`; None on the
        other workers), every worker applies the decision to its copy of
        the weights. True when every task is frozen."""
        if self.stopping is None:
            return False
        decision = self.stopping.decide(self.state, valid, epoch) if self.worker.is_chief else None
        decision = json.loads(share_from_chief(self.strategy, json.dumps(decision)))
        frozen = self.state.setdefault("frozen_tasks", {})
        frozen.update({t: epoch for t in decision["freeze"]})
        self.stopping.apply(decision)
        if decision["freeze"]:
            best = {t: self.state.get("tasks", {}).get(t, {}).get("best_epoch") for t in decision["freeze"]}
            logging.info("epoch %d: froze %s (own parameters back to their best epoch: %s); no validation AUC "
                         "gain for %d epoch(s)", epoch, ", ".join(decision["freeze"]),
                         ", ".join(f"{t} {e}" for t, e in best.items()), self.config.task_patience)
        if self.worker.is_chief:
            self.state["history"][-1]["frozen_tasks"] = sorted(frozen)
            if decision["freeze"]:
                self._validate_frozen(epoch)
        return len(frozen) == len(self.config.tasks)

    def _validate_frozen(self, epoch: int) -> None:
        """The weights after a freeze (shared parts of epoch `epoch`, the
        frozen tasks' own parts of their best epochs) were not validated
        yet: they are, and they become the best weights when they beat the
        best so far (`best_after_freezing`: metrics.json's `valid` is then
        theirs)."""
        state = self.state
        metrics = evaluate(self.network, self.valid_ds, self.config.tasks, self.user_feature)
        state["history"][-1]["valid_after_freezing"] = metrics
        score = _score(metrics, self.config.monitor)
        logging.info("epoch %d after freezing: %s=%.4f", epoch, self.config.monitor, score)
        if state["best_score"] is None or score > state["best_score"]:
            state.update(best_score=score, best_epoch=epoch, bad_epochs=0, best_after_freezing=True)
            self.save_best()

    def frozen_variables(self) -> list:
        """The variables training leaves alone now: the frozen tasks' own."""
        if self.stopping is None:
            return []
        return self.stopping.frozen_variables(sorted(self.state.get("frozen_tasks", {})))

    def start_epoch(self, epoch: int) -> None:
        """Before epoch `epoch` (from 1): MEDA's embedding reset (from the
        second epoch, seeded by run seed and epoch, so a resumed run draws
        the same tables); DWA sets the task weights from the last two
        epochs' losses."""
        if self.config.embedding_reset == "epoch" and epoch >= 2:
            n = multi_epoch.reset_embeddings(self.network, self.trainer.optimizer, self.config.seed, epoch,
                                             keep=self.frozen_variables())
            logging.info("epoch %d: re-initialized %d embedding tables and their optimizer slots", epoch, n)
        if self.trainer.balancing.method == "dwa":
            weights = balancing.dwa_weights(self.state.get("task_losses", []), self.trainer.balancing.dwa_temperature,
                                            len(self.trainer.tasks))
            self.trainer.task_weights.assign(weights.astype(np.float32))

    def _build(self):
        # Create the variables (model and optimizer) before a restore.
        features, _, _ = next(iter(make_dataset(self.manifest, "valid", 2, self.config.tasks, shuffle=False)))
        self.trainer(features)
        self.trainer.optimizer.build(self.trainer.trainable_variables)

    def restore(self) -> int:
        """Resume from the last checkpoint; returns the epochs already done."""
        latest = tf.train.latest_checkpoint(self.read_ckpt_dir) if mio.exists(self.read_ckpt_dir) else None
        if latest and mio.exists(self.state_path):  # every worker resumes from the chief's checkpoint
            try:
                self.checkpoint.restore(latest).assert_existing_objects_matched()
            except (AssertionError, ValueError, tf.errors.OpError) as e:
                raise ValueError(
                    f"{latest}: does not match this model ({str(e).splitlines()[0][:200]}); "
                    "pass --overwrite to start over, or choose another --model_dir"
                ) from None
            with mio.open_text(self.state_path) as f:
                self.state = json.load(f)
            self.state["wall_seconds_before"] = self.state.get("wall_seconds", 0.0)
            logging.info("resumed from %s after epoch %d", latest, self.state["epoch"])
            return int(self.state["epoch"])
        return 0

    def save_checkpoint(self):
        self.manager.save(checkpoint_number=self.state["epoch"])  # every worker: saving may be collective
        if self.worker.is_chief:
            mio.write_atomic(self.state_path, json.dumps(self.state, indent=1).encode())

    def close(self):
        if self.scratch:
            shutil.rmtree(self.scratch, ignore_errors=True)

    def save_best(self):
        tmp = f"{self.best_path}.tmp-{os.getpid()}.weights.h5"
        self.network.save_weights(tmp)
        os.replace(tmp, self.best_path)

    def save_model(self):
        """`model.keras`, written whole or not at all."""
        final = mio.join(self.config.model_dir, "model.keras")
        tmp = f"{final}.tmp-{os.getpid()}.keras"
        self.network.save(tmp)
        os.replace(tmp, final)


def fit(run: _Run, data: Callable[[int], tf.distribute.DistributedDataset], done: int, epochs: int,
        steps_per_epoch: int) -> None:
    """Epochs `done + 1 .. epochs` of `steps_per_epoch` steps each, under the
    run's strategy; epoch e reads `data(e)` (its own shuffle seed, so a
    resumed run reads what an uninterrupted one would) and ends with
    `_Run.end_epoch`. Stops at the first step whose loss is not finite
    (`TrainingDiverged`, naming the task)."""
    config, strategy = run.config, run.strategy
    verbose = progress_verbosity(config.verbose)
    step, step_frozen = None, None
    tasks = run.trainer.tasks
    for epoch in range(done + 1, epochs + 1):
        run.start_epoch(epoch)
        frozen = run.frozen_variables()
        if step is None or [id(v) for v in frozen] != step_frozen:  # a task froze: a step that skips its weights
            with strategy.scope():
                step = make_train_step(run.trainer, strategy, frozen, loop=True)
            step_frozen = [id(v) for v in frozen]
        with strategy.scope():
            iterator = iter(data(epoch))
        bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=None) if verbose == 1 else None
        sums: dict[str, float] = {}
        start = time.perf_counter()
        for first in range(0, steps_per_epoch, config.steps_per_execution):
            count = min(config.steps_per_execution, steps_per_epoch - first)
            totals, outs = step(iterator, tf.constant(count, tf.int32))
            totals, outs = totals.numpy(), {k: v.numpy() for k, v in outs.items()}
            for j in range(count):
                i = first + j
                values = {"loss": float(totals[j]),
                          **{(f"{k}_loss" if k in tasks else k): float(v[j]) for k, v in outs.items()}}
                if not math.isfinite(values["loss"]):  # the first such step of the call; nothing is saved after it
                    raise TrainingDiverged(diverged_message(
                        values["loss"], {t: values[f"{t}_loss"] for t in tasks},
                        step=(epoch - 1) * steps_per_epoch + i + 1, epoch=epoch))
                for k, v in values.items():
                    sums[k] = sums.get(k, 0.0) + v
                if bar is not None:
                    bar.update(i + 1, values=[(k, v) for k, v in values.items() if not k.endswith("_weight")])
        seconds = time.perf_counter() - start
        logs = {k: v / steps_per_epoch for k, v in sums.items()}
        if verbose == 2:
            print(f"Epoch {epoch}/{epochs}: {steps_per_epoch} steps, {seconds:.1f}s, "
                  f"{steps_per_epoch * config.batch_size / seconds:,.0f} examples/s, "
                  + ", ".join(f"{k} {v:.4f}" for k, v in logs.items() if k == "loss" or k.endswith("_loss"))
                  + ("; task weights " + ", ".join(f"{t} {logs[f'{t}_weight']:.3g}" for t in tasks)
                     if run.trainer.balancing.method != "fixed" else ""), flush=True)
        stop = run.end_epoch(epoch, logs, seconds, steps_per_epoch * config.batch_size)
        if agree(strategy, stop):
            break


def _from_chief(strategy: tf.distribute.Strategy, values: np.ndarray) -> np.ndarray:
    """`values` of the chief's first replica, on every worker: an all-reduce
    sum to which every other replica adds zeros (of the same shape)."""
    def fn():
        first = tf.distribute.get_replica_context().replica_id_in_sync_group == 0
        return tf.where(first, tf.constant(values, tf.float32), tf.zeros(values.shape, tf.float32))

    with strategy.scope():
        return strategy.reduce("SUM", strategy.run(fn), axis=None).numpy()


def agree(strategy: tf.distribute.Strategy, flag: bool) -> bool:
    """The chief's `flag`, on every worker (`_from_chief`); the flag itself
    in a single process."""
    if not cluster.current().multi:
        return flag
    return bool(_from_chief(strategy, np.array([float(flag)], np.float32))[0] > 0.5)


def share_from_chief(strategy: tf.distribute.Strategy, text: str | None) -> str:
    """The chief's `text` on every worker (two `_from_chief` all-reduces:
    its length, then its bytes); other workers pass None. `text` itself in
    a single process."""
    worker = cluster.current()
    if not worker.multi:
        return text or ""
    data = np.frombuffer((text or "").encode(), np.uint8).astype(np.float32) if worker.is_chief else np.zeros(0)
    length = int(round(float(_from_chief(strategy, np.array([len(data)], np.float32))[0])))
    if not worker.is_chief:
        data = np.zeros(length, np.float32)
    return bytes(np.rint(_from_chief(strategy, data)).astype(np.uint8)).decode() if length else ""


def _steps(config: TrainConfig, manifest: Manifest) -> tuple[int, int]:
    """(epochs, steps per epoch); `train_steps` caps the total."""
    per_epoch = max(1, manifest.rows("train") // config.batch_size)
    if config.train_steps is None:
        return config.epochs, per_epoch
    per_epoch = max(1, math.ceil(config.train_steps / config.epochs))
    return config.epochs, per_epoch


def train(config: TrainConfig, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train, select the best epoch on validation, evaluate it on test and
    write `MODEL_DIR/metrics.json` (returned too). `flags`: the command's
    flag values, recorded with the versions and times as `provenance`.

    Everything knowable before the first step is checked first
    (`mtlrec.preflight`); MODEL_DIR is claimed for this run (`RunDir`: same
    settings resume, other settings stop, one writer at a time)."""
    started_at, started = provenance.now(), time.time()
    if op_threads() == {"intra": 0, "inter": 0}:  # not chosen by the caller: the faster default, if still possible
        set_op_threads()
    manifest = load_manifest(config.data)
    logging.info("data: %s (%s rows in train/valid/test); run: %s", config.data,
                 "/".join(str(manifest.rows(s)) for s in preflight.SPLITS_NEEDED if s in manifest.splits),
                 config.model_dir)
    preflight.check_run(config, manifest)
    dropped_features(config, manifest)  # names a wrong --oov_features before any work
    worker = cluster.current()
    with RunDir(config.model_dir, config, manifest) if worker.is_chief else _Follower() as rundir:
        try:
            return _train(config, manifest, rundir, (started_at, started), flags)
        except TrainingDiverged:
            rundir.status("diverged")
            raise
        except (tf.errors.DataLossError, tf.errors.InvalidArgumentError) as e:
            manifest.check_files(checksums=True)  # names the bad shard
            if isinstance(e, tf.errors.DataLossError):
                raise ValueError(f"{manifest.root}: a shard cannot be read ({e.message.splitlines()[0]})") from None
            raise


class _Follower:
    """What a non-chief worker has instead of a `RunDir`: it writes nothing
    in MODEL_DIR, so it neither claims nor locks it."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return None

    def status(self, status: str, **extra: Any) -> None:
        pass


def _train(config: TrainConfig, manifest: Manifest, rundir: RunDir | _Follower, start: tuple[str, float],
           flags: dict[str, Any] | None) -> dict[str, Any]:
    strategy = make_strategy(config.devices)
    run = _Run(config, manifest, strategy)
    try:
        return _train_run(run, rundir, start, flags)
    finally:
        run.close()


def _train_run(run: _Run, rundir: RunDir | _Follower, start: tuple[str, float],
               flags: dict[str, Any] | None) -> dict[str, Any]:
    config, manifest, strategy = run.config, run.manifest, run.strategy
    started_at, started = start
    run.started = started
    # A non-chief worker starting over must not read checkpoints the chief is deleting.
    done = 0 if config.overwrite and not run.worker.is_chief else run.restore()
    epochs, steps_per_epoch = _steps(config, manifest)
    if run.state.get("stopped_early"):
        done = epochs
    if done < epochs:
        rundir.status("training", epochs=epochs)
        fit(run, lambda epoch: distributed_train_data(strategy, manifest, config, seed=config.seed + epoch - 1),
            done, epochs, steps_per_epoch)
    if not run.worker.is_chief:
        logging.info("%s: training done; the chief evaluates and writes %s", run.worker, config.model_dir)
        return {"worker": run.worker.index, "epochs_run": run.state.get("epoch")}
    if mio.exists(run.best_path):
        run.network.load_weights(run.best_path)
    logging.info("evaluating the best epoch (%s) on the test split (%d rows)", run.state.get("best_epoch"),
                 manifest.rows("test"))
    test_ds = make_dataset(manifest, "test", config.eval_batch_size, config.tasks, shuffle=False)
    cols = predict_split(run.network, test_ds, config.tasks, run.user_feature)
    test = metrics_of(cols, config.tasks)
    diag = {
        "split": "test",
        "reliability": {t.name: diagnostics.reliability(cols[f"y/{t.name}"], cols[f"p/{t.name}"], cols[f"w/{t.name}"])
                        for t in config.tasks},
        "gates": run.gates.mean_weights(test_ds),
    }
    state = run.state
    seconds = state.get("train_seconds", 0.0)
    metrics = {
        "model": config.model,
        "tasks": [dataclasses.asdict(t) for t in config.tasks],
        "test": test,
        "valid": (state["history"][state["best_epoch"] - 1][
            "valid_after_freezing" if state.get("best_after_freezing") else "valid"] if state.get("best_epoch") else None),
        "best_epoch": state.get("best_epoch"),
        "epochs_run": state.get("epoch"),
        "stopped_early": bool(state.get("stopped_early")),
        "history": state["history"],
        "train_examples_per_sec": state.get("train_examples", 0) / seconds if seconds else None,
        "train_seconds": seconds,
        "replicas": strategy.num_replicas_in_sync,
        "op_threads": op_threads(),
        **({"task_stopping": {"tasks": state.get("tasks", {}), "frozen_tasks": state.get("frozen_tasks", {}),
                              "best_after_freezing": bool(state.get("best_after_freezing"))}}
           if config.task_patience else {}),
        "params": int(run.network.count_params()),
        # Summed / the largest over the processes of a resumed run (up to its last checkpoint).
        "wall_seconds": state.get("wall_seconds_before", 0.0) + time.time() - started,
        "peak_rss_mb": max(state.get("peak_rss_mb", 0.0), peak_rss_mb()),
        "data": config.data,
        "config": {**dataclasses.asdict(config), "tasks": [dataclasses.asdict(t) for t in config.tasks]},
    }
    bad = non_finite_weights(run.network)
    if bad:
        raise TrainingDiverged(f"the selected weights hold NaN or inf ({', '.join(bad[:3])}); exported nothing. "
                               "Lower --learning_rate or check the data")
    logging.info("saving %s", mio.join(config.model_dir, "model.keras"))
    run.save_model()
    save_export_info(config.model_dir, config.model, manifest.schema, [t.name for t in config.tasks])
    metrics["provenance"] = provenance.provenance(started_at, flags)
    mio.write_atomic(mio.join(config.model_dir, diagnostics.FILE), json.dumps(diag, indent=1).encode())
    mio.write_atomic(mio.join(config.model_dir, "metrics.json"), json.dumps(metrics, indent=1, default=str).encode())
    rundir.status("finished", epochs=state.get("epoch"), best_epoch=state.get("best_epoch"))
    return metrics
