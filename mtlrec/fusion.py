"""Score fusion: the weights of `score = prod_k p_k ** w_k`, searched on validation.

The served ranking score combines the task probabilities of one run (or of
several runs: single-task models fused, or a multi-task model with another)
with weights chosen against an objective the user names:

- `--objective=LABEL`: the AUC of the fused score against one label column
  of the data (a task's label, or a column no run predicts, such as a
  downstream conversion);
- `--objective=LABEL=c,LABEL=c,...`: `sum_l c_l AUC(y_l, score)`.

AUC does not change when every weight is multiplied by the same number, so
the weights are searched on the simplex (`sum_k w_k = 1`, each a multiple of
`--grid_step`): every direction is tried once, zeros included, and the
score stays between the smallest and the largest task probability.

`mtlrec-fuse` writes `OUT/fusion.json` (weights, objective, value against
equal weights and each task alone), `OUT/search.csv` (every grid point) and
a new SavedModel version whose `score` uses the weights (several runs: one
SavedModel serving every run's outputs behind one signature).
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from mtlrec import io as mio
from mtlrec.metrics import auc

FILE = "fusion.json"
TABLE = "search.csv"


@dataclasses.dataclass(frozen=True)
class Objective:
    """`sum_l c_l AUC(y_l, score)` over label columns `l`."""

    weights: dict[str, float]

    @classmethod
    def parse(cls, text: str) -> Objective:
        items = [s.strip() for s in text.split(",") if s.strip()]
        if not items:
            raise ValueError("--objective: empty; expected LABEL or LABEL=c,LABEL=c (label columns of the data)")
        out = {}
        for item in items:
            name, sep, value = item.partition("=")
            try:
                c = float(value) if sep else 1.0
            except ValueError:
                c = float("nan")
            if not name or not math.isfinite(c) or c < 0 or name in out:
                raise ValueError(f"--objective={text}: {item!r} is not LABEL or LABEL=c with a number c >= 0 "
                                 "(each label once)")
            out[name] = c
        if not any(out.values()):
            raise ValueError(f"--objective={text}: every coefficient is 0")
        return cls(out)

    def value(self, labels: dict[str, np.ndarray], score: np.ndarray, rows: dict[str, np.ndarray]) -> tuple[float, dict]:
        """The objective and the AUC per label; `rows[l]` selects the rows a label counts on."""
        aucs = {name: auc(labels[name][rows[name]], score[rows[name]]) for name in self.weights}
        return float(sum(c * aucs[name] for name, c in self.weights.items())), aucs


def simplex_grid(k: int, step: float) -> np.ndarray:
    """Every weight vector of `k` non-negative multiples of `step` summing to 1."""
    n = round(1 / step)
    if n < 1 or not math.isclose(n * step, 1.0, rel_tol=1e-9):
        raise ValueError(f"--grid_step={step}: expected 1/n for a whole n (0.25, 0.1, 0.05, ...)")
    points = [c for c in itertools.product(range(n + 1), repeat=k - 1) if sum(c) <= n]
    if len(points) > 200_000:
        raise ValueError(f"--grid_step={step} with {k} tasks gives {len(points):,} grid points; use a larger step")
    return np.array([[*c, n - sum(c)] for c in points], dtype=np.float64) / n


def search(probs: dict[str, np.ndarray], labels: dict[str, np.ndarray], objective: Objective, step: float = 0.05,
           rows: dict[str, np.ndarray] | None = None) -> tuple[np.ndarray, list[dict[str, Any]]]:
    """The best weights (in `probs` order) and the table of every grid point
    (ties: the first point in grid order)."""
    tasks = list(probs)
    missing = [name for name in objective.weights if name not in labels]
    if missing:
        raise ValueError(f"--objective names {missing}, which the validation data has no label for; "
                         f"labels: {sorted(labels)}")
    rows = rows or {}
    rows = {name: rows.get(name, np.ones(len(labels[name]), bool)) for name in objective.weights}
    log_p = np.log(np.clip(np.stack([probs[t] for t in tasks], axis=1).astype(np.float64), 1e-7, 1.0))
    table, best, best_value = [], None, -math.inf
    for w in simplex_grid(len(tasks), step):
        value, aucs = objective.value(labels, log_p @ w, rows)  # log of the score: same ranking
        table.append({**{f"w_{t}": round(float(x), 10) for t, x in zip(tasks, w)}, "objective": value,
                      **{f"auc_{name}": a for name, a in aucs.items()}})
        if value > best_value + 1e-12:
            best, best_value = w, value
    return best, table


@dataclasses.dataclass
class Run:
    model_dir: str
    tasks: list[str]
    schema: Any
    data: str | None
    network: Any = None


def load_runs(model_dirs: Sequence[str]) -> list[Run]:
    """The finished runs and their models; a task predicted by two runs is an error."""

    import mtlrec.models  # noqa: F401  (registers the layers for loading)
    from mtlrec.config import Schema
    from mtlrec.export import EXPORT_INFO, load_network
    from mtlrec.rundir import read_status

    runs, owner = [], {}
    for d in model_dirs:
        for name in (EXPORT_INFO, "model.keras", "metrics.json"):
            if not mio.exists(mio.join(d, name)):
                raise FileNotFoundError(f"{mio.join(d, name)} not found: --model_dir must hold a finished "
                                        "mtlrec-train run")
        status = read_status(d)
        if status not in (None, "finished"):
            raise ValueError(f"--model_dir={d}: the run is not finished (status '{status}')")
        info = mio.read_json(mio.join(d, EXPORT_INFO))
        data = mio.read_json(mio.join(d, "metrics.json")).get("data")
        for t in info["tasks"]:
            if t in owner:
                raise ValueError(f"task {t!r} is predicted by --model_dir={owner[t]} and --model_dir={d}; "
                                 "the fused score needs one prediction per task")
            owner[t] = d
        runs.append(Run(d, list(info["tasks"]), Schema.from_json(info["schema"]), data,
                        load_network(mio.join(d, "model.keras"))))
    return runs


def validation_predictions(runs: Sequence[Run], data: str, label_columns: Sequence[str], batch_size: int = 16384):
    """Every run's task probabilities on `data`'s validation split, and the
    label columns (each with the rows it counts on: its task's mask)."""
    import tensorflow as tf

    from mtlrec.config import TaskSpec
    from mtlrec.data.dataset import make_dataset
    from mtlrec.data.manifest import load_manifest

    manifest = load_manifest(data)
    known = {f.name for f in manifest.schema.features}
    for run in runs:
        needed = {f.name for f in run.schema.features}
        if needed - known:
            raise ValueError(f"--data={data}: lacks the features {sorted(needed - known)} that "
                             f"--model_dir={run.model_dir} reads")
    columns = [label.name for label in manifest.schema.labels]
    bad = [c for c in label_columns if c not in columns]
    if bad:
        raise ValueError(f"--objective names {bad}, not label columns of {data}; its labels: {columns}")
    specs = tuple(TaskSpec(c) for c in columns)
    ds = make_dataset(manifest, "valid", batch_size, specs, shuffle=False)
    steps = [tf.function(lambda x, net=run.network: net(x, training=False)) for run in runs]
    probs: dict[str, list] = {}
    labels: dict[str, list] = {c: [] for c in label_columns}
    for features, y, _ in ds:
        for run, step in zip(runs, steps):
            out = step({k: v for k, v in features.items() if k in {f.name for f in run.schema.features}})
            for t in run.tasks:
                probs.setdefault(t, []).append(np.asarray(out[t]).reshape(-1))
        for c in label_columns:
            labels[c].append(np.asarray(y[c]).reshape(-1))
    return {t: np.concatenate(v) for t, v in probs.items()}, {c: np.concatenate(v) for c, v in labels.items()}


def fuse(model_dirs: Sequence[str], objective: str, out: str | None = None, grid_step: float = 0.05,
         data: str | None = None, export_dir: str | None = None, version: int | None = None,
         export: bool = True) -> dict[str, Any]:
    """Searches the fusion weights and writes fusion.json, search.csv and a
    new export version; returns fusion.json's content."""
    import pandas as pd

    from mtlrec.export import export_runs, warmup_rows

    goal = Objective.parse(objective)
    runs = load_runs(model_dirs)
    sources = {r.data for r in runs}
    if data is None:
        if len(sources) != 1 or None in sources:
            raise ValueError(f"the runs were trained on different data ({sorted(map(str, sources))}): "
                             "pass --data to choose the validation split to search on")
        data = sources.pop()
    out = out or mio.join(model_dirs[0], "fusion")
    probs, labels = validation_predictions(runs, data, list(goal.weights))
    best, table = search(probs, labels, goal, grid_step)
    tasks = list(probs)
    weights = {t: float(w) for t, w in zip(tasks, best)}

    def value_of(w):
        return table[_row_of(table, tasks, w)]["objective"]

    result = {
        "objective": objective,
        "weights": weights,
        "value": value_of(best),
        "equal_weights_value": value_of(np.full(len(tasks), 1 / len(tasks))) if _on_grid(len(tasks), grid_step)
        else None,
        "alone": {t: value_of(np.eye(len(tasks))[i]) for i, t in enumerate(tasks)},
        "grid_step": grid_step,
        "grid_points": len(table),
        "validation_rows": int(len(next(iter(labels.values())))),
        "data": data,
        "runs": [{"model_dir": r.model_dir, "tasks": r.tasks} for r in runs],
    }
    mio.makedirs(out)
    mio.write_atomic(mio.join(out, TABLE), pd.DataFrame(table).to_csv(index=False).encode())
    if export:
        base = export_dir or (mio.join(model_dirs[0], "export") if len(runs) == 1 else mio.join(out, "export"))
        result["export"] = export_runs([(r.network, r.schema, r.tasks) for r in runs], base, weights, version,
                                       warmup_rows(model_dirs[0], data))
    mio.write_atomic(mio.join(out, FILE), json.dumps(result, indent=1).encode())
    return result


def _on_grid(k: int, step: float) -> bool:
    return math.isclose(round(1 / step) / k, round(round(1 / step) / k))


def _row_of(table: list[dict], tasks: list[str], w: np.ndarray) -> int:
    for i, row in enumerate(table):
        if all(abs(row[f"w_{t}"] - x) < 1e-9 for t, x in zip(tasks, w)):
            return i
    raise KeyError(w)


