"""Evaluation: a network's predictions over a split and the per-task
metrics of them (AUC, logloss, calibration, GAUC; `auc_mean`; DLEN's P(UP)
check)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mtlrec.config import TaskSpec
from mtlrec.metrics import auc, task_metrics


class Predictor:
    """The inference function of one network, traced once and kept by its
    owner (a run): the network lives as long as its owner, not as long as
    the process (a tuner trains many networks in one process)."""

    def __init__(self, network: keras.Model):
        self.network = network
        self._step = tf.function(lambda x: network(x, training=False), reduce_retracing=True)

    def split(self, dataset: tf.data.Dataset, tasks: Sequence[TaskSpec], user_feature: str | None,
              keep: Sequence[str] = ()):
        """All predictions, labels and weights of a split, as numpy arrays:
        `p/<task>`, `y/<task>`, `w/<task>`, and `p_up`, `user` where there
        are such; `f/<name>` for the input features named in `keep`."""
        cols: dict[str, list[np.ndarray]] = {}
        for features, labels, weights in dataset:
            out = self._step(features)
            for t in tasks:
                cols.setdefault(f"p/{t.name}", []).append(out[t.name].numpy())
                cols.setdefault(f"y/{t.name}", []).append(labels[t.name].numpy())
                cols.setdefault(f"w/{t.name}", []).append(weights[t.name].numpy())
            if "p_up" in out:
                cols.setdefault("p_up", []).append(out["p_up"].numpy())
            if user_feature:
                cols.setdefault("user", []).append(features[user_feature].numpy())
            for name in keep:
                cols.setdefault(f"f/{name}", []).append(features[name].numpy())
        return {k: np.concatenate(v) for k, v in cols.items()}

    def evaluate(self, dataset: tf.data.Dataset, tasks: Sequence[TaskSpec], user_feature: str | None = None):
        """Per-task metrics of a split; `auc_mean` over tasks."""
        return metrics_of(self.split(dataset, tasks, user_feature), tasks)


def predict_split(network: keras.Model, dataset: tf.data.Dataset, tasks: Sequence[TaskSpec],
                  user_feature: str | None):
    """`Predictor.split` of a network, once (a run keeps its `Predictor`)."""
    return Predictor(network).split(dataset, tasks, user_feature)


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
