"""One change timed in one process: both sides built side by side, calls alternated.

    python -m benchmarks.ab_in_process --change=optimizer --base=507db09 --models=ple,aple,stem,aitm
    python -m benchmarks.ab_in_process --change=optimizer --base=507db09 --models=ple \\
        --set=num_task_experts=1,num_shared_experts=1,num_levels=2,expert_units=256,tower_units=64,dropout=0,tasks=click:like,batch_size=4096,learning_rate=0.001,embedding_l2=0.00001

(model_bench's flags: --models, --rows, --workdir, --sizes, --set;
`--sizes=flagfile` by default.) For each model, a "base" and a "new"
trainer are built in this process, each with its own input iterator and
train step (mtlrec-train's: op threads, `--steps_per_execution` steps per
call). Then `--calls` calls of each alternate, the side that goes first
swapping every round, and the figure is the median of the per-round
ratios base seconds / new seconds: a drift of the shared host hits both
sides of a round alike, which alternating whole processes
(`benchmarks.compare_commits`) does not guarantee. Also printed: each
side's tracing and first call.

`--change=optimizer`: base is `mtlrec/optimizers.py` of commit `--base`
(LazyAdam before the flat dense group), new is this checkout's.
"""

from __future__ import annotations

import importlib.util
import json
import os
import statistics
import subprocess
import tempfile
import time

from absl import app, flags

from benchmarks import model_bench  # its flags: --models, --rows, --workdir, --sizes, --set

flags.FLAGS.set_default("sizes", "flagfile")
flags.FLAGS.set_default("workdir", "bench/model_bench")
flags.FLAGS.set_default("models", ["ple", "aple", "stem", "aitm"])
_CHANGE = flags.DEFINE_enum("change", "optimizer", ["optimizer"], "What the two sides differ in.")
_BASE = flags.DEFINE_string("base", None, "With --change=optimizer: the commit whose LazyAdam is the base side.")
_CALLS = flags.DEFINE_integer("calls", 40, "Alternated rounds (one call of each side per round).")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _base_optimizers(commit: str):
    """`mtlrec/optimizers.py` of `commit`, imported as a module of its own."""
    source = subprocess.run(["git", "-C", _REPO, "show", f"{commit}:mtlrec/optimizers.py"], check=True,
                            capture_output=True, text=True).stdout
    path = os.path.join(tempfile.mkdtemp(prefix="mtlrec-ab-"), "base_optimizers.py")
    with open(path, "w") as f:
        f.write(source)
    spec = importlib.util.spec_from_file_location("base_optimizers", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def _side(name, model, manifest, base_module):
    import tensorflow as tf

    from mtlrec.data import make_dataset

    trainer, batch, tasks = model_bench.build_trainer(model, manifest)
    if _CHANGE.value == "optimizer" and name == "base":
        lr = float(trainer.optimizer.learning_rate.numpy())
        trainer.compile(optimizer=base_module.LazyAdam(lr))
    ds = make_dataset(manifest, "train", batch, tasks, shuffle=True, repeat=True, drop_remainder=True)
    strategy = tf.distribute.get_strategy()
    trainer(next(iter(ds))[0])
    step, per_call = model_bench.library_step(trainer, strategy)
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    t = time.perf_counter()
    step(iterator, per_call)[0].numpy()
    first = time.perf_counter() - t
    return step, iterator, per_call, first


def main(argv):
    del argv
    if _CHANGE.value == "optimizer" and not _BASE.value:
        raise app.UsageError("--change=optimizer needs --base=COMMIT")
    model_bench.library_threads()
    from mtlrec.data import load_manifest

    manifest = load_manifest(model_bench._dataset(model_bench._WORKDIR.value, model_bench._ROWS.value))
    base_module = _base_optimizers(_BASE.value) if _CHANGE.value == "optimizer" else None
    for model in model_bench._MODELS.value:
        sides = {name: _side(name, model, manifest, base_module) for name in ("base", "new")}
        seconds = {name: [] for name in sides}
        for r in range(_CALLS.value):
            for name in (("base", "new") if r % 2 == 0 else ("new", "base")):
                step, iterator, per_call, _ = sides[name]
                t = time.perf_counter()
                step(iterator, per_call)[0].numpy()
                seconds[name].append(time.perf_counter() - t)
        per_call = sides["new"][2]
        print(json.dumps({
            "model": model, "change": _CHANGE.value,
            "ms_per_step": {k: round(statistics.median(v) / per_call * 1000, 2) for k, v in seconds.items()},
            "first_call_s": {k: round(v[3], 3) for k, v in sides.items()},
            "base_over_new": round(statistics.median(b / n for b, n in zip(seconds["base"], seconds["new"])), 3),
        }), flush=True)


if __name__ == "__main__":
    app.run(main)
