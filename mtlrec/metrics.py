"""Per-task evaluation metrics, exact (rank-based), in numpy.

Keras' streaming AUC approximates with thresholds; these compute the exact
values from all predictions of a split, which evaluation collects anyway.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

EPS = 1e-7


def auc(labels: np.ndarray, scores: np.ndarray) -> float:
    """Area under the ROC curve (Mann-Whitney U, ties averaged); NaN if one class."""
    y = np.asarray(labels) > 0.5
    n1 = int(y.sum())
    n0 = len(y) - n1
    if n1 == 0 or n0 == 0:
        return float("nan")
    ranks = pd.Series(np.asarray(scores, np.float64)).rank().to_numpy()
    return float((ranks[y].sum() - n1 * (n1 + 1) / 2) / (n1 * n0))


def logloss(labels: np.ndarray, probs: np.ndarray) -> float:
    p = np.clip(np.asarray(probs, np.float64), EPS, 1 - EPS)
    y = np.asarray(labels, np.float64)
    return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))


def gauc(users: np.ndarray, labels: np.ndarray, scores: np.ndarray) -> float:
    """Per-user AUC averaged with impression weights over users with both classes."""
    df = pd.DataFrame({"u": users, "y": np.asarray(labels) > 0.5, "s": np.asarray(scores, np.float64)})
    df["r"] = df.groupby("u")["s"].rank()
    df["ry"] = df["r"] * df["y"]
    g = df.groupby("u").agg(n=("y", "size"), n1=("y", "sum"), r1=("ry", "sum"))
    g = g[(g.n1 > 0) & (g.n1 < g.n)]
    if g.empty:
        return float("nan")
    n0 = g.n - g.n1
    per_user = (g.r1 - g.n1 * (g.n1 + 1) / 2) / (g.n1 * n0)
    return float(np.average(per_user, weights=g.n))


def task_metrics(labels, probs, weights=None, users=None) -> dict[str, float]:
    """AUC, logloss, calibration (mean prediction / positive rate) and, with
    `users`, GAUC, over the rows whose weight is > 0."""
    labels, probs = np.asarray(labels), np.asarray(probs)
    keep = np.ones(len(labels), bool) if weights is None else np.asarray(weights) > 0
    y, p = labels[keep], probs[keep]
    rate = float(y.mean()) if len(y) else float("nan")
    out = {
        "auc": auc(y, p),
        "logloss": logloss(y, p) if len(y) else float("nan"),
        "calibration": float(p.mean() / rate) if rate > 0 else float("nan"),
        "mean_prediction": float(p.mean()) if len(p) else float("nan"),
        "positive_rate": rate,
        "rows": int(len(y)),
    }
    if users is not None:
        out["gauc"] = gauc(np.asarray(users)[keep], y, p)
    return out
