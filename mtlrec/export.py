"""SavedModel export for TF Serving: raw-feature and tf.Example signatures,
a fusion score, warm-up requests. The SavedModel needs no mtlrec to load.

Preprocessing is part of the graph (`FeatureEmbedding`): string lookups,
numeric normalisation, id range checks (unseen, negative and huge ids go
to the out-of-vocabulary row) and history pooling (0 = padding).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import time
from collections.abc import Sequence
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from mtlrec import io as mio
from mtlrec.config import Schema

EXPORT_INFO = "export_info.json"
WARMUP = os.path.join("assets.extra", "tf_serving_warmup_requests")


def _column_specs(schema: Schema) -> dict[str, tf.TensorSpec]:
    """One `(batch,)` tensor per CSV input column, as in the CSV."""
    specs = {}
    for f in schema.features:
        dtype = {"categorical": tf.string, "numeric": tf.float32}.get(f.kind, tf.int64)
        for col in f.columns:
            specs[col] = tf.TensorSpec([None], dtype, name=col)
    return specs


def _features(schema: Schema, columns: dict[str, tf.Tensor]) -> dict[str, tf.Tensor]:
    """CSV columns -> model inputs (history columns stacked)."""
    out = {}
    for f in schema.features:
        if f.kind == "sequence":
            out[f.name] = tf.stack([columns[c] for c in f.columns], axis=1)
        else:
            out[f.name] = columns[f.name]
    return out


def fusion_score(outputs: dict[str, tf.Tensor], weights: dict[str, float]) -> tf.Tensor:
    """`prod_k p_k ** w_k`, computed as `exp(sum_k w_k log p_k)`."""
    log = [w * tf.math.log(tf.clip_by_value(outputs[k], 1e-7, 1.0)) for k, w in weights.items()]
    return tf.exp(tf.add_n(log))


def _next_version(export_dir: str) -> int:
    """A new version number: the time in seconds, or one above the highest
    version the base holds (a serving base earlier runs exported to)."""
    names = mio.listdir(export_dir) if mio.exists(export_dir) and mio.isdir(export_dir) else []
    existing = [int(d.rstrip("/")) for d in names if d.rstrip("/").isdigit()]
    return max([int(time.time()), *[v + 1 for v in existing]])


def export(network: keras.Model, schema: Schema, tasks: Sequence[str], export_dir: str,
           fusion_weights: dict[str, float] | None = None, version: int | None = None,
           warmup_rows: dict[str, np.ndarray] | None = None) -> str:
    """Writes `export_dir/<version>/` and returns that path.

    Args:
        network: the trained functional model (outputs keyed by task).
        schema: the dataset schema (input columns and their types).
        tasks: task names, in order.
        export_dir: base directory; versions are integer subdirectories.
        fusion_weights: w_k of `score = prod_k p_k^w_k` (default 1 per task).
        version: the version number (default: a new one, time-based).
        warmup_rows: a few input rows (CSV columns) for the warm-up file.
    """
    return export_runs([(network, schema, tasks)], export_dir, fusion_weights, version, warmup_rows)


def export_runs(runs: Sequence[tuple[keras.Model, Schema, Sequence[str]]], export_dir: str,
                fusion_weights: dict[str, float] | None = None, version: int | None = None,
                warmup_rows: dict[str, np.ndarray] | None = None) -> str:
    """`export` of several trained networks behind one signature: the union
    of their input columns in, every network's outputs and one `score` over
    all their tasks out. With one network, all its outputs; with several,
    their task outputs (each task from one network)."""
    tasks = [t for _, _, ts in runs for t in ts]
    if len(set(tasks)) != len(tasks):
        raise ValueError(f"a task is predicted by two of the exported models: {tasks}")
    outputs_known = set(tasks) | {n for net, _, _ in runs for n in net.output_names}
    # A task the weights leave out keeps the default weight 1 (as --fusion_weights' help says).
    weights = {**{t: 1.0 for t in tasks}, **(fusion_weights or {})}
    unknown = set(weights) - outputs_known
    if unknown:
        raise ValueError(f"fusion weights name unknown output(s) {sorted(unknown)}; tasks are {list(tasks)}")
    specs: dict[str, tf.TensorSpec] = {}
    for _, schema, _ in runs:
        for name, spec in _column_specs(schema).items():
            if name in specs and specs[name].dtype != spec.dtype:
                raise ValueError(f"input column {name!r} is {specs[name].dtype.name} for one model and "
                                 f"{spec.dtype.name} for another: they cannot share one signature")
            specs.setdefault(name, spec)
    example_spec = {name: tf.io.FixedLenFeature([], spec.dtype) for name, spec in specs.items()}

    def serve(columns):
        outputs = {}
        for network, schema, run_tasks in runs:
            out = dict(network(_features(schema, columns), training=False))
            outputs.update(out if len(runs) == 1 else {t: out[t] for t in run_tasks})
        outputs["score"] = fusion_score(outputs, weights)
        return outputs

    def serve_examples(examples):
        return serve(tf.io.parse_example(examples, example_spec))

    archive = keras.export.ExportArchive()
    # Not `archive.track(network)`: it lists the Keras variables beside the
    # tf.Variables the endpoints use, and the SavedModel then stores every
    # weight twice (6.8 GB instead of 3.4 GB for APLE at Tenrec scale). The
    # endpoints' variables are tracked from the traced functions. Lookup
    # tables are not: Keras finds them by walking TF's object graph, which
    # does not enter custom layers, so each StringLookup is tracked itself.
    for network, _, _ in runs:
        for layer in network._flatten_layers(include_self=False, recursive=True):
            if isinstance(layer, keras.layers.StringLookup):
                archive.track(layer)
    archive.add_endpoint("serving_default", serve, input_signature=[specs])
    archive.add_endpoint("predict_examples", serve_examples,
                         input_signature=[tf.TensorSpec([None], tf.string, name="examples")])
    version = version if version is not None else _next_version(export_dir)
    final = mio.join(export_dir, str(version))
    if mio.exists(final):
        raise FileExistsError(f"{final} exists: versions are immutable; choose another --version")
    mio.makedirs(export_dir)
    mio.remove_stale_temp(export_dir, ".tmp-")  # left by killed exports
    tmp = mio.join(export_dir, f".tmp-{version}-{os.getpid()}")
    mio.rmtree(tmp)
    try:
        # Keras 3.8 prints "Saved artifact at '<tmp>'. The following endpoints..." whatever `verbose` says,
        # naming a temporary path that is gone a moment later: kept off the user's terminal.
        with contextlib.redirect_stdout(io.StringIO()):
            archive.write_out(tmp, verbose=False)
        if warmup_rows is not None and all(name in warmup_rows for name in specs):
            write_warmup(mio.join(tmp, WARMUP), warmup_rows, specs)
        mio.makedirs(mio.join(tmp, "assets.extra"))
        info = {"tasks": list(tasks), "fusion_weights": weights, "schema": runs[0][1].to_json()}
        if len(runs) > 1:
            info["models"] = [{"tasks": list(ts), "schema": schema.to_json()} for _, schema, ts in runs]
        mio.write_atomic(mio.join(tmp, "assets.extra", "mtlrec.json"), json.dumps(info, indent=1).encode())
        if mio.exists(final):
            raise FileExistsError(f"{final} exists: versions are immutable; choose another --version")
        if mio.is_remote(final):
            mio.gfile().rename(tmp, final)
        else:
            os.rename(tmp, final)
    finally:
        mio.rmtree(tmp)  # gone after the rename; removed on any failure
    return final


def write_warmup(path: str, rows: dict[str, np.ndarray], specs: dict[str, tf.TensorSpec], num: int = 10) -> None:
    """TF Serving warm-up: `num` PredictionLog records for serving_default,
    built with tensorflow-serving-api's own messages."""
    from tensorflow_serving.apis import model_pb2, predict_pb2, prediction_log_pb2

    mio.makedirs(os.path.dirname(path))
    with tf.io.TFRecordWriter(path) as writer:
        for i in range(num):
            request = predict_pb2.PredictRequest(model_spec=model_pb2.ModelSpec(signature_name="serving_default"))
            for name, spec in specs.items():
                j = i % len(rows[name])
                value = np.asarray(rows[name][j : j + 1])
                if spec.dtype == tf.string:
                    value = value.astype(object).astype(bytes)
                request.inputs[name].CopyFrom(tf.make_tensor_proto(value, dtype=spec.dtype))
            log = prediction_log_pb2.PredictionLog(predict_log=prediction_log_pb2.PredictLog(request=request))
            writer.write(log.SerializeToString())


