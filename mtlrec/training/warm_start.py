"""Warm start (`--warm_start=PARENT_RUN`): a new run, with its own model_dir
and identity, that begins from a finished run's selected weights instead of
a fresh draw. Daily training: the parent trained on yesterday's dataset,
this run trains on today's, prepared with `mtlrec-prepare
--vocab_from=yesterday`, so that every old id and categorical value keeps
its row.

- `check(config, manifest)`, before any work: the parent is a finished run
  of the same model, architecture, tasks and schema, and today's tables
  are at least as large; otherwise one line listing the differences.
- `apply(run, parent)`, after the network is built and before the first
  step: dense weights copied as they are, embedding tables row for row
  (rows for new ids keep their fresh draw), the seen-id masks the union of
  the parent's and today's training ids; the optimizer continues from the
  parent's last checkpoint (`--warm_start_optimizer=carry`, the default:
  Adam's moments row for row, new rows at zero, and its step count, so the
  bias correction goes on where it stopped) or starts afresh (`reset`).
"""

from __future__ import annotations

from typing import Any

import numpy as np
from absl import logging

from mtlrec import io as mio
from mtlrec.rundir import RUN_FILE, differences

# What must be equal between the parent run and this one (run.json identity).
SAME = ("model", "model_config", "tasks")


def _fail(parent: str, why: str) -> ValueError:
    return ValueError(f"--warm_start={parent}: {why}")


def check(config, manifest) -> dict[str, Any]:
    """The parent run's record (`parent` of run.json and metrics.json), after
    checking that this run can continue it; raises ValueError otherwise."""
    from mtlrec.rundir import identity

    parent = config.warm_start.rstrip("/")
    if mio.exists(mio.join(config.model_dir, RUN_FILE)) and _same_dir(parent, config.model_dir):
        raise _fail(parent, "is this run's --model_dir; a warm-started run writes its own folder, e.g. "
                            "--model_dir=runs/day2")
    for name in (RUN_FILE, "model.keras", "metrics.json", "export_info.json"):
        if not mio.exists(mio.join(parent, name)):
            raise _fail(parent, f"no {name} there: expected the folder of a finished mtlrec-train run")
    record = mio.read_json(mio.join(parent, RUN_FILE))
    if record.get("status") != "finished":
        raise _fail(parent, f"the run is not finished (status '{record.get('status')}'); finish it first (rerun "
                            "mtlrec-train with its flags)")
    theirs, ours = record.get("identity", {}), identity(config, manifest)
    diff = differences({k: theirs.get(k) for k in SAME}, {k: ours.get(k) for k in SAME})
    info = mio.read_json(mio.join(parent, "export_info.json"))
    schema_diff = differences({"schema": info.get("schema")}, {"schema": manifest.schema.to_json()})
    diff += [f"schema: {d}" for d in schema_diff]
    old_sizes = theirs.get("dataset", {}).get("vocab_size", {})
    for name, size in sorted(old_sizes.items()):
        now = manifest.vocab_size.get(name)
        if now is None or now < size:
            diff.append(f"dataset.vocab_size.{name}: {size} there, {now} here (tables never shrink)")
    parent_data = mio.read_json(mio.join(parent, "metrics.json")).get("data")
    if not schema_diff and parent_data and mio.exists(mio.join(parent_data, "manifest.json")):
        from mtlrec.data.manifest import load_manifest
        from mtlrec.layers.embedding import feature_specs

        diff += feature_differences(feature_specs(load_manifest(parent_data)), feature_specs(manifest))
    if diff:
        raise _fail(parent, f"cannot continue that run ({'; '.join(diff)}); warm start needs the same model, "
                            "architecture, tasks and schema, on a dataset prepared with --vocab_from=<its dataset>")
    if config.warm_start_optimizer == "carry" and _last_checkpoint(parent) is None:
        raise _fail(parent, "holds no checkpoint (its checkpoints/ folder is gone) to carry the optimizer from; "
                            "pass --warm_start_optimizer=reset")
    metrics = mio.read_json(mio.join(parent, "metrics.json"))
    return {"model_dir": parent, "data": metrics.get("data"), "dataset_created": theirs.get("dataset", {}).get("created"),
            "best_epoch": metrics.get("best_epoch"), "lineage_depth": len(metrics.get("lineage", [])) + 1}


def lineage(parent: dict[str, Any]) -> list[dict[str, Any]]:
    """metrics.json's `lineage`: the runs this one continues, oldest first."""
    metrics = mio.read_json(mio.join(parent["model_dir"], "metrics.json"))
    entry = {"model_dir": parent["model_dir"], "data": metrics.get("data"), "best_epoch": metrics.get("best_epoch"),
             "test": {t: {k: m.get(k) for k in ("auc", "logloss")} for t, m in metrics.get("test", {}).items()
                      if isinstance(m, dict)}}
    return [*metrics.get("lineage", []), entry]


def _last_checkpoint(parent: str) -> str | None:
    import tensorflow as tf

    folder = mio.join(parent, "checkpoints")
    return tf.train.latest_checkpoint(folder) if mio.exists(folder) else None


def _grow(old: np.ndarray, new: np.ndarray, fill: float = 0.0) -> np.ndarray:
    """`old` in the first rows of an array shaped like `new`, `fill` below."""
    if old.shape == new.shape:
        return old
    out = np.full(new.shape, fill, dtype=new.dtype)
    out[:len(old)] = old
    return out


