"""Prepare throughput and peak memory, and reader throughput.

    python -m benchmarks.data_bench --rows=1000000,5000000 --repeats=3
    python -m benchmarks.data_bench --rows=1000000,3000000 --formats=csv,parquet --noreader

`--formats=csv,parquet` prepares the same generated rows from a CSV and
from a Parquet file written from it (`--row_group_rows` rows per row
group, the unit of work of a Parquet prepare), alternating the two.

Prepare runs as `mtlrec-prepare` in a subprocess; its memory is polled
(every 50 ms) over the whole process tree (main + workers): the peak of the
summed PSS (shared pages counted once: forked workers share the parent's)
and the peak RSS of the largest single process. The reader is timed over the train split
after a warm-up batch, in file order and in training (shuffled) order, with
its CPU time per million rows: on a shared host, throughput moves with other
tenants' load, CPU time much less. Prints one JSON line per row count.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import psutil
from absl import app, flags

from benchmarks import tree_memory

_ROWS = flags.DEFINE_list("rows", ["1000000", "5000000"], "Generated row counts.")
_REPEATS = flags.DEFINE_integer("repeats", 3, "Runs per size; medians are reported.")
_FORMATS = flags.DEFINE_list("formats", ["csv"], "Input formats to prepare from: csv, parquet (the same rows).")
_ROW_GROUP = flags.DEFINE_integer("row_group_rows", 131072, "Rows per Parquet row group (pyarrow writes 1048576 by "
                                  "default, Spark about 128 MB).")
_READER = flags.DEFINE_bool("reader", True, "Also time the reader over the prepared train split.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where CSVs and datasets go (default: a temp dir).")


def _prepare(csv: str, out: str) -> dict:
    proc = psutil.Popen(
        [sys.executable, "-m", "mtlrec.cli.prepare", f"--input={csv}", f"--output={out}", "--overwrite"],
        stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )
    seen = tree_memory.watch(proc, every=0.05)
    wall, tree_peak, single_peak = seen["wall_s"], seen["tree_peak_pss"], seen["single_peak_rss"]
    if proc.returncode:
        raise RuntimeError(f"prepare failed with status {proc.returncode}")
    summary = json.loads(proc.stdout.read())
    return {"wall_s": wall, "job_s": summary["seconds"], "rows": summary["rows_read"],
            "tree_peak_pss_mb": tree_peak / 2**20, "single_peak_rss_mb": single_peak / 2**20}


def _parquet_from_csv(csv: str, path: str, row_group_rows: int) -> None:
    """The CSV's rows as Parquet, streamed (the columns' types as pyarrow reads them)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    reader = pcsv.open_csv(csv, read_options=pcsv.ReadOptions(block_size=64 << 20))
    with pq.ParquetWriter(f"{path}.tmp", reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch, row_group_size=row_group_rows)
    os.replace(f"{path}.tmp", path)


def _read(out: str, shuffle: bool, batch_size: int = 4096) -> tuple[float, float]:
    """Rows/s and CPU seconds (this process, all threads) per million rows."""
    from mtlrec.data import read_columns

    ds = read_columns(out, "train", batch_size, shuffle=shuffle)
    it = iter(ds)
    next(it)  # warm-up: pipeline start-up is not throughput
    start, cpu = time.perf_counter(), time.process_time()
    n = 0
    for batch in it:
        n += int(batch["user_id"].shape[0])
    return n / (time.perf_counter() - start), (time.process_time() - cpu) / n * 1e6


def main(argv):
    del argv
    from mtlrec.pipelines import synthetic

    work = _WORKDIR.value or tempfile.mkdtemp(prefix="mtlrec-bench-")
    os.makedirs(work, exist_ok=True)
    for rows in map(int, _ROWS.value):
        csv = os.path.join(work, f"synthetic-{rows}.csv")
        if not os.path.exists(csv):
            synthetic.write_csv(csv, rows, seed=0)
        inputs = {"csv": csv}
        if "parquet" in _FORMATS.value:
            inputs["parquet"] = os.path.join(work, f"synthetic-{rows}-rg{_ROW_GROUP.value}.parquet")
            if not os.path.exists(inputs["parquet"]):
                _parquet_from_csv(csv, inputs["parquet"], _ROW_GROUP.value)
        out = os.path.join(work, f"ds-{rows}")
        runs: dict[str, list[dict]] = {f: [] for f in _FORMATS.value}
        for _ in range(_REPEATS.value):  # alternated: a noisy neighbour hits both formats alike
            for fmt in _FORMATS.value:
                runs[fmt].append(_prepare(inputs[fmt], out))
        for fmt, fmt_runs in runs.items():
            med = {k: statistics.median(r[k] for r in fmt_runs) for k in fmt_runs[0]}
            print(json.dumps({
                "rows": rows,
                "format": fmt,
                "input_mb": round(os.path.getsize(inputs[fmt]) / 2**20, 1),
                **({"row_group_rows": _ROW_GROUP.value} if fmt == "parquet" else {}),
                # Job: the run itself (manifest "seconds"); wall: plus ~1 s of
                # interpreter start-up and imports (pandas alone ~0.5 s).
                "prepare_rows_per_s_median": round(rows / med["job_s"]),
                "prepare_rows_per_s_wall_median": round(rows / med["wall_s"]),
                "prepare_job_s": [round(r["job_s"], 2) for r in fmt_runs],
                "prepare_wall_s": [round(r["wall_s"], 2) for r in fmt_runs],
                "tree_peak_pss_mb_median": round(med["tree_peak_pss_mb"]),
                "single_peak_rss_mb_median": round(med["single_peak_rss_mb"]),
            }), flush=True)
        if not _READER.value:
            continue
        _prepare(csv, out)
        reads = [_read(out, shuffle=False) for _ in range(_REPEATS.value)]
        shuffled = [_read(out, shuffle=True) for _ in range(_REPEATS.value)]
        print(json.dumps({
            "rows": rows,
            "reader_rows_per_s_median": round(statistics.median(r for r, _ in reads)),
            "reader_rows_per_s": [round(r) for r, _ in reads],
            "reader_cpu_s_per_m_rows_median": round(statistics.median(c for _, c in reads), 3),
            # Training order: seeded block shuffle + a row permutation per group.
            "shuffled_reader_rows_per_s_median": round(statistics.median(r for r, _ in shuffled)),
            "shuffled_reader_rows_per_s": [round(r) for r, _ in shuffled],
            "shuffled_reader_cpu_s_per_m_rows_median": round(statistics.median(c for _, c in shuffled), 3),
        }), flush=True)


if __name__ == "__main__":
    app.run(main)
