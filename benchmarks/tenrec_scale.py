"""APLE at Tenrec vocabulary sizes: parameter counts, and export/load cost.

    python -m benchmarks.tenrec_scale --export

Tenrec QK-video 1M: 1,000,000 users, 2,300,000 items (shared by hist_1..10),
plus video_category, gender and age. Parameter counts: the embedding tables
are counted from their row counts (exact: `embedding_params`, checked
against the layers in tests), the rest of each network by building it on a
small vocabulary (it does not depend on vocabulary size). Memory is float32
weights, and x3 with LazyAdam's two moment slots per table.
With `--export`, APLE is built at full size, exported with
`mtlrec.export.export`, and loaded back with `tf.saved_model.load`.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import tempfile
import time

from absl import app, flags

_EXPORT = flags.DEFINE_bool("export", False, "Also time export and load of full-size APLE.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the export goes (default: a temp dir).")

TENREC_ROWS = {"user_id": 1_000_000, "item_id": 2_300_000, "video_category": 50, "gender": 3, "age": 10}


def _manifest(sizes):
    from mtlrec.config import tenrec_schema
    from mtlrec.data.manifest import Manifest

    vocab = {**sizes, "hist": sizes["item_id"]}
    splits = {"train": {"rows": 1, "files": [], "positive_rate": {"click": 0.24, "like": 0.02, "share": 0.006}}}
    return Manifest(root=".", schema=tenrec_schema(), vocab_size=vocab, splits=splits, numeric_stats={},
                    vocab_files={}, raw={})


def main(argv):
    del argv
    import numpy as np

    from mtlrec.config import ModelConfig
    from mtlrec.layers.multi_embedding import embedding_params
    from mtlrec.models import build_model

    tasks = ("click", "like", "share")
    # APLE's widths (seed 000): tasks 32 and 128, shared 64; PLE at width 64.
    cfg = ModelConfig(tasks=tasks, embedding_dim=64, expert_units=(256, 128, 64), tower_units=(64, 32),
                      num_task_experts=1, num_shared_experts=2, num_levels=2, ame_task_dims=(32, 128, 32),
                      ame_shared_dim=64, ame_rank=8)
    tiny = {k: 10 for k in TENREC_ROWS}
    table_rows = {k: v + 1 for k, v in TENREC_ROWS.items()}  # + the out-of-vocabulary row
    tiny_rows = {k: 11 for k in TENREC_ROWS}
    fields = 6  # user, item, category, gender, age, hist (hist shares item's table)
    rows = []
    for name, dims, rank in (("ple", None, None), ("aple", cfg.ame_task_dims, None), ("aple_lowrank", cfg.ame_task_dims, 8)):
        net = build_model(name, _manifest(tiny), cfg)
        if dims is None:
            emb_tiny = sum(tiny_rows.values()) * cfg.embedding_dim
            emb = sum(table_rows.values()) * cfg.embedding_dim
        else:
            emb_tiny = embedding_params(tiny_rows, fields, dims, cfg.ame_shared_dim, rank)
            emb = embedding_params(table_rows, fields, dims, cfg.ame_shared_dim, rank)
        dense = net.count_params() - emb_tiny
        total = emb + dense
        rows.append({"model": name, "embedding_params": emb, "other_params": dense, "total_params": total,
                     "weights_gb": round(total * 4 / 1e9, 3), "with_adam_slots_gb": round(total * 12 / 1e9, 3)})
        print(json.dumps(rows[-1]), flush=True)
    if not _EXPORT.value:
        return
    import tensorflow as tf

    from mtlrec.config import tenrec_schema
    from mtlrec.export import export

    work = _WORKDIR.value or tempfile.mkdtemp(prefix="mtlrec-tenrec-")
    start = time.perf_counter()
    net = build_model("aple", _manifest(TENREC_ROWS), cfg)
    build_s = time.perf_counter() - start
    start = time.perf_counter()
    path = export(net, tenrec_schema(), tasks, os.path.join(work, "aple"), version=1)
    export_s = time.perf_counter() - start
    size = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)
    del net
    start = time.perf_counter()
    loaded = tf.saved_model.load(path)
    load_s = time.perf_counter() - start
    fn = loaded.signatures["serving_default"]
    cols = {k: tf.constant(np.ones(4, v.dtype.as_numpy_dtype)) for k, v in fn.structured_input_signature[1].items()}
    start = time.perf_counter()
    fn(**cols)
    first_call_s = time.perf_counter() - start
    print(json.dumps({"model": "aple", "params": int(dataclasses.asdict(cfg) is not None and rows[1]["total_params"]),
                      "build_s": round(build_s, 1), "export_s": round(export_s, 1), "load_s": round(load_s, 1),
                      "first_call_s": round(first_call_s, 2), "saved_model_gb": round(size / 1e9, 3)}), flush=True)
    shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    app.run(main)