def _carry_optimizer(run, parent: str) -> dict[str, Any]:
    """Copies the optimizer's state from the parent's last checkpoint: the
    same variables in the same order (the same architecture), tables'
    slots grown by rows. Rows of new ids get zero moments and, for lazy
    decay, the carried step as their last update (they owe no decay)."""
    import tensorflow as tf

    path = _last_checkpoint(parent)
    reader = tf.train.load_checkpoint(path)
    optimizer = run.trainer.optimizer
    step = int(reader.get_tensor("optimizer/_iterations/.ATTRIBUTES/VARIABLE_VALUE"))
    lasts = {id(v) for v in getattr(optimizer, "_last", []) if v is not None}
    carried = 0
    for i, var in enumerate(optimizer.variables):
        key = f"optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE"
        if var is optimizer.iterations or var is getattr(optimizer, "_learning_rate", None) \
                or not reader.has_tensor(key):
            continue
        old, now = reader.get_tensor(key), np.asarray(var.numpy())
        if old.ndim != now.ndim or old.shape[1:] != now.shape[1:] or len(old) > len(now):
            raise _fail(parent, f"optimizer variable {i} ({var.path}) is {old.shape} in {path}, {now.shape} here")
        var.assign(_grow(old.astype(now.dtype), now, float(step) if id(var) in lasts else 0.0))
        carried += 1
    optimizer.iterations.assign(step)
    logging.info("warm start: the optimizer continues from %s (step %d, %d variables)", path, step, carried)
    return {"checkpoint": path, "step": step, "variables": carried}


def _same_dir(a: str, b: str) -> bool:
    if mio.is_remote(a) or mio.is_remote(b):
        return a.rstrip("/") == b.rstrip("/")
    import os

    return os.path.realpath(a) == os.path.realpath(b)


def _embeddings(network) -> list:
    from mtlrec.layers.embedding import FeatureEmbedding

    return [layer for layer in network._flatten_layers(include_self=False, recursive=True)
            if isinstance(layer, FeatureEmbedding)]


def _check_features(parent: str, old: list[dict], new: list[dict]) -> None:
    diff = feature_differences(old, new)
    if diff:
        raise _fail(parent, f"the dataset does not continue the parent's ({'; '.join(diff)})")


def feature_differences(old: list[dict], new: list[dict]) -> list[str]:
    """How the features `new` (`feature_specs`) would read their inputs
    otherwise than `old` did: a kind changed, a categorical vocabulary that
    does not begin with the old one, other hash buckets, numbers normalised
    otherwise ([] when each reads as before)."""
    diff = []
    for a, b in zip(old, new):
        name = a["name"]
        if (a["name"], a["kind"]) != (b["name"], b["kind"]):
            diff.append(f"feature {a['name']} ({a['kind']}) there, {b['name']} ({b['kind']}) here")
        elif a["kind"] == "categorical" and b["vocabulary"][:len(a["vocabulary"])] != a["vocabulary"]:
            diff.append(f"{name}: the vocabulary does not begin with the parent's (prepare with --vocab_from)")
        elif a["kind"] == "numeric" and (a["mean"], a["std"]) != (b["mean"], b["std"]):
            diff.append(f"{name}: normalised by mean {a['mean']:.6g} std {a['std']:.6g} there, "
                        f"{b['mean']:.6g} / {b['std']:.6g} here (prepare with --vocab_from)")
        elif a["kind"] in ("id", "sequence") and (b.get("hashed") != a.get("hashed")
                                                  or (a.get("hashed") and a["vocab_size"] != b["vocab_size"])):
            diff.append(f"{name}: hashed into {a['vocab_size']} buckets there, {b['vocab_size']} here")
    if len(old) != len(new):
        diff.append(f"{len(old)} features there, {len(new)} here")
    return diff


def apply(run, parent: dict[str, Any]) -> dict[str, Any]:
    """Copies the parent's selected weights into `run.network` (built, not
    trained); returns what was carried (logged, and `parent.carried` in
    metrics.json)."""
    from mtlrec.export import load_network

    path = parent["model_dir"]
    source = load_network(mio.join(path, "model.keras"))
    old_layers, new_layers = _embeddings(source), _embeddings(run.network)
    if len(old_layers) != len(new_layers):
        raise _fail(path, f"{len(old_layers)} embedding layers there, {len(new_layers)} here")
    masks = set()
    for a, b in zip(old_layers, new_layers):
        _check_features(path, a.features, b.features)
        masks.update(id(v) for v in b.seen.values())
    src, dst = source.weights, run.network.weights
    if len(src) != len(dst):
        raise _fail(path, f"{len(src)} weights there, {len(dst)} here: another architecture")
    copied, grown, new_rows = 0, 0, {}
    for s, d in zip(src, dst):
        value = np.asarray(s.numpy())
        if tuple(s.shape) != tuple(d.shape) and not (
                len(s.shape) == len(d.shape) >= 1 and s.shape[1:] == d.shape[1:] and s.shape[0] <= d.shape[0]):
            raise _fail(path, f"weight {s.path} is {tuple(s.shape)} there, {d.path} is {tuple(d.shape)} here")
        if id(d) in masks:  # seen in the parent's training or in this one's
            value = np.maximum(np.asarray(d.numpy())[:len(value)], value)
        if tuple(s.shape) == tuple(d.shape):
            d.assign(value)
            copied += 1
            continue
        full = np.asarray(d.numpy()).copy()  # the fresh draw stays in the new rows
        full[:len(value)] = value
        d.assign(full)
        grown += 1
        new_rows[d.path] = int(d.shape[0] - s.shape[0])
    logging.info("warm start from %s: %d weights copied, %d tables grown (%s new rows)", path, copied, grown,
                 ", ".join(f"{k.split('/')[-1]} +{v}" for k, v in new_rows.items()) or "no")
    carried = {"weights_copied": copied, "tables_grown": grown, "new_rows": new_rows,
               "optimizer": run.config.warm_start_optimizer}
    if run.config.warm_start_optimizer == "carry":
        carried["optimizer_state"] = _carry_optimizer(run, path)
    return carried
