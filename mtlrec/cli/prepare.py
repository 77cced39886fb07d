"""mtlrec-prepare: CSV or Parquet -> sharded TFRecord column blocks + manifest.json.

  mtlrec-prepare --input=ctr_data_1M.csv --output=data/tenrec
  mtlrec-prepare --synthetic_rows=1000000 --output=data/synthetic
  mtlrec-prepare --input=logs/2026-12-06/ --output=data/day6      # a folder of Parquet files
  mtlrec-prepare --input=log.csv --output=data/log --order_by=input   # train on the past, test on the future
  mtlrec-prepare --input=day2.csv --output=data/day2 --vocab_from=data/day1   # continue day 1's vocabularies
  mtlrec-prepare --csv=new_rows.csv --synthetic_rows=1000   # generated rows as a CSV (e.g. for mtlrec-predict)
"""

from __future__ import annotations

import glob
import json

from absl import flags

from mtlrec import io as mio
from mtlrec.cli.common import run
from mtlrec.config import load_schema

_INPUT = flags.DEFINE_list("input", None, "CSV file(s), plain or .gz, or Parquet files (.parquet) or folders of "
                           "them (Spark's, BigQuery's, pandas' output), local or s3://, hdfs://; globs allowed.")
_OUTPUT = flags.DEFINE_string("output", None, "Dataset directory to create (required unless --csv).")
_CSV = flags.DEFINE_string("csv", None, "Instead of a dataset, write --synthetic_rows generated Tenrec-shaped rows "
                           "(default 1000; time-ordered like the default data) to this CSV: every input column "
                           "mtlrec-predict needs for a model trained on the generated data, and the labels.")
_SCHEMA = flags.DEFINE_string("schema", "tenrec", "'tenrec' or a schema JSON file.")
_SYNTHETIC = flags.DEFINE_integer("synthetic_rows", None, "Write N generated Tenrec-shaped rows instead of --input.", lower_bound=1)
_SPLITS = flags.DEFINE_list("splits", ["0.8", "0.1", "0.1"], "train,valid,test fractions.")
_SPLIT_BY = flags.DEFINE_string("split_by", None, "Keep rows with the same value of this column in one split.")
_ORDER_BY = flags.DEFINE_string(
    "order_by", None, "Time-ordered splits: 'input' (the rows' order, files in the order given) or a column (numbers "
    "or ISO 8601 times; ties go to the later split): the first --splits fraction in that order is train, the next "
    "valid, the last test. Default: a seeded hash split.")
_SEED = flags.DEFINE_integer("seed", 0, "Seed of the split, the sampling and the generator.")
_NEG_RATIO = flags.DEFINE_float("neg_ratio", None, "Keep all positives and about K negatives per positive.")
_NEG_LABEL = flags.DEFINE_string("neg_label", None, "Label that down-sampling counts positives of (default: first binary label).")
_ON_BAD = flags.DEFINE_enum("on_bad_rows", "fail", ["fail", "skip"], "Stop at the first bad row, or skip bad rows into OUTPUT/rejected.csv.")
_OVERWRITE = flags.DEFINE_bool("overwrite", False, "Replace an existing dataset at --output.")
_WORKERS = flags.DEFINE_integer("workers", 0, "Worker processes (0: one per core).", lower_bound=0)
_CHUNK_BYTES = flags.DEFINE_integer("chunk_bytes", 8 << 20, "Bytes of CSV per work unit (and per shard file).", lower_bound=1024)
_VOCAB_FROM = flags.DEFINE_string(
    "vocab_from", None, "A previous dataset to continue (daily training): every categorical value keeps its index "
    "there and new values are appended, id tables grow to cover new ids, hashed ids keep their buckets, numeric "
    "features keep its normalisation; recorded as the manifest's parent. Same schema needed. Then "
    "mtlrec-train --warm_start=<the run on it> continues that run's model.")
_PROGRESS = flags.DEFINE_bool("progress", None, "Show a progress bar (default: on a terminal).")


