"""Cold-start rows of finished runs: the test rows whose user or item never
occurs in the training split, scored by each run's model.keras.

    python -m benchmarks.cold_start bench/multi_epoch          # every run below it
    python -m benchmarks.cold_start runs/mmoe                  # one run

Writes RUN/cold_start.json per run (skipped when it exists): for the cold
rows, the warm rows and each kind of cold row (user unseen, item unseen),
per task: rows, AUC, logloss, calibration (mean prediction / positive
rate) and the mean prediction. `benchmarks.multi_epoch_table` reads them.
"""

from __future__ import annotations

import glob
import json
import os
import sys

import numpy as np

FILE = "cold_start.json"


def _train_ids(data: str) -> dict[str, np.ndarray]:
    from mtlrec.data.dataset import split_ids

    return split_ids(data, "train", ["user_id", "item_id"])


def cold_start(run_dir: str, seen: dict[str, np.ndarray]) -> dict:
    """The cold-start report of one finished run (see the module doc)."""
    import keras

    from mtlrec.config import TaskSpec
    from mtlrec.data import make_dataset
    from mtlrec.metrics import task_metrics
    from mtlrec.training import predict_split

    metrics = json.load(open(os.path.join(run_dir, "metrics.json")))
    tasks = [TaskSpec(**t) for t in metrics["tasks"]]
    network = keras.saving.load_model(os.path.join(run_dir, "model.keras"), compile=False)
    test = make_dataset(metrics["data"], "test", 16384, tasks, shuffle=False)
    cols = predict_split(network, test, tasks, "user_id")  # keeps the user ids; the item ids in a second pass
    items = np.concatenate([x["item_id"].numpy() for x, _, _ in test])
    cold_user, cold_item = ~np.isin(cols["user"], seen["user_id"]), ~np.isin(items, seen["item_id"])
    groups = {"cold": cold_user | cold_item, "warm": ~(cold_user | cold_item), "cold_user": cold_user,
              "cold_item": cold_item}
    out = {}
    for group, rows in groups.items():
        out[group] = {"rows": int(rows.sum())}
        for t in tasks:
            y, p, w = (cols[f"{k}/{t.name}"][rows] for k in "ypw")
            m = task_metrics(y, p, w)
            out[group][t.name] = {**{k: m[k] for k in ("auc", "logloss", "calibration")},
                                  "mean_prediction": float(p[w > 0].mean()) if (w > 0).any() else float("nan")}
    return out


def main(paths: list[str]) -> None:
    runs = []
    for path in paths:
        found = glob.glob(os.path.join(path, "**", "metrics.json"), recursive=True)
        runs += sorted(os.path.dirname(f) for f in found if os.path.exists(os.path.join(os.path.dirname(f),
                                                                                        "model.keras")))
    seen_by_data: dict[str, dict[str, np.ndarray]] = {}
    for run in runs:
        target = os.path.join(run, FILE)
        if os.path.exists(target):
            continue
        data = json.load(open(os.path.join(run, "metrics.json")))["data"]
        if data not in seen_by_data:
            seen_by_data[data] = _train_ids(data)
        report = cold_start(run, seen_by_data[data])
        tmp = f"{target}.tmp-{os.getpid()}"
        with open(tmp, "w") as f:
            json.dump(report, f, indent=1)
        os.replace(tmp, target)
        cold = report["cold"]
        print(f"{run}: {cold['rows']} cold rows; " + ", ".join(
            f"{t} auc {m['auc']:.4f} calibration {m['calibration']:.3f}" for t, m in cold.items() if t != "rows"),
            flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
