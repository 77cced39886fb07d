"""Training throughput of each model, and step time against vocabulary size.

    python -m benchmarks.model_bench --models=shared_bottom,omoe,mmoe,cgc,ple,esmm

Setting of the issue: batch 4096, embedding dim 16, click+like+share, data
generated with 200k users and 400k items. Each figure is the median of
`--repeats` timed runs of `--steps` training steps after a warm-up. The
vocabulary check trains MMoE with the item table (shared by `hist`) sized
10k and 2M rows, with LazyAdam (ours) and Keras' Adam.
"""

from __future__ import annotations

import dataclasses
import json
import os
import statistics
import tempfile
import time

import keras
from absl import app, flags

_MODELS = flags.DEFINE_list("models", ["shared_bottom", "omoe", "mmoe", "cgc", "ple", "esmm"], "Models to time.")
_ROWS = flags.DEFINE_integer("rows", 1_000_000, "Generated rows.")
_STEPS = flags.DEFINE_integer("steps", 40, "Timed steps per run.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Timed runs; the median is reported.")
_BATCH = flags.DEFINE_integer("batch_size", 4096, "Batch size.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the dataset goes (default: a temp dir).")
_VOCAB = flags.DEFINE_bool("vocab", True, "Run the 10k vs 2M vocabulary check.")
_LOOP = flags.DEFINE_enum("loop", "mtlrec", ["mtlrec", "fit"],
                          "mtlrec: the step mtlrec-train runs (mtlrec.training.make_train_step); fit: Keras' fit.")

TASKS = ("click", "like", "share")


def _dataset(work: str, rows: int) -> str:
    from mtlrec.config import tenrec_schema
    from pipelines import synthetic
    from pipelines.prepare import PrepareConfig, prepare

    out = os.path.join(work, f"bench-{rows}")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        csv = os.path.join(work, f"bench-{rows}.csv")
        if not os.path.exists(csv):
            synthetic.write_csv(csv, rows, seed=0, n_users=200_000, n_items=400_000)
        prepare(PrepareConfig(output=out, schema=tenrec_schema(), inputs=(csv,), overwrite=True))
    return out


def _time_model(name, manifest, optimizer="lazy_adam") -> list[float]:
    """Seconds per step of each timed run."""
    from mtlrec.config import ModelConfig, TaskSpec
    from mtlrec.data import make_dataset
    from mtlrec.models import build_model
    from mtlrec.optimizers import LazyAdam
    from mtlrec.training import MultiTaskTrainer

    tasks = tuple(TaskSpec(t) for t in TASKS)
    keras.utils.set_random_seed(0)
    net = build_model(name, manifest, ModelConfig(tasks=TASKS, embedding_dim=16))
    trainer = MultiTaskTrainer(net, list(TASKS))
    trainer.compile(optimizer=LazyAdam(1e-3) if optimizer == "lazy_adam" else keras.optimizers.Adam(1e-3))
    ds = make_dataset(manifest, "train", _BATCH.value, tasks, repeat=True, drop_remainder=True)
    if _LOOP.value == "fit":
        timer = _EpochTimer()
        # Epoch 0 is the warm-up (tracing, variable creation, pipeline start).
        trainer.fit(ds, steps_per_epoch=_STEPS.value, epochs=_REPEATS.value + 1, verbose=0, callbacks=[timer])
        return [t / _STEPS.value for t in timer.seconds[1:]]
    import tensorflow as tf

    from mtlrec.training import make_train_step

    strategy = tf.distribute.get_strategy()
    features = next(iter(ds))[0]
    trainer(features)
    step = make_train_step(trainer, strategy)
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    seconds = []
    for _ in range(_REPEATS.value + 1):  # the first is the warm-up
        start = time.perf_counter()
        for _step in range(_STEPS.value):
            loss, _ = step(iterator)
            float(loss)  # the host reads each step's loss, as mtlrec-train does
        seconds.append(time.perf_counter() - start)
    return [t / _STEPS.value for t in seconds[1:]]


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def main(argv):
    del argv
    from mtlrec.data import load_manifest

    work = _WORKDIR.value or tempfile.mkdtemp(prefix="mtlrec-bench-")
    os.makedirs(work, exist_ok=True)
    manifest = load_manifest(_dataset(work, _ROWS.value))
    print(json.dumps({"vocab_size": manifest.vocab_size, "train_rows": manifest.rows("train")}), flush=True)
    for name in _MODELS.value:
        runs = _time_model(name, manifest)
        med = statistics.median(runs)
        print(json.dumps({"model": name, "examples_per_sec_median": round(_BATCH.value / med),
                          "ms_per_step": [round(r * 1000, 1) for r in runs]}), flush=True)
    if not _VOCAB.value:
        return
    for optimizer in ("lazy_adam", "keras_adam"):
        medians = {}
        for rows in (10_000, 2_000_000):
            sizes = {**manifest.vocab_size, "item_id": rows, "hist": rows}
            runs = _time_model("mmoe", dataclasses.replace(manifest, vocab_size=sizes), optimizer)
            medians[rows] = statistics.median(runs)
            print(json.dumps({"optimizer": optimizer, "item_vocab": rows, "ms_per_step": [round(r * 1000, 1) for r in runs]}), flush=True)
        print(json.dumps({"optimizer": optimizer, "ratio_2M_over_10k": round(medians[2_000_000] / medians[10_000], 3)}), flush=True)


if __name__ == "__main__":
    app.run(main)