def read_warmup_signatures(path: str) -> list[tuple[str, list[str]]]:
    """(signature name, input names) of each warm-up record (for checks)."""
    from tensorflow_serving.apis import prediction_log_pb2

    out = []
    for record in tf.data.TFRecordDataset(path):
        request = prediction_log_pb2.PredictionLog.FromString(record.numpy()).predict_log.request
        out.append((request.model_spec.signature_name, list(request.inputs)))
    return out


def save_export_info(model_dir: str, model: str, schema: Schema, tasks: Sequence[str]) -> None:
    info = {"model": model, "schema": schema.to_json(), "tasks": list(tasks)}
    mio.write_atomic(mio.join(model_dir, EXPORT_INFO), json.dumps(info, indent=1).encode())


def export_model_dir(model_dir: str, export_dir: str | None = None, fusion_weights: dict[str, float] | None = None,
                     version: int | None = None, warmup_rows: dict[str, np.ndarray] | None = None) -> str:
    """Export `MODEL_DIR/model.keras` (written by training) for serving."""
    import mtlrec.models  # noqa: F401  (registers the layers for loading)
    from mtlrec.rundir import read_status

    info_path = mio.join(model_dir, EXPORT_INFO)
    model_path = mio.join(model_dir, "model.keras")
    for path in (info_path, model_path):
        if not mio.exists(path):
            raise FileNotFoundError(f"{path} not found: --model_dir must hold a finished mtlrec-train run")
    status = read_status(model_dir)
    if status not in (None, "finished"):  # None: a run from before run.json
        raise ValueError(
            f"--model_dir={model_dir}: the run is not finished (status '{status}'), so its model.keras need not "
            "match its checkpoints; rerun mtlrec-train with the same flags to finish it, then export"
        )
    info: dict[str, Any] = mio.read_json(info_path)
    network = load_network(model_path)
    return export(network, Schema.from_json(info["schema"]), info["tasks"], export_dir or mio.join(model_dir, "export"),
                  fusion_weights, version, warmup_rows)


