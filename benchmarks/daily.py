"""Day by day: warm start on each day's log against retraining on all days so far.

    python -m benchmarks.daily --out=bench/daily --days=5 --rows_per_day=200000 --seeds=0,1,2

One time-ordered generated log (`synthetic.generate(ordered=True)`: users
and items keep arriving) cut into `days + 1` consecutive days. Each day d:

- `warm`: `mtlrec-prepare --input=day<d>.csv --vocab_from=<day d-1's dataset>`,
  then `mtlrec-train --warm_start=<day d-1's run>` on that day alone (day 1
  from scratch): the commands a team runs every day.
- `carry`: the same with `--warm_start_optimizer=carry` (Adam's moments and
  step count continue from the day before instead of starting afresh).
- `full`: `mtlrec-prepare` of days 1..d together, `mtlrec-train` from scratch.

Both train the MMoE flagfile (`experiments/mmoe.flags`, tasks click,like)
for `--epochs` passes over their data and are scored on day d+1, the
traffic after their data (every row of its dataset). Wall time per day is
the train command, process start included (`train s`), and the training steps alone
(metrics.json `train_seconds`, `steps s`); prepare seconds are in the JSON. Prints a
markdown table and writes `OUT/daily.json`. Not part of CI.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

KINDS = ("warm", "carry", "full")


def _cli(module: str, *args: str) -> float:
    t0 = time.monotonic()
    res = subprocess.run([sys.executable, "-m", module, *args], capture_output=True, text=True,
                         env=dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3"))
    if res.returncode:
        raise SystemExit(f"{module} {' '.join(args)} failed:\n{res.stderr[-3000:]}")
    return time.monotonic() - t0


def write_days(out: str, days: int, rows_per_day: int, seed: int = 0, users: int | None = None,
               items: int | None = None) -> list[str]:
    """day1.csv .. day<days>.csv of one time-ordered generated log."""
    import pandas as pd

    from mtlrec.pipelines import synthetic

    os.makedirs(out, exist_ok=True)
    paths = [os.path.join(out, f"day{d + 1}.csv") for d in range(days)]
    if all(os.path.exists(p) for p in paths):
        return paths
    log = pd.concat(synthetic.generate(days * rows_per_day, seed=seed, n_users=users, n_items=items, ordered=True),
                    ignore_index=True)
    for d, path in enumerate(paths):
        log.iloc[d * rows_per_day:(d + 1) * rows_per_day].to_csv(f"{path}.tmp", index=False)
        os.replace(f"{path}.tmp", path)
    return paths


def next_day_auc(model_dir: str, data: str, tasks: list[str]) -> dict[str, float]:
    """AUC per task of `model_dir`'s model on every row of dataset `data`."""
    from mtlrec.config import parse_tasks
    from mtlrec.data import load_manifest, make_dataset
    from mtlrec.export import load_network
    from mtlrec.metrics import auc
    from mtlrec.training.evaluation import predict_split

    specs = parse_tasks(tasks)
    network = load_network(os.path.join(model_dir, "model.keras"))
    manifest = load_manifest(data)
    parts = [predict_split(network, make_dataset(manifest, s, 16384, specs, shuffle=False), specs, None)
             for s in ("train", "valid", "test") if manifest.rows(s)]
    return {t.name: float(auc(np.concatenate([p[f"y/{t.name}"] for p in parts]),
                              np.concatenate([p[f"p/{t.name}"] for p in parts]))) for t in specs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="bench/daily")
    parser.add_argument("--days", type=int, default=5)
    parser.add_argument("--rows_per_day", type=int, default=200_000)
    parser.add_argument("--users", type=int, default=None)
    parser.add_argument("--items", type=int, default=None)
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--tasks", default="click,like")
    args = parser.parse_args()
    tasks = args.tasks.split(",")
    csvs = write_days(os.path.join(args.out, "csv"), args.days + 1, args.rows_per_day, 0, args.users, args.items)
    data = os.path.join(args.out, "data")
    prep: dict[str, float] = {}
    for d in range(1, args.days + 2):  # the days, each continuing the day before
        out = os.path.join(data, f"day{d}")
        if not os.path.exists(os.path.join(out, "manifest.json")):
            prep[f"day{d}"] = _cli("mtlrec.cli.prepare", f"--input={csvs[d - 1]}", f"--output={out}",
                                   "--order_by=input",
                                   *([f"--vocab_from={os.path.join(data, f'day{d - 1}')}"] if d > 1 else []))
        if 1 < d <= args.days:
            out = os.path.join(data, f"upto{d}")
            if not os.path.exists(os.path.join(out, "manifest.json")):
                prep[f"upto{d}"] = _cli("mtlrec.cli.prepare", f"--input={','.join(csvs[:d])}", f"--output={out}",
                                        "--order_by=input")
    train = ["--flagfile=experiments/mmoe.flags", f"--tasks={args.tasks}", f"--epochs={args.epochs}", "--noexport",
             "--notensorboard", "--verbose=0"]
    results = []
    for seed in (int(s) for s in args.seeds.split(",")):
        runs = os.path.join(args.out, f"runs-seed{seed}")
        for d in range(1, args.days + 1):
            row = {"seed": seed, "day": d}
            for kind in KINDS:
                if kind != "warm" and d == 1:  # one day: the same run
                    row[kind] = row["warm"]
                    continue
                model_dir = os.path.join(runs, f"{kind}-day{d}")
                if kind in ("warm", "carry"):
                    dataset = os.path.join(data, f"day{d}")
                    parent = os.path.join(runs, f"{kind if d > 2 else 'warm'}-day{d - 1}")
                    extra = [f"--warm_start={parent}", f"--warm_start_optimizer={'carry' if kind == 'carry' else 'reset'}"
                             ] if d > 1 else []
                    prepare_s = prep.get(f"day{d}")
                else:
                    dataset = os.path.join(data, f"day{d}" if d == 1 else f"upto{d}")
                    extra, prepare_s = [], prep.get(f"day{d}" if d == 1 else f"upto{d}")
                seconds = _cli("mtlrec.cli.train", *train, f"--seed={seed}", f"--data={dataset}",
                               f"--model_dir={model_dir}", "--overwrite", *extra)
                with open(os.path.join(model_dir, "metrics.json")) as f:
                    steps_s = json.load(f)["train_seconds"]
                row[kind] = {"next_day_auc": next_day_auc(model_dir, os.path.join(data, f"day{d + 1}"), tasks),
                             "train_seconds": round(seconds, 1), "step_seconds": round(steps_s, 1),
                             "prepare_seconds": prepare_s,
                             "day_seconds": None if prepare_s is None else round(prepare_s + seconds, 1)}
            results.append(row)
            print(json.dumps(row), flush=True)
    with open(os.path.join(args.out, "daily.json"), "w") as f:
        json.dump({"args": vars(args), "results": results}, f, indent=1)
    print(table(results, tasks))


def table(results: list[dict], tasks: list[str]) -> str:
    """Means ± std over seeds of the next-day AUC, medians of the seconds."""
    lines = [f"| day | run | {' | '.join(tasks)} | day s | train s | steps s |",
             "|---|---|" + "---|" * (len(tasks) + 3)]
    for d in sorted({r["day"] for r in results}):
        rows = [r for r in results if r["day"] == d]
        for kind in (KINDS if d > 1 else ("warm",)):
            aucs = [[r[kind]["next_day_auc"][t] for r in rows] for t in tasks]
            secs = [np.median([r[kind][k] or np.nan for r in rows]) for k in ("day_seconds", "train_seconds",
                                                                               "step_seconds")]
            lines.append(f"| {d} | {kind if d > 1 else 'day 1 (one run)'} | "
                         + " | ".join(f"{np.mean(a):.4f} ± {np.std(a):.4f}" for a in aucs)
                         + " | " + " | ".join(f"{x:.1f}" for x in secs) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    main()
