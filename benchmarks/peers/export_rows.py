"""Writes a prepared dataset's train, valid and test rows as integer-encoded numpy
arrays for a peer library (run with mtlrec's own environment).

    python -m benchmarks.peers.export_rows --data=DIR --out=rows.npz

Ids are encoded as mtlrec's embedding layer encodes them (`id + 1`, 0 for
out-of-vocabulary; strings by their training-vocabulary position + 1;
sequence padding 0), so both libraries see the same rows, vocabularies and
out-of-vocabulary rule. `rows.json` beside the arrays describes each feature.
"""

from __future__ import annotations

import json

import numpy as np
from absl import app, flags

_DATA = flags.DEFINE_string("data", None, "A prepared dataset directory.", required=True)
_OUT = flags.DEFINE_string("out", None, "Output .npz path.", required=True)
_TASKS = flags.DEFINE_list("tasks", ["click", "like"], "Label columns to export.")
_IN_ORDER = flags.DEFINE_bool("in_order", False, "Rows in their stored order, files one after another (the "
                              "order mtlrec-train --train_order=stored reads; time order for an --order_by "
                              "split). Default: four files read in turn, block by block.")


def _encode(spec: dict, values: np.ndarray) -> np.ndarray:
    if spec["kind"] == "categorical":
        index = {v: i + 1 for i, v in enumerate(spec["vocabulary"] or [])}
        return np.array([index.get(v.decode() if isinstance(v, bytes) else v, 0) for v in values.ravel()],
                        dtype=np.int64).reshape(values.shape)
    ids = values.astype(np.int64)
    if spec.get("hashed"):
        out = ids % spec["vocab_size"] + 1
    else:
        out = np.where((ids >= 0) & (ids < spec["vocab_size"]), ids + 1, 0)
    if spec["kind"] == "sequence":
        out = np.where(ids == 0, 0, out)  # raw 0 is padding, as in mtlrec
    return out


def main(argv):
    del argv
    from mtlrec.config import TaskSpec
    from mtlrec.data import load_manifest, make_dataset
    from mtlrec.layers.embedding import feature_specs

    manifest = load_manifest(_DATA.value)
    specs = feature_specs(manifest)
    tasks = [TaskSpec(t) for t in _TASKS.value]
    arrays, described = {}, []
    for spec in specs:
        entry = {"name": spec["name"], "kind": spec["kind"]}
        if spec["kind"] == "categorical":
            entry["vocabulary_size"] = len(spec["vocabulary"] or []) + 1
        elif spec["kind"] != "numeric":
            entry["vocabulary_size"] = spec["vocab_size"] + 1
            entry["table"] = spec["table"]
            entry["maxlen"] = spec.get("length")
        described.append(entry)
    for split in ("train", "valid", "test"):
        columns: dict[str, list] = {}
        for features, labels, _ in make_dataset(manifest, split, 65536, tasks, shuffle=False,
                                                     in_order=_IN_ORDER.value).as_numpy_iterator():
            for spec in specs:
                x = features[spec["name"]]
                if spec["kind"] == "numeric":
                    x = ((x.astype(np.float32) - spec["mean"]) / spec["std"]).astype(np.float32)
                else:
                    x = _encode(spec, x)
                columns.setdefault(spec["name"], []).append(x)
            for t in _TASKS.value:
                columns.setdefault(f"label/{t}", []).append(labels[t].astype(np.float32))
        for k, v in columns.items():
            arrays[f"{split}/{k}"] = np.concatenate(v)
    np.savez(_OUT.value, **arrays)
    with open(_OUT.value.removesuffix(".npz") + ".json", "w") as f:
        json.dump({"features": described, "tasks": _TASKS.value,
                   "rows": {s: int(len(arrays[f"{s}/label/{_TASKS.value[0]}"])) for s in ("train", "valid", "test")}},
                  f, indent=1)
    print(json.dumps({"out": _OUT.value, "train": len(arrays[f"train/label/{_TASKS.value[0]}"]),
                      "test": len(arrays[f"test/label/{_TASKS.value[0]}"])}))


if __name__ == "__main__":
    app.run(main)