def load_network(path: str) -> keras.Model:
    """The Keras model saved at `path` (a run's model.keras). A truncated or
    corrupted archive is a ValueError naming the file, where Keras would say
    "File not found"."""
    import zipfile

    try:
        with mio.open_binary(path) as f:
            complete = zipfile.is_zipfile(f)
    except FileNotFoundError:
        raise FileNotFoundError(f"{path} not found: --model_dir must hold a finished mtlrec-train run") from None
    if not complete:
        raise ValueError(f"{path}: not a complete Keras archive (truncated or corrupted); rerun mtlrec-train "
                         "with the same flags and --overwrite to write it again")
    return keras.saving.load_model(path)


def warmup_rows(model_dir: str, data: str | None = None, rows: int = 10) -> dict[str, np.ndarray] | None:
    """A few validation rows of the training data (or `data`) for warm-up."""
    from mtlrec.data.dataset import csv_rows

    if data is None:
        metrics = mio.join(model_dir, "metrics.json")
        if not mio.exists(metrics):
            return None
        data = mio.read_json(metrics).get("data")
    try:
        return csv_rows(data, "valid", rows) if data else None
    except (FileNotFoundError, ValueError):
        return None  # the data moved: export without warm-up requests


def latest_version(export_dir: str) -> str:
    """`export_dir` itself if it is a SavedModel, else its highest version."""
    if mio.exists(mio.join(export_dir, "saved_model.pb")):
        return export_dir
    versions = sorted(int(d) for d in mio.listdir(export_dir) if d.isdigit()) if mio.isdir(export_dir) else []
    if not versions:
        inside = mio.join(export_dir, "export")
        if mio.exists(mio.join(export_dir, "run.json")) and mio.isdir(inside):
            raise FileNotFoundError(f"{export_dir}: a training run's folder, not an export; its SavedModels are in "
                                    f"{inside} (pass --export_dir={inside})")
        raise FileNotFoundError(f"{export_dir}: no SavedModel and no integer version directories")
    return mio.join(export_dir, str(versions[-1]))

