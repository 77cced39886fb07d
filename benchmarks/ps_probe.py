"""Does ParameterServerStrategy train an mtlrec model with Keras 3 on TF 2.17?

    python -m benchmarks.ps_probe [--model=mmoe] [--partition]

An in-process cluster (1 parameter server, 2 workers, the coordinator
here), a custom loop with `ClusterCoordinator.schedule` (Keras 3's `fit`
has no ParameterServerStrategy path), the model of mtlrec-train and its
optimizer. Prints what happened at each stage; docs/DISTRIBUTED.md quotes it.
"""

from __future__ import annotations

import json
import os
import socket
import traceback

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

from absl import app, flags  # noqa: E402

_MODEL = flags.DEFINE_string("model", "mmoe", "Model.")
_PARTITION = flags.DEFINE_bool("partition", False, "Shard variables over 2 parameter servers (MinSizePartitioner).")
_OPTIMIZER = flags.DEFINE_enum("optimizer", "lazy_adam", ["lazy_adam", "adam", "sgd"], "Optimizer.")


def _ports(n):
    socks = [socket.socket() for _ in range(n)]
    for s in socks:
        s.bind(("localhost", 0))
    ports = [s.getsockname()[1] for s in socks]
    for s in socks:
        s.close()
    return ports


def _stage(name, fn):
    try:
        out = fn()
        print(json.dumps({"stage": name, "ok": True, **(out or {})}), flush=True)
        return True
    except Exception as e:  # a probe: report and stop
        print(json.dumps({"stage": name, "ok": False, "error": f"{type(e).__name__}: {str(e).splitlines()[0][:300]}"}),
              flush=True)
        traceback.print_exc()
        return False


def main(argv):
    del argv
    import keras
    import tensorflow as tf

    from mtlrec.config import ModelConfig, TaskSpec, tenrec_schema
    from mtlrec.data import load_manifest, make_dataset
    from mtlrec.models import build_model
    from mtlrec.optimizers import LazyAdam
    from mtlrec.pipelines.prepare import PrepareConfig, prepare
    from mtlrec.training import MultiTaskTrainer, make_train_step

    n_ps = 2 if _PARTITION.value else 1
    ports = _ports(2 + n_ps)
    spec = tf.train.ClusterSpec({"worker": [f"localhost:{p}" for p in ports[:2]],
                                 "ps": [f"localhost:{p}" for p in ports[2:]]})
    for job, count in (("worker", 2), ("ps", n_ps)):
        for i in range(count):
            tf.distribute.Server(spec, job_name=job, task_index=i, protocol="grpc", start=True)
    resolver = tf.distribute.cluster_resolver.SimpleClusterResolver(spec, rpc_layer="grpc")
    partitioner = (tf.distribute.experimental.partitioners.MinSizePartitioner(min_shard_bytes=1 << 10, max_shards=n_ps)
                   if _PARTITION.value else None)
    strategy = tf.distribute.ParameterServerStrategy(resolver, variable_partitioner=partitioner)
    coordinator = tf.distribute.coordinator.ClusterCoordinator(strategy)
    data = "/tmp/mtlrec-ps-probe-data"
    if not os.path.exists(os.path.join(data, "manifest.json")):
        prepare(PrepareConfig(output=data, schema=tenrec_schema(), synthetic_rows=20_000, seed=1, overwrite=True))
    manifest = load_manifest(data)
    tasks = (TaskSpec("click"), TaskSpec("like"))
    state = {}

    def build():
        with strategy.scope():
            net = build_model(_MODEL.value, manifest, ModelConfig(tasks=("click", "like"), embedding_dim=8))
            trainer = MultiTaskTrainer(net, ["click", "like"])
            opt = {"lazy_adam": LazyAdam(1e-2), "adam": keras.optimizers.Adam(1e-2), "sgd": keras.optimizers.SGD(0.1)}
            trainer.optimizer = opt[_OPTIMIZER.value]
            trainer.optimizer.build(trainer.trainable_variables)
        state.update(net=net, trainer=trainer)
        kinds = sorted({type(v.value if hasattr(v, "value") else v).__name__ for v in net.weights})
        return {"variables": len(net.weights), "variable_types": kinds}

    def dataset():
        def fn(context):
            return make_dataset(manifest, "train", 512, tasks, shuffle=True, repeat=True, drop_remainder=True,
                                input_context=context)
        state["iter"] = iter(coordinator.create_per_worker_dataset(lambda: strategy.distribute_datasets_from_function(fn)))

    def train_steps():
        step = make_train_step(state["trainer"], strategy)  # the step mtlrec-train runs
        results = [coordinator.schedule(step, args=(state["iter"],)) for _ in range(20)]
        coordinator.join()
        values = [float(r.fetch()[0]) for r in results]
        return {"first_loss": round(values[0], 4), "last_loss": round(values[-1], 4)}

    for name, fn in (("build model and optimizer under the strategy", build), ("per-worker dataset", dataset),
                     ("20 scheduled training steps", train_steps)):
        if not _stage(name, fn):
            break


if __name__ == "__main__":
    app.run(main)
