"""Where a training step's time goes, from TensorFlow's profiler trace.

    python -m benchmarks.step_profile --models=ple,aple,stem,aitm

(model_bench's flags: --models, --rows, --steps, --workdir, --set.)

Each model is built as `experiments/<model>.flags` builds it (the
`benchmarks.model_bench --sizes=flagfile` setting) and trained as
mtlrec-train trains it (its op threads and steps per call), warmed up,
timed (median step of `--steps`), then traced for `--steps` more steps
with `tf.profiler`. The trace's op events on TensorFlow's compute threads are
summed per step and grouped by what they belong to:

- embedding lookup / embedding backward: ops of the embedding layers
  (index arithmetic, string lookups, gathers, pooling, L2) and their gradients;
- experts and mixing: expert matmuls, activations, dropout, gate mixtures,
  AITM's transfer units, forward and backward;
- gates, towers: those layers, forward and backward;
- optimizer: every variable's Adam update; of which "row kernels" are
  LazyAdam's unique, segment sums, gathers and scatters of embedding rows;
- loss and the rest: losses, gradient sums, the step's bookkeeping.

CPU ms are summed over threads (2 cores run ops in parallel, so the sum can
exceed the step). `input wait` is the time the step waited for its batch;
`input CPU` the tf.data threads' work. Absolute figures
are inflated by tracing; compare shares and before/after on one machine.
"""

from __future__ import annotations

import collections
import glob
import json
import os
import re
import shutil
import statistics
import tempfile
import time

from absl import app, flags

from benchmarks import model_bench  # its flags: --models, --rows, --steps, --workdir, --sizes, --set

flags.FLAGS.set_default("models", ["ple", "aple", "stem", "aitm"])
flags.FLAGS.set_default("sizes", "flagfile")
flags.FLAGS.set_default("workdir", "bench/model_bench")
flags.FLAGS.set_default("steps", 30)
_OUT = flags.DEFINE_string("out", None, "Write the breakdown as JSON here too.")
_TOP = flags.DEFINE_integer("top_ops", 0, "Also print the N op types with the most CPU ms per step.")
_NODES = flags.DEFINE_integer("top_nodes", 0, "Also print the N op nodes (full names) with the most CPU ms per step.")

CATEGORIES = ("embedding lookup", "embedding backward", "experts and mixing", "gates", "towers",
              "optimizer", "loss and the rest")
ROW_KERNELS = ("Unique", "UnsortedSegmentSum", "ResourceGather", "ResourceScatterUpdate", "ResourceScatterSub")


def categorize(name: str, model: str) -> str:
    """The category of one op event, `scope/.../op:Type`."""
    scope, _, op_type = name.rpartition(":")
    # Inside the steps-per-call loop: `while/body/_N/[gradient_tape/]while/<the step's own scopes>`.
    scope = re.sub(r"^while/body/_\d+/", "", scope)
    parts = [p for i, p in enumerate(scope.split("/")) if not (p == "while" and i < 2)]
    backward = parts[0] == "gradient_tape"
    if backward:
        parts = parts[1:]
    if parts[0] in ("adam", "lazy_adam"):
        return "optimizer"
    inside = [p.rsplit("_", 1)[0] if p.rsplit("_", 1)[-1].isdigit() else p for p in parts]
    if len(inside) < 3 or inside[1] != model:
        return "loss and the rest"
    layer = "/".join(inside[2:])
    if "embedding" in inside[2] or inside[2] == "ame":
        return "embedding backward" if backward else "embedding lookup"
    if "tower" in layer:
        return "towers"
    if "gate" in layer:
        return "gates"
    return "experts and mixing"


def _top_level(events):
    """Events not nested inside an earlier event of the same thread."""
    end = -1
    for ev in sorted(events, key=lambda e: e.offset_ps):
        if ev.offset_ps >= end:
            yield ev
            end = ev.offset_ps + ev.duration_ps