def _expand(patterns: list[str]) -> tuple[str, ...]:
    paths: list[str] = []
    for p in patterns:
        if any(ch in p for ch in "*?["):
            found = sorted(mio.gfile().glob(p) if mio.is_remote(p) else glob.glob(p))
            if not found:
                raise FileNotFoundError(f"--input={p} matches no file")
            paths.extend(found)
        elif not mio.exists(p):
            raise FileNotFoundError(f"--input={p}: no such file")
        elif mio.isdir(p):  # a folder of Parquet files, e.g. part-00000-....snappy.parquet
            from mtlrec.pipelines.parse import is_parquet

            found = sorted(mio.join(p, name.rstrip("/")) for name in mio.listdir(p) if is_parquet(name.rstrip("/")))
            if not found:
                raise FileNotFoundError(f"--input={p} is a folder without .parquet files")
            paths.extend(found)
        else:
            paths.append(p)
    return tuple(paths)


def write_sample_csv(path: str, rows: int) -> int:
    """`--csv=FILE`: generated rows as a Tenrec CSV, written atomically; an
    existing file is replaced only with --overwrite."""
    from mtlrec.pipelines import synthetic

    for name, flag in (("input", _INPUT), ("output", _OUTPUT), ("vocab_from", _VOCAB_FROM)):
        if flag.value is not None:
            raise ValueError(f"--csv writes generated rows only: --{name} does not go with it")
    if mio.isdir(path):
        raise IsADirectoryError(f"--csv={path}: is a folder; expected a file name such as new_rows.csv")
    if mio.exists(path) and not _OVERWRITE.value:
        raise FileExistsError(f"--csv={path}: exists; pass --overwrite to replace it")
    synthetic.write_csv(path, rows, seed=_SEED.value, ordered=True)
    print(json.dumps({"csv": path, "rows": rows}))
    return 0


def main(argv: list[str]) -> int:
    del argv
    from mtlrec.pipelines.prepare import PrepareConfig, prepare

    if _CSV.value is not None:
        return write_sample_csv(_CSV.value, _SYNTHETIC.value or 1000)
    if _OUTPUT.value is None:
        raise ValueError("--output is required (see --help), or --csv=FILE to write generated rows as a CSV")
    if (_INPUT.value is None) == (_SYNTHETIC.value is None):
        raise ValueError("give exactly one of --input or --synthetic_rows")
    try:
        splits = tuple(float(x) for x in _SPLITS.value)
    except ValueError as e:
        raise ValueError(f"--splits={','.join(_SPLITS.value)}: expected 3 numbers") from e
    config = PrepareConfig(
        output=_OUTPUT.value,
        schema=load_schema(_SCHEMA.value),
        inputs=_expand(_INPUT.value) if _INPUT.value else (),
        synthetic_rows=_SYNTHETIC.value,
        splits=splits,  # type: ignore[arg-type]
        split_by=_SPLIT_BY.value,
        order_by=_ORDER_BY.value,
        seed=_SEED.value,
        neg_ratio=_NEG_RATIO.value,
        neg_label=_NEG_LABEL.value,
        on_bad_rows=_ON_BAD.value,
        overwrite=_OVERWRITE.value,
        workers=_WORKERS.value,
        chunk_bytes=_CHUNK_BYTES.value,
        progress=_PROGRESS.value,
        vocab_from=_VOCAB_FROM.value,
    )
    m = prepare(config)
    summary = {
        "output": config.output,
        "rows_read": m["rows_read"],
        "rows_rejected": m["rows_rejected"],
        "rows_dropped_by_sampling": m["rows_dropped_by_sampling"],
        "seconds": m["seconds"],
        "rows_per_sec": round(m["rows_read"] / max(m["seconds"], 1e-9)),
        "splits": {s: {"rows": v["rows"], "positive_rate": v["positive_rate"]} for s, v in m["splits"].items()},
    }
    print(json.dumps(summary, indent=1))
    return 0


def entry_point() -> None:
    run(main)


if __name__ == "__main__":
    entry_point()
