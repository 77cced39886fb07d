"""Training throughput of each model, and step time against vocabulary size.

    python -m benchmarks.model_bench --models=shared_bottom,omoe,mmoe,cgc,ple,esmm
    python -m benchmarks.model_bench --sizes=flagfile --models=ple,aple,stem,aitm --novocab

`--sizes=default`: batch 4096, embedding dim 16, click+like+share, the
library's default widths. `--sizes=flagfile`: each model as
`experiments/<model>.flags` builds it (widths, tasks, dropout, batch size,
learning rate). Data generated with 200k users and 400k items. Each figure is the median of
`--repeats` timed runs of `--steps` training steps after a warm-up, with
TensorFlow's op threads as the library's mtlrec-train sets them. The
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
_SIZES = flags.DEFINE_enum("sizes", "default", ["default", "flagfile", "peers"],
                           "default: the library's default widths, --batch_size; flagfile: experiments/<model>.flags; "
                           "peers: the sizes benchmarks/peers/run.sh times against DeepCTR (click+like, batch 4096).")
_VARIANTS = flags.DEFINE_list("variants", ["float32"], "How each model's step computes, each timed in turn: "
                              "float32, mixed_bfloat16 or mixed_float16 (--mixed_precision), each with an optional "
                              "+jit (--jit_compile), e.g. float32,float32+jit,mixed_bfloat16.")
_SET = flags.DEFINE_list("set", [], "With --sizes=flagfile: flag values replacing the flagfile's, e.g. dropout=0 or "
                    "expert_units=256:128 or tasks=click:like.")
_LOOP = flags.DEFINE_enum("loop", "mtlrec", ["mtlrec", "fit"],
                          "mtlrec: the step mtlrec-train runs (mtlrec.training.make_train_step); fit: Keras' fit.")

TASKS = ("click", "like", "share")
# DeepCTR 0.9.4's default sizes, as benchmarks/peers/run.sh gives them to mtlrec-train.
PEER_SIZES = {
    "shared_bottom": {"bottom_units": (256, 128), "tower_units": (64,)},
    "esmm": {"tower_units": (256, 128, 64)},
    "mmoe": {"num_experts": 3, "expert_units": (256, 128), "tower_units": (64,)},
    "ple": {"num_task_experts": 1, "num_shared_experts": 1, "num_levels": 2, "expert_units": (256,),
            "tower_units": (64,)},
}


def _dataset(work: str, rows: int) -> str:
    from mtlrec.config import tenrec_schema
    try:
        from mtlrec.pipelines import synthetic
        from mtlrec.pipelines.prepare import PrepareConfig, prepare
    except ImportError:  # a commit before the offline jobs installed as mtlrec.pipelines (compare_commits)
        from pipelines import synthetic
        from pipelines.prepare import PrepareConfig, prepare

    out = os.path.join(work, f"bench-{rows}")
    if not os.path.exists(os.path.join(out, "manifest.json")):
        csv = os.path.join(work, f"bench-{rows}.csv")
        if not os.path.exists(csv):
            synthetic.write_csv(csv, rows, seed=0, n_users=200_000, n_items=400_000)
        prepare(PrepareConfig(output=out, schema=tenrec_schema(), inputs=(csv,), overwrite=True))
    return out


_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def read_flagfile(path: str) -> dict[str, str]:
    """`--name=value` lines of an absl flagfile, nested `--flagfile`s first
    (paths relative to the repository root, as mtlrec-train reads them)."""
    values: dict[str, str] = {}
    with open(path) as f:
        for line in f:
            line = line.strip()
            if not line.startswith("--"):
                continue
            name, _, value = line[2:].partition("=")
            if name == "flagfile":
                values.update(read_flagfile(os.path.join(_REPO, value)))
            else:
                values[name] = value
    return values


def setting(name: str):
    """(ModelConfig, batch size, learning rate) the model is timed with."""
    from mtlrec.config import ModelConfig

    if _SIZES.value == "default":
        return ModelConfig(tasks=TASKS, embedding_dim=16), _BATCH.value, 1e-3
    if _SIZES.value == "peers":
        return ModelConfig(tasks=("click", "like"), embedding_dim=16, embedding_l2=1e-5, dropout=0.0,
                           **PEER_SIZES[name]), 4096, 1e-3
    values = read_flagfile(os.path.join(_REPO, "experiments", f"{name}.flags"))
    values.update(item.split("=", 1) for item in _SET.value)
    fields = {f.name: f for f in dataclasses.fields(ModelConfig)}
    kwargs = {}
    for key, value in values.items():
        if key not in fields or key == "dlen_alpha":
            continue
        default = fields[key].default
        if key == "tasks":
            kwargs[key] = tuple(v.split("=")[0].split("|")[0].split("*")[0] for v in value.replace(":", ",").split(","))
        elif isinstance(default, tuple):  # "256,128" in a flagfile, "256:128" in --set
            kwargs[key] = tuple(int(v) for v in value.replace(":", ",").split(",") if v)
        else:
            kwargs[key] = type(default)(value)
    return ModelConfig(**kwargs), int(values.get("batch_size", 2048)), float(values.get("learning_rate", 5e-3))


def _variant(text: str) -> tuple[str, bool]:
    """`float32+jit` -> ("float32", True)."""
    policy, _, jit = text.partition("+")
    if policy not in ("float32", "mixed_bfloat16", "mixed_float16") or jit not in ("", "jit"):
        raise ValueError(f"--variants: {text!r} is not float32|mixed_bfloat16|mixed_float16 with an optional +jit")
    return policy, jit == "jit"


def build_trainer(name, manifest, optimizer="lazy_adam", policy="float32"):
    """The model, compiled as mtlrec-train compiles it, its batch size and tasks."""
    import contextlib

    from mtlrec.config import TaskSpec
    from mtlrec.models import build_model
    from mtlrec.optimizers import LazyAdam
    from mtlrec.training import MultiTaskTrainer

    config, batch, lr = setting(name)
    keras.utils.set_random_seed(0)
    if policy == "float32":
        building = contextlib.nullcontext()
    else:  # a library version without --mixed_precision fails here, as it should
        from mtlrec.training import precision
        building = precision.building(policy)
    with building:
        net = build_model(name, manifest, config)
    trainer = MultiTaskTrainer(net, list(config.tasks))
    trainer.compile(optimizer=LazyAdam(lr) if optimizer == "lazy_adam" else keras.optimizers.Adam(lr))
    return trainer, batch, tuple(TaskSpec(t) for t in config.tasks)


def _time_model(name, manifest, optimizer="lazy_adam", variant="float32") -> list[float]:
    """Seconds per step of each timed run."""
    from mtlrec.data import make_dataset

    policy, jit = _variant(variant)
    trainer, batch, tasks = build_trainer(name, manifest, optimizer, policy)
    ds = make_dataset(manifest, "train", batch, tasks, repeat=True, drop_remainder=True)
    if _LOOP.value == "fit":
        timer = _EpochTimer()
        # Epoch 0 is the warm-up (tracing, variable creation, pipeline start).
        trainer.fit(ds, steps_per_epoch=_STEPS.value, epochs=_REPEATS.value + 1, verbose=0, callbacks=[timer])
        return [t / _STEPS.value for t in timer.seconds[1:]]
    import tensorflow as tf

    strategy = tf.distribute.get_strategy()
    features = next(iter(ds))[0]
    trainer(features)
    step, per_call = library_step(trainer, strategy, jit, policy == "mixed_float16")
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    seconds = []
    for _ in range(_REPEATS.value + 1):  # the first is the warm-up
        start = time.perf_counter()
        for first in range(0, _STEPS.value, per_call):
            loss, _ = step(iterator, min(per_call, _STEPS.value - first))
            loss.numpy()  # the host reads the losses after each call, as mtlrec-train does
        seconds.append(time.perf_counter() - start)
    return [t / _STEPS.value for t in seconds[1:]]


def library_step(trainer, strategy, jit_compile=False, loss_scale=False):
    """`(step, per_call)`: the training step as the library's mtlrec-train
    runs it, `step(iterator, count)` for `count` <= `per_call` steps in one
    call (`--steps_per_execution`'s default), or one step per call for a
    library version without it (`count` is then 1)."""
    import inspect

    import tensorflow as tf

    from mtlrec import training

    if "loop" not in inspect.signature(training.make_train_step).parameters:
        one = training.make_train_step(trainer, strategy)
        return (lambda it, count: one(it)), 1
    if jit_compile or loss_scale:  # options of --jit_compile's and --mixed_precision's library versions only
        from mtlrec.training import precision
        scale = precision.LossScale() if loss_scale else None
        loop = training.make_train_step(trainer, strategy, loop=True, jit_compile=jit_compile, loss_scale=scale)
    else:
        loop = training.make_train_step(trainer, strategy, loop=True)
    return (lambda it, count: loop(it, tf.constant(count, tf.int32))), training.TrainConfig.steps_per_execution


class _EpochTimer(keras.callbacks.Callback):
    def __init__(self):
        super().__init__()
        self.seconds: list[float] = []

    def on_epoch_begin(self, epoch, logs=None):
        self._start = time.perf_counter()

    def on_epoch_end(self, epoch, logs=None):
        self.seconds.append(time.perf_counter() - self._start)


def library_threads() -> dict[str, int] | None:
    """TensorFlow's op threads as the library's mtlrec-train sets them
    (`mtlrec.training.set_op_threads`, defaults), or None for a library
    version without the setting (TensorFlow's defaults then, as its
    mtlrec-train ran). Call before any TensorFlow op."""
    from mtlrec import training

    return training.set_op_threads() if hasattr(training, "set_op_threads") else None


def main(argv):
    del argv
    from mtlrec.data import load_manifest

    threads = library_threads()

    work = _WORKDIR.value or tempfile.mkdtemp(prefix="mtlrec-bench-")
    os.makedirs(work, exist_ok=True)
    manifest = load_manifest(_dataset(work, _ROWS.value))
    from mtlrec.provenance import host

    print(json.dumps({"vocab_size": manifest.vocab_size, "train_rows": manifest.rows("train"), "op_threads": threads,
                      "host": host()}), flush=True)
    for name in _MODELS.value:
        for variant in _VARIANTS.value:
            runs = _time_model(name, manifest, variant=variant)
            med = statistics.median(runs)
            print(json.dumps({"model": name, **({"variant": variant} if _VARIANTS.value != ["float32"] else {}),
                              "examples_per_sec_median": round(setting(name)[1] / med),
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
