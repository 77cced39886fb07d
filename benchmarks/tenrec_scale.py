"""Tenrec at full size: a generated log, prepare, one PLE epoch and export
(`--stages`); APLE's parameter counts and export/load cost (the default).

    python -m benchmarks.tenrec_scale --stages=generate,prepare,train,export --workdir=bench/tenrec
    python -m benchmarks.tenrec_scale --stages=... --rows=12000000 --workdir=bench/tenrec12m   # a tenth
    python -m benchmarks.tenrec_scale --export

`--stages`: each stage runs as its own command (the CLI a user runs), its
wall time and the peak memory of its process tree measured from outside
(summed PSS of the process and its workers, sampled every 0.2 s; the
largest single RSS beside it):

- generate: `--rows` Tenrec-shaped rows (1,000,000 users, 2,300,000 items,
  `hist_1..10`) as CSV files, one per worker process (`--generate_workers`);
  the rows are `mtlrec.pipelines.synthetic.generate`'s, chunk for chunk;
- prepare: `mtlrec-prepare` of those files (80/10/10 split);
- train: one epoch of `experiments/ple.flags` (`--train_flags` add to it;
  `--train_steps` caps it for a projection instead of a whole epoch);
- export: `mtlrec-export` of the trained run (SavedModel).

Prints one JSON line per stage and a summary with rows/s per stage, disk
per 1M rows and the projected epoch time (train rows / examples/s). On a
GPU host the same command runs the train stage on the GPU; add
`--train_flags=--mixed_precision=mixed_bfloat16` (or mixed_float16) there.

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
import shlex
import shutil
import tempfile
import time

from absl import app, flags

_EXPORT = flags.DEFINE_bool("export", False, "Also time export and load of full-size APLE.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where the export (or the stages' files) go (default: a temp dir).")
_STAGES = flags.DEFINE_list("stages", [], "Run these stages at Tenrec's size instead: generate, prepare, train, export.")
_ROWS = flags.DEFINE_integer("rows", 120_000_000, "--stages: rows of the generated log (Tenrec QK-video: 120M).")
_USERS = flags.DEFINE_integer("users", 1_000_000, "--stages: users of the generated log.", lower_bound=1)
_ITEMS = flags.DEFINE_integer("items", 2_300_000, "--stages: items of the generated log.", lower_bound=1)
_GEN_WORKERS = flags.DEFINE_integer("generate_workers", 2, "--stages: processes writing the CSV files.", lower_bound=1)
_CHUNK_ROWS = flags.DEFINE_integer("chunk_rows", 500_000, "--stages: rows per generated chunk.", lower_bound=1)
_TRAIN_FLAGS = flags.DEFINE_string("train_flags", "", "--stages: more mtlrec-train flags, space-separated, e.g. "
                                    "'--mixed_precision=mixed_bfloat16 --tasks=click,like'.")
_TRAIN_STEPS = flags.DEFINE_integer("train_steps", None, "--stages: cap the epoch at this many steps (a projection).")

TENREC_ROWS = {"user_id": 1_000_000, "item_id": 2_300_000, "video_category": 50, "gender": 3, "age": 10}


def _manifest(sizes):
    from mtlrec.config import tenrec_schema
    from mtlrec.data.manifest import Manifest

    vocab = {**sizes, "hist": sizes["item_id"]}
    splits = {"train": {"rows": 1, "files": [], "positive_rate": {"click": 0.24, "like": 0.02, "share": 0.006}}}
    return Manifest(root=".", schema=tenrec_schema(), vocab_size=vocab, splits=splits, numeric_stats={},
                    vocab_files={}, raw={})


def _write_part(path: str, world, rows: int, part: int, parts: int, chunk_rows: int, seed: int) -> None:
    """Chunks part, part + parts, ... of `synthetic.generate(rows, seed)` as one CSV (atomically)."""
    import numpy as np

    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as f:
        for i, start in enumerate(range(part * chunk_rows, rows, parts * chunk_rows)):
            k = start // chunk_rows
            frame = world.sample(min(chunk_rows, rows - start), np.random.default_rng([seed, 2, k]), False)
            frame.to_csv(f, header=i == 0, index=False)
    os.replace(tmp, path)


def generate_log(out: str, rows: int, workers: int, seed: int = 0, users: int = TENREC_ROWS["user_id"],
                 items: int = TENREC_ROWS["item_id"], chunk_rows: int = 500_000) -> list[str]:
    """The CSV files of the generated log: one World, forked into `workers`
    processes that each write every `workers`-th chunk."""
    import multiprocessing

    from mtlrec.pipelines import synthetic

    os.makedirs(out, exist_ok=True)
    world = synthetic.World(users, items, seed)
    workers = min(workers, -(-rows // chunk_rows))  # no worker without a chunk
    paths = [os.path.join(out, f"part-{i:02d}.csv") for i in range(workers)]
    ctx = multiprocessing.get_context("fork")  # the workers share the World's arrays
    procs = [ctx.Process(target=_write_part, args=(p, world, rows, i, workers, chunk_rows, seed))
             for i, p in enumerate(paths)]
    for proc in procs:
        proc.start()
    for proc in procs:
        proc.join()
        if proc.exitcode:
            raise RuntimeError(f"a generate worker failed with status {proc.exitcode}")
    return paths


def _measured(cmd: list[str], log: str) -> dict:
    """Runs `cmd`; its wall seconds and its process tree's peak memory."""
    import subprocess
    import sys

    import psutil

    from benchmarks import tree_memory

    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"}
    with open(log, "w") as out:
        proc = psutil.Popen([sys.executable, *cmd], stdout=out, stderr=subprocess.STDOUT, env=env)
        seen = tree_memory.watch(proc)
    if proc.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed with status {proc.returncode}; see {log}")
    return {"wall_s": round(seen["wall_s"], 1), "tree_peak_pss_mb": round(seen["tree_peak_pss"] / 2**20),
            "single_peak_rss_mb": round(seen["single_peak_rss"] / 2**20), "pss_timeline_mb": seen["timeline"]}


