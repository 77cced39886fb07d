"""The results of a finished run: the selected weights scored on the test
split, `MODEL_DIR/metrics.json` and `MODEL_DIR/diagnostics.json`
(reliability per task, the gates' mean weights)."""

from __future__ import annotations

import dataclasses
import json
import time
from typing import Any

import numpy as np

from mtlrec import diagnostics, provenance
from mtlrec import io as mio
from mtlrec.data.dataset import oov_features
from mtlrec.training import precision
from mtlrec.training.evaluation import metrics_of
from mtlrec.training.run import Run
from mtlrec.training.runtime import op_threads
from mtlrec.training.state import peak_rss_mb


def score_test(run: Run) -> tuple[dict[str, Any], dict[str, Any]]:
    """The test metrics of the network as it is, and its diagnostics.

    The diagnostics hold `test_cold` and `test_warm`: the same metrics on
    the test rows that carry an id (user, item: `oov_features`' default)
    that the train split never holds, and on the others, with their share
    of the rows: on a time-ordered split, the new users and items of the
    later period. metrics.json repeats them."""
    config = run.config
    test_ds = run.test_split()
    id_features = oov_features(run.manifest)
    cols = run.predictor.split(test_ds, config.tasks, run.user_feature, keep=id_features)
    diag = {
        "split": "test",
        "reliability": {t.name: diagnostics.reliability(cols[f"y/{t.name}"], cols[f"p/{t.name}"], cols[f"w/{t.name}"])
                        for t in config.tasks},
        "gates": run.gates.mean_weights(test_ds),
    }
    test = metrics_of(cols, config.tasks)
    if id_features:
        seen = run.seen_ids(id_features)
        cold = np.zeros(len(cols[f"y/{config.tasks[0].name}"]), bool)
        for name in id_features:
            cold |= ~np.isin(cols.pop(f"f/{name}"), seen[name])
        for part, rows in (("test_cold", cold), ("test_warm", ~cold)):
            subset = {k: v[rows] for k, v in cols.items()}
            # (keys no task is named: the tasks' metrics sit beside them)
            diag[part] = {"test_rows": int(rows.sum()), "fraction_of_test_rows": float(rows.mean()),
                          "ids_unseen_in_train": id_features,
                          **(metrics_of(subset, config.tasks) if rows.any() else {})}
    return test, diag


def metrics(run: Run, test: dict[str, Any], started: float, diag: dict[str, Any] | None = None) -> dict[str, Any]:
    """metrics.json's content but `provenance`: the run's settings, test and
    validation figures of the selected epoch, history, speed and memory.
    `started`: when this process's part of the run began."""
    config, state = run.config, run.state
    seconds = state.train_seconds
    return {
        "model": config.model,
        "tasks": [dataclasses.asdict(t) for t in config.tasks],
        "test": test,
        "valid": state.best_valid(),
        "best_epoch": state.best_epoch,
        "epochs_run": state.epoch,
        "stopped_early": bool(state.stopped_early),
        "history": state.history,
        "train_examples_per_sec": state.train_examples / seconds if seconds else None,
        "train_seconds": seconds,
        "replicas": run.strategy.num_replicas_in_sync,
        "op_threads": op_threads(),
        # how the steps computed (the CPU they ran on: provenance.host)
        "mixed_precision": config.mixed_precision,
        "compute_dtypes": precision.compute_dtypes(run.network),
        "jit_compile": config.jit_compile,
        **({"task_stopping": {"tasks": state.tasks, "frozen_tasks": state.frozen_tasks,
                              "best_after_freezing": bool(state.best_after_freezing)}}
           if config.task_patience else {}),
        "params": int(run.network.count_params()),
        # Summed / the largest over the processes of a resumed run (up to its last checkpoint).
        "wall_seconds": state.wall_seconds_before + time.time() - started,
        "peak_rss_mb": max(state.peak_rss_mb, peak_rss_mb()),
        **{part: diag[part] for part in ("test_cold", "test_warm") if diag and part in diag},
        "data": config.data,
        # How the data was split: a hash split draws test rows from the training period, an ordered one
        # tests on the period after it (mtlrec-report prints it beside every figure).
        "split": run.manifest.raw.get("split") or {"kind": "hash", "by": run.manifest.raw.get("split_by") or "row",
                                                   "fractions": run.manifest.raw.get("split_fractions")},
        "config": {**dataclasses.asdict(config), "tasks": [dataclasses.asdict(t) for t in config.tasks]},
    }


def write(model_dir: str, metrics: dict[str, Any], diag: dict[str, Any], started_at: str,
          flags: dict[str, Any] | None) -> None:
    """diagnostics.json, then metrics.json (its presence marks a finished
    run), each written whole or not at all; `provenance` added to `metrics`."""
    metrics["provenance"] = provenance.provenance(started_at, flags)
    mio.write_atomic(mio.join(model_dir, diagnostics.FILE), json.dumps(diag, indent=1).encode())
    mio.write_atomic(mio.join(model_dir, "metrics.json"), json.dumps(metrics, indent=1, default=str).encode())
