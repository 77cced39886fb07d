"""Training: `train(TrainConfig(...))` and its parts, one concept per
module, in the order of a run:

- `config`: `TrainConfig` and the flag <-> field mapping (no TensorFlow).
- `preflight`: checks before the first step.
- `runtime`: op threads, logical CPUs, the distribution strategy.
- `collective`: the chief's decisions shared with every worker.
- `run`: one run built from its config and dataset (network, optimizer,
  checkpoints, validation data), `state`: the typed run state.
- `trainer` (the loss model) with `losses` (models' own loss terms) and
  `balancing` (task weights and their gradient assembly).
- `inputs`: the training batches; `step` and `step_loop`: one step and many.
- `loop`: the epochs, with the epoch actions `embedding_reset`,
  `evaluation`, `selection`, `divergence`, `tensorboard`, `task_stopping`.
- `results`: metrics.json and diagnostics.json; `job`: the entry.

Names are imported on first use, so `mtlrec.training.config` is readable
without TensorFlow (mtlrec-train's help and flag defaults).
"""

from __future__ import annotations

import importlib

_NAMES = {
    "TrainConfig": "config", "EMBEDDING_OPTIMIZERS": "config", "config_from_flag_values": "config",
    "config_to_flags": "config",
    "train": "job",
    "make_strategy": "runtime", "split_cpu": "runtime", "set_op_threads": "runtime", "op_threads": "runtime",
    "host_cores": "runtime", "AUTO_SINGLE_THREAD_CORES": "runtime",
    "agree": "collective", "share_from_chief": "collective",
    "MultiTaskTrainer": "trainer",
    "make_train_step": "step",
    "distributed_train_data": "inputs", "dropped_features": "inputs",
    "Predictor": "evaluation", "predict_split": "evaluation", "evaluate": "evaluation", "metrics_of": "evaluation",
    "TrainingDiverged": "divergence", "diverged_message": "divergence", "non_finite_weights": "divergence",
    "RunState": "state", "peak_rss_mb": "state",
    "Run": "run",
    "fit": "loop", "progress_verbosity": "loop",
}

__all__ = sorted(_NAMES)


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(importlib.import_module(f"{__name__}.{_NAMES[name]}"), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_NAMES))