def _bytes(path: str) -> int:
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(path) for f in fs)


def run_stages(stages: list[str], work: str, rows: int) -> dict:
    """The --stages pipeline (see the module doc); returns the summary."""
    unknown = set(stages) - {"generate", "prepare", "train", "export"}
    if unknown:
        raise ValueError(f"--stages: unknown {sorted(unknown)}; expected generate, prepare, train, export")
    from mtlrec.provenance import host

    os.makedirs(work, exist_ok=True)
    csv_dir, data, run = (os.path.join(work, n) for n in ("csv", "data", "run"))
    results_path = os.path.join(work, "stages.json")
    results = json.load(open(results_path)) if os.path.exists(results_path) else {}
    results["host"] = host()
    results["rows"] = rows

    def done(stage, figures):
        results[stage] = figures
        print(json.dumps({"stage": stage, **figures}), flush=True)
        with open(results_path + ".tmp", "w") as f:
            json.dump(results, f, indent=1)
        os.replace(results_path + ".tmp", results_path)

    if "generate" in stages:
        code = (f"from benchmarks.tenrec_scale import generate_log; "
                f"generate_log({csv_dir!r}, {rows}, {_GEN_WORKERS.value}, users={_USERS.value}, items={_ITEMS.value}, "
                f"chunk_rows={_CHUNK_ROWS.value})")
        figures = _measured(["-c", code], os.path.join(work, "generate.log"))
        size = _bytes(csv_dir)
        done("generate", {**figures, "rows_per_s": round(rows / figures["wall_s"]), "csv_gb": round(size / 1e9, 2),
                          "csv_mb_per_1m_rows": round(size / 1e6 / (rows / 1e6), 1)})
    if "prepare" in stages:
        inputs = ",".join(sorted(os.path.join(csv_dir, f) for f in os.listdir(csv_dir) if f.endswith(".csv")))
        figures = _measured(["-m", "mtlrec.cli.prepare", f"--input={inputs}", f"--output={data}", "--overwrite",
                             "--noprogress"], os.path.join(work, "prepare.log"))
        size = _bytes(data)
        done("prepare", {**figures, "rows_per_s": round(rows / figures["wall_s"]), "dataset_gb": round(size / 1e9, 2),
                         "dataset_mb_per_1m_rows": round(size / 1e6 / (rows / 1e6), 1)})
    if "train" in stages:
        cmd = ["-m", "mtlrec.cli.train", "--flagfile=experiments/ple.flags", f"--data={data}", f"--model_dir={run}",
               "--epochs=1", "--overwrite", "--noexport", "--notensorboard", "--verbose=2", *shlex.split(_TRAIN_FLAGS.value)]
        if _TRAIN_STEPS.value:
            cmd.append(f"--train_steps={_TRAIN_STEPS.value}")
        figures = _measured(cmd, os.path.join(work, "train.log"))
        metrics = json.load(open(os.path.join(run, "metrics.json")))
        train_rows = json.load(open(os.path.join(data, "manifest.json")))["splits"]["train"]["rows"]
        rate = metrics["train_examples_per_sec"]
        done("train", {**figures, "train_rows": train_rows, "train_seconds": round(metrics["train_seconds"], 1),
                       "examples_per_s": round(rate), "projected_epoch_min": round(train_rows / rate / 60, 1),
                       "peak_rss_mb_in_run": round(metrics["peak_rss_mb"]),
                       "test_auc": {t: round(v["auc"], 4) for t, v in metrics["test"].items() if isinstance(v, dict)},
                       "mixed_precision": metrics.get("mixed_precision"), "jit_compile": metrics.get("jit_compile"),
                       "params": metrics["params"]})
    if "export" in stages:
        figures = _measured(["-m", "mtlrec.cli.export", f"--model_dir={run}", f"--export_dir={run}/export"],
                            os.path.join(work, "export.log"))
        done("export", {**figures, "saved_model_gb": round(_bytes(os.path.join(run, "export")) / 1e9, 2)})
    return results


def main(argv):
    del argv
    if _STAGES.value:
        run_stages(_STAGES.value, _WORKDIR.value or tempfile.mkdtemp(prefix="mtlrec-tenrec-"), _ROWS.value)
        return
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
