"""Per-task early stopping: a task whose validation AUC stopped improving
keeps its own parameters at their best and stops training them.

In multi-task training the tasks peak at different epochs: a sparse task
(AITM's share) may still be learning when the dense ones (click, like)
have begun to overfit, and one best epoch for all of them trades one
task's overfit against another's slow start. With `--task_patience=N`,
after every epoch each task's validation AUC is compared with its own
best; a task that has not improved for N epochs is frozen: its own
parameters (its tower, gate, task experts, task embedding set, transfer
unit: `owned_variables`) go back to the values they had after that task's
best epoch and are not updated again (their optimizer slots neither), and
MEDA's embedding reset leaves its own tables alone. Its loss still trains
the shared parameters, as every other task's does, so the shared
representation keeps serving it. Training stops when every task is frozen
(or by `--patience` on the monitor, as always).
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf
from absl import logging

from mtlrec.training import collective, selection

_GATE = re.compile(r"gate_(\d+)$")


def owned_variables(network: keras.Model, tasks: Sequence[str]) -> dict[str, list]:
    """The trainable variables of `network` that belong to one task, by the
    names the builders give them: a path part `<task>_...` (towers, AITM's
    bottoms and transfer units, ESCM2's imputation heads), `task<i>_...`
    (CGC/PLE/STEM task experts and gates, AME task embeddings and low-rank
    maps, residual towers, DLEN's per-task heads) or MMoE's `gate_<i>`
    when there is one gate per task. Everything else is shared."""
    variables = network.trainable_variables
    gates = {m.group(1) for v in variables for part in v.path.split("/") if (m := _GATE.match(part))}
    per_task_gates = len(gates) == len(tasks)
    owned: dict[str, list] = {t: [] for t in tasks}
    for v in variables:
        owners = set()
        for part in v.path.split("/"):
            for i, t in enumerate(tasks):
                if part == t or part.startswith(f"{t}_") or part.startswith(f"task{i}_"):
                    owners.add(t)
                m = _GATE.match(part)
                if per_task_gates and m and int(m.group(1)) == i:
                    owners.add(t)
        if len(owners) == 1:
            owned[owners.pop()].append(v)
    return owned


class TaskStopping:
    """Per-task best AUC, freezing decisions, and the best values of each
    task's own parameters (non-trainable copies, checkpointed with the run
    so that a resumed run restores the same state)."""

    def __init__(self, network: keras.Model, tasks: Sequence[str], patience: int):
        self.tasks, self.patience = list(tasks), patience
        self.owned = owned_variables(network, tasks)
        empty = [t for t, vs in self.owned.items() if not vs]
        if empty:
            raise ValueError(f"--task_patience: task(s) {empty} own no parameters in this model (every weight "
                             "is shared), so there is nothing to freeze")
        self.best = {t: [tf.Variable(v.value, trainable=False, name=f"best_{i}") for i, v in enumerate(vs)]
                     for t, vs in self.owned.items()}

    def checkpoint(self) -> tf.train.Checkpoint:
        return tf.train.Checkpoint(**{f"task_{i}": tf.train.Checkpoint(values=self.best[t])
                                      for i, t in enumerate(self.tasks)})

    def decide(self, records: dict[str, dict[str, Any]], frozen: dict[str, int], valid: dict[str, Any],
               epoch: int) -> dict[str, list[str]]:
        """On the chief, after validating epoch `epoch`: updates `records`
        (best AUC, best epoch, epochs without improvement per task; tasks in
        `frozen` are judged no more); returns the tasks that improved and
        those to freeze now."""
        improved, freeze = [], []
        for t in self.tasks:
            if t in frozen:
                continue
            auc = valid[t]["auc"]
            record = records.setdefault(t, {"best_auc": None, "best_epoch": None, "bad_epochs": 0})
            if record["best_auc"] is None or (np.isfinite(auc) and auc > record["best_auc"]):
                record.update(best_auc=float(auc), best_epoch=epoch, bad_epochs=0)
                improved.append(t)
            else:
                record["bad_epochs"] += 1
                if record["bad_epochs"] >= self.patience:
                    freeze.append(t)
        return {"improved": improved, "freeze": freeze}

    def apply(self, decision: dict[str, list[str]]) -> None:
        """On every worker: keeps the improved tasks' parameters as their
        best; puts the frozen ones back to their best."""
        for t in decision["improved"]:
            for best, v in zip(self.best[t], self.owned[t]):
                best.assign(v.value)
        for t in decision["freeze"]:
            for best, v in zip(self.best[t], self.owned[t]):
                v.assign(best.read_value())

    def frozen_variables(self, frozen: Sequence[str]) -> list:
        return [v for t in frozen for v in self.owned[t]]


def after_epoch(run, epoch: int, valid: dict[str, Any] | None) -> bool:
    """Per-task early stopping after epoch `epoch` of `run` (a
    `mtlrec.training.run.Run`): the chief decides from the validation
    metrics (`valid`; None on the other workers), every worker applies the
    decision to its copy of the weights. True when every task is frozen."""
    stopping, state = run.stopping, run.state
    if stopping is None:
        return False
    decision = stopping.decide(state.tasks, state.frozen_tasks, valid, epoch) if run.worker.is_chief else None
    decision = json.loads(collective.share_from_chief(run.strategy, json.dumps(decision)))
    state.frozen_tasks.update({t: epoch for t in decision["freeze"]})
    stopping.apply(decision)
    if decision["freeze"]:
        best = {t: state.tasks.get(t, {}).get("best_epoch") for t in decision["freeze"]}
        logging.info("epoch %d: froze %s (own parameters back to their best epoch: %s); no validation AUC "
                     "gain for %d epoch(s)", epoch, ", ".join(decision["freeze"]),
                     ", ".join(f"{t} {e}" for t, e in best.items()), stopping.patience)
    if run.worker.is_chief:
        state.history[-1]["frozen_tasks"] = sorted(state.frozen_tasks)
        if decision["freeze"]:
            _validate_frozen(run, epoch)
    return len(state.frozen_tasks) == len(stopping.tasks)


def _validate_frozen(run, epoch: int) -> None:
    """The weights after a freeze (shared parts of epoch `epoch`, the frozen
    tasks' own parts of their best epochs) were not validated yet: they
    are, and they become the best weights when they beat the best so far
    (`best_after_freezing`: metrics.json's `valid` is then theirs)."""
    metrics = run.validate()
    run.state.history[-1]["valid_after_freezing"] = metrics
    value = selection.score(metrics, run.config.monitor)
    logging.info("epoch %d after freezing: %s=%.4f", epoch, run.config.monitor, value)
    if selection.select(run.state, value, epoch, after_freezing=True):
        run.save_best()


def frozen_variables(run) -> list:
    """The variables training leaves alone now: the frozen tasks' own."""
    if run.stopping is None:
        return []
    return run.stopping.frozen_variables(sorted(run.state.frozen_tasks))