def breakdown(trace_dir: str, model: str, steps: int) -> dict[str, float]:
    """ms per step by category, from the `.xplane.pb` under `trace_dir`."""
    from tensorflow.tsl.profiler.protobuf import xplane_pb2

    space = xplane_pb2.XSpace()
    with open(glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)[0], "rb") as f:
        space.ParseFromString(f.read())
    ms = collections.Counter()
    types = collections.Counter()
    nodes = collections.Counter()
    for plane in space.planes:
        if plane.name != "/host:CPU":
            continue
        names = plane.event_metadata
        for line in plane.lines:
            if line.name.startswith("tf_Compute"):
                for ev in line.events:
                    name = names[ev.metadata_id].name
                    if ":" in name and "::" not in name:
                        category = categorize(name, model)
                        ms[category] += ev.duration_ps / 1e9
                        types[name.rpartition(":")[2]] += ev.duration_ps / 1e9
                        nodes[name] += ev.duration_ps / 1e9
                        if category == "optimizer" and name.rpartition(":")[2] in ROW_KERNELS:
                            ms["optimizer row kernels"] += ev.duration_ps / 1e9
            elif line.name.startswith("tf_data") and "get_next" not in line.name:
                ms["input CPU"] += sum(ev.duration_ps for ev in _top_level(line.events)) / 1e9
            elif "get_next" in line.name:
                ms["input wait"] += sum(ev.duration_ps for ev in _top_level(line.events)
                                        if names[ev.metadata_id].name.startswith("IteratorGetNextOp")) / 1e9
    out = {k: ms[k] / steps for k in (*CATEGORIES, "optimizer row kernels", "input wait", "input CPU")}
    if _TOP.value:
        out["top op types"] = {k: round(v / steps, 2) for k, v in types.most_common(_TOP.value)}
    if _NODES.value:
        out["top op nodes"] = {k: round(v / steps, 2) for k, v in nodes.most_common(_NODES.value)}
    return out


def profile(name: str, manifest) -> dict[str, float]:
    import tensorflow as tf

    from mtlrec.data import make_dataset

    policy, jit = model_bench._variant(model_bench._VARIANTS.value[0])  # --variants: the first one is profiled
    trainer, batch, tasks = model_bench.build_trainer(name, manifest, policy=policy)
    ds = make_dataset(manifest, "train", batch, tasks, repeat=True, drop_remainder=True)
    strategy = tf.distribute.get_strategy()
    trainer(next(iter(ds))[0])
    step, per_call = model_bench.library_step(trainer, strategy, jit, policy == "mixed_float16")  # as mtlrec-train runs it
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    calls = max(1, model_bench._STEPS.value // per_call)
    for _ in range(max(1, 10 // per_call)):
        step(iterator, per_call)[0].numpy()
    seconds = []
    for _ in range(calls):
        start = time.perf_counter()
        step(iterator, per_call)[0].numpy()
        seconds.append((time.perf_counter() - start) / per_call)
    trace = tempfile.mkdtemp(prefix=f"mtlrec-trace-{name}-")
    try:
        tf.profiler.experimental.start(trace)
        for n in range(calls):
            with tf.profiler.experimental.Trace("step", step_num=n):
                step(iterator, per_call)[0].numpy()
        tf.profiler.experimental.stop()
        result = breakdown(trace, name, calls * per_call)
    finally:
        shutil.rmtree(trace, ignore_errors=True)
    result["step ms (untraced median)"] = statistics.median(seconds) * 1000
    result["batch"] = batch
    return result


def main(argv):
    del argv
    import keras

    from mtlrec.data import load_manifest

    model_bench.library_threads()
    manifest = load_manifest(model_bench._dataset(model_bench._WORKDIR.value, model_bench._ROWS.value))
    results = {}
    for name in model_bench._MODELS.value:
        keras.backend.clear_session()
        results[name] = profile(name, manifest)
        print(json.dumps({"model": name, **{k: (round(v, 2) if isinstance(v, float) else v)
                                                  for k, v in results[name].items()}}), flush=True)
    rows = (*CATEGORIES, "optimizer row kernels", "input wait", "input CPU")
    print("| CPU ms per step | " + " | ".join(results) + " |")
    print("|---" * (len(results) + 1) + "|")
    for r in rows:
        print(f"| {r} | " + " | ".join(f"{results[m][r]:.1f}" for m in results) + " |")
    print("| op CPU total | " + " | ".join(f"{sum(results[m][c] for c in CATEGORIES):.1f}" for m in results) + " |")
    print("| step ms, untraced | " + " | ".join(f"{results[m]['step ms (untraced median)']:.1f}" for m in results) + " |")
    if _OUT.value:
        with open(_OUT.value, "w") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    app.run(main)
