"""The loop of epochs: before each epoch its actions (MEDA's reset, DWA's
weights), the steps, and after it the weight check, validation, best-epoch
selection, TensorBoard, per-task stopping, the checkpoint and early
stopping, decided by the chief and shared with every worker."""

from __future__ import annotations

import math
import sys
import time

import keras
import tensorflow as tf
from absl import logging

from mtlrec import interrupts
from mtlrec.training import balancing, collective, divergence, embedding_reset, selection, task_stopping
from mtlrec.training.divergence import TrainingDiverged, diverged_message
from mtlrec.training.run import Run
from mtlrec.training.state import peak_rss_mb
from mtlrec.training.step import make_train_step


def progress_verbosity(verbose: int) -> int:
    """A progress bar only on a terminal: redirected output gets one line
    per epoch (a bar written to a file is kilobytes of control codes)."""
    return 2 if verbose == 1 and not sys.stdout.isatty() else verbose


def start_epoch(run: Run, epoch: int) -> None:
    """Before epoch `epoch` (from 1): MEDA's embedding reset; DWA sets the
    task weights from the last two epochs' losses."""
    run.manifest.check_unchanged(f"before epoch {epoch}")
    embedding_reset.before_epoch(run, epoch)
    if run.trainer.balancing.method == "dwa":
        balancing.dwa_before_epoch(run.trainer, run.state.task_losses)


def end_epoch(run: Run, epoch: int, train_logs: dict[str, float], seconds: float, examples: int) -> bool:
    """After epoch `epoch` (from 1): checks the weights, validates, keeps
    the best weights, writes TensorBoard and a checkpoint; True when early
    stopping ends the training."""
    config, state = run.config, run.state
    run.manifest.check_unchanged(f"during epoch {epoch} (not saved)")
    embedding_reset.settle_decay(run)
    divergence.check_weights(run.network, epoch)
    # Global means (reduced over workers): every worker keeps them, for DWA.
    state.task_losses.append([train_logs[f"{t}_loss"] for t in run.trainer.tasks])
    if not run.worker.is_chief:  # the chief validates and decides (collective.agree)
        task_stopping.after_epoch(run, epoch, None)
        state.epoch = epoch
        run.save_checkpoint()
        return False
    metrics = run.validate()
    value = selection.score(metrics, config.monitor)
    state.history.append({"epoch": epoch, "loss": train_logs["loss"], "train": train_logs, "valid": metrics})
    if config.test_each_epoch:  # for learning curves on test; selection still reads validation only
        state.history[-1]["test"] = run.predictor.evaluate(run.test_split(), config.tasks, run.user_feature)
    summary = " ".join(f"{t.name}_auc={metrics[t.name]['auc']:.4f}" for t in config.tasks)
    logging.info("epoch %d valid: %s (%s=%.4f)", epoch, summary, config.monitor, value)
    run.tensorboard.write(epoch, train_logs, float(run.trainer.optimizer.learning_rate.numpy()), config.tasks,
                          metrics, run.valid_ds)
    if selection.select(state, value, epoch):
        run.save_best()
    all_frozen = task_stopping.after_epoch(run, epoch, metrics)
    state.epoch = epoch
    state.train_seconds += seconds
    state.train_examples += examples
    state.wall_seconds = state.wall_seconds_before + time.time() - run.started
    state.peak_rss_mb = max(state.peak_rss_mb, peak_rss_mb())
    stop = selection.patience_spent(state, config.patience) or all_frozen
    if stop:
        if all_frozen:
            logging.info("early stop: every task is frozen (--task_patience=%d)", config.task_patience)
        else:
            logging.info("early stop: %s did not improve for %d epoch(s)", config.monitor, state.bad_epochs)
        state.stopped_early = True
    run.save_checkpoint()
    return stop


def still_stopped(run: Run) -> bool:
    """Whether an early-stopped run stays stopped under its settings now:
    `--patience` spent, or every task frozen by per-task stopping."""
    state = run.state
    all_frozen = bool(run.stopping) and len(state.frozen_tasks) == len(run.config.tasks)
    return selection.patience_spent(state, run.config.patience) or all_frozen


def fit(run: Run, done: int) -> None:
    """Epochs `done + 1 .. run.epochs` of `run.steps_per_epoch` steps each,
    under the run's strategy; each ends with `end_epoch`. Stops at the
    first step whose loss is not finite (`TrainingDiverged`, naming the
    task)."""
    config, strategy = run.config, run.strategy
    epochs, steps_per_epoch = run.epochs, run.steps_per_epoch
    verbose = progress_verbosity(config.verbose)
    step, step_frozen = None, None
    tasks = run.trainer.tasks
    for epoch in range(done + 1, epochs + 1):
        start_epoch(run, epoch)
        frozen = task_stopping.frozen_variables(run)
        if step is None or [id(v) for v in frozen] != step_frozen:  # a task froze: a step that skips its weights
            with strategy.scope():
                step = make_train_step(run.trainer, strategy, frozen, loop=True, jit_compile=config.jit_compile,
                                       loss_scale=run.loss_scale)
            step_frozen = [id(v) for v in frozen]
        with strategy.scope():
            iterator = iter(run.train_data(epoch))
        bar = keras.utils.Progbar(steps_per_epoch, stateful_metrics=None) if verbose == 1 else None
        sums: dict[str, float] = {}
        start = time.perf_counter()
        for first in range(0, steps_per_epoch, config.steps_per_execution):
            count = min(config.steps_per_execution, steps_per_epoch - first)
            totals, outs = step(iterator, tf.constant(count, tf.int32))
            totals, outs = totals.numpy(), {k: v.numpy() for k, v in outs.items()}
            interrupts.raise_pending()  # a stop signal whose exception a TensorFlow call dropped
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
        stop = end_epoch(run, epoch, logs, seconds, steps_per_epoch * config.batch_size)
        if collective.agree(strategy, stop):
            break
