"""Compare models on generated data: mean test metrics over seeds.

    python -m benchmarks.compare --models=ple,ple_ame,ple_residual,aple,aple_lowrank --seeds=0,1,2

Every model trains with the same settings (experiments/base.flags: batch
2048, lr 0.005, embedding dim 16, dropout 0.1, embedding L2 1e-5, up to 4
epochs, best epoch by mean validation AUC, patience 1) on one generated
dataset (`--rows`, data seed 0); seeds change initialisation and shuffling.
Prints one JSON line per run and a markdown table of means (and standard
deviations) of test AUC and calibration per task.
"""

from __future__ import annotations

import json
import os
import tempfile

import numpy as np
from absl import app, flags

_MODELS = flags.DEFINE_list("models", ["mmoe", "ple"], "Models to compare.")
_SEEDS = flags.DEFINE_list("seeds", ["0", "1", "2"], "Seeds.")
_ROWS = flags.DEFINE_integer("rows", 200_000, "Generated rows.")
_TASKS = flags.DEFINE_list("tasks", ["click", "like", "share"], "Tasks.")
_EPOCHS = flags.DEFINE_integer("epochs", 4, "Max epochs.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where data and runs go.")
_EXTRA = flags.DEFINE_list("model_overrides", [], "model:field=value,... ModelConfig overrides per model.")


def _model_config(name, tasks):
    from mtlrec.config import ModelConfig

    base = dict(tasks=tasks, embedding_dim=16, embedding_l2=1e-5, dropout=0.1, expert_units=(64,), tower_units=(32,),
                num_experts=4, num_task_experts=1, num_shared_experts=2, num_levels=2,
                ame_task_dims=(16, 32), ame_shared_dim=16, ame_rank=4)
    for item in _EXTRA.value:
        model, _, kv = item.partition(":")
        if model == name:
            k, _, v = kv.partition("=")
            base[k] = type(base[k])(json.loads(v)) if isinstance(base.get(k), (int, float)) else tuple(json.loads(v))
    return ModelConfig(**base)


def main(argv):
    del argv
    from mtlrec.config import parse_tasks, tenrec_schema
    from mtlrec.training import TrainConfig, train
    from pipelines.prepare import PrepareConfig, prepare

    work = _WORKDIR.value or tempfile.mkdtemp(prefix="mtlrec-compare-")
    data = os.path.join(work, f"synthetic-{_ROWS.value}")
    if not os.path.exists(os.path.join(data, "manifest.json")):
        prepare(PrepareConfig(output=data, schema=tenrec_schema(), synthetic_rows=_ROWS.value, seed=0, overwrite=True))
    tasks = parse_tasks(_TASKS.value)
    names = tuple(t.name for t in tasks)
    results: dict[str, list[dict]] = {}
    for name in _MODELS.value:
        for seed in map(int, _SEEDS.value):
            model_dir = os.path.join(work, "runs", f"{name}-s{seed}")
            cfg = TrainConfig(model=name, model_dir=model_dir, data=data, tasks=tasks, model_config=_model_config(name, names),
                              epochs=_EPOCHS.value, batch_size=2048, learning_rate=0.005, seed=seed, patience=1,
                              verbose=0, tensorboard=False)
            if os.path.exists(os.path.join(model_dir, "metrics.json")):
                with open(os.path.join(model_dir, "metrics.json")) as f:
                    m = json.load(f)
            else:
                m = train(cfg)
            row = {"model": name, "seed": seed, "best_epoch": m["best_epoch"], "params": m["params"],
                   "examples_per_sec": round(m["train_examples_per_sec"] or 0)}
            for t in names:
                row[f"{t}_auc"] = m["test"][t]["auc"]
                row[f"{t}_calibration"] = m["test"][t]["calibration"]
            if "p_up" in m["test"]:
                row["p_up_auc_any"] = m["test"]["p_up"]["auc_any_interaction"]
            print(json.dumps(row), flush=True)
            results.setdefault(name, []).append(row)
    header = "| model | " + " | ".join(f"{t} AUC" for t in names) + " | " + " | ".join(f"{t} calib." for t in names) + " | params | best epochs |"
    print(header)
    print("|" + "---|" * (header.count("|") - 1))
    for name, rows in results.items():
        aucs = [f"{np.mean([r[f'{t}_auc'] for r in rows]):.4f} ± {np.std([r[f'{t}_auc'] for r in rows]):.4f}" for t in names]
        cal = [f"{np.mean([r[f'{t}_calibration'] for r in rows]):.3f}" for t in names]
        extra = ""
        if "p_up_auc_any" in rows[0]:
            extra = f" (P(UP) vs any interaction: {np.mean([r['p_up_auc_any'] for r in rows]):.4f})"
        print(f"| {name}{extra} | " + " | ".join(aucs) + " | " + " | ".join(cal) +
              f" | {rows[0]['params']:,} | {','.join(str(r['best_epoch']) for r in rows)} |")


if __name__ == "__main__":
    app.run(main)
