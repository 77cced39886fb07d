"""Selection: the validation score of an epoch (`--monitor`), the best
epoch so far, and early stopping by `--patience`."""

from __future__ import annotations

from typing import Any

from mtlrec.training.state import RunState


def score(metrics: dict[str, Any], monitor: str) -> float:
    """`auc_mean`, or `<task>/<metric>` (higher is better except logloss)."""
    if monitor == "auc_mean":
        return metrics["auc_mean"]
    task, _, name = monitor.partition("/")
    if task not in metrics or not isinstance(metrics[task], dict) or name not in metrics[task]:
        raise ValueError(f"--monitor={monitor}: expected 'auc_mean' or '<task>/<metric>' of {list(metrics)}")
    value = metrics[task][name]
    return -value if name == "logloss" else value


def select(state: RunState, value: float, epoch: int, after_freezing: bool = False) -> bool:
    """Records epoch `epoch`'s score `value`: True when it is the best so far
    (the caller keeps its weights). A score validated after a freeze that
    is not the best counts no epoch without improvement: the epoch's own
    validation did."""
    if state.improves(value):
        state.best_score, state.best_epoch, state.bad_epochs = value, epoch, 0
        state.best_after_freezing = after_freezing
        return True
    if not after_freezing:
        state.bad_epochs += 1
    return False


def patience_spent(state: RunState, patience: int) -> bool:
    """`--patience` epochs in a row without improvement."""
    return state.bad_epochs >= patience
