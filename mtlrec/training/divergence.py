"""Divergence: a loss or weights that became NaN or infinite stop the run
with the step, the epoch, the task it came from and what was kept."""

from __future__ import annotations

import math

import keras
import numpy as np


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


def check_weights(network: keras.Model, epoch: int) -> None:
    """After epoch `epoch` (from 1): stops the run when a weight is not finite."""
    bad = non_finite_weights(network)
    if bad:  # rows updated in the last steps need not have been read yet
        raise TrainingDiverged(f"training diverged: after epoch {epoch} weights hold NaN or inf "
                               f"({', '.join(bad[:3])}); kept the checkpoint of epoch {epoch - 1}, exported "
                               "nothing. Lower --learning_rate or check the data")


def check_selected(network: keras.Model) -> None:
    """Before the model is saved: the selected (best) weights are finite."""
    bad = non_finite_weights(network)
    if bad:
        raise TrainingDiverged(f"the selected weights hold NaN or inf ({', '.join(bad[:3])}); exported nothing. "
                               "Lower --learning_rate or check the data")
