"""`prepare`: CSV (plain or gzip) or Parquet, local or remote -> sharded TFRecords + manifest.

Streams the input in chunks of whole lines; worker processes parse, validate,
split and encode each chunk (`mtlrec.pipelines.parse`), the main process writes the
shards and merges the statistics. Output is atomic: everything is written to
`OUT.incomplete/` and renamed to `OUT` at the end (on object stores, where
directories cannot be renamed, the files are moved and `manifest.json` is
written last: a dataset without a manifest is never read).
"""

from __future__ import annotations

import concurrent.futures as cf
import csv
import dataclasses
import datetime
import gzip
import io
import itertools
import json
import math
import multiprocessing
import os
import sys
import tempfile
import time
import zlib
from collections import Counter
from collections.abc import Iterator

import numpy as np
from absl import logging

from mtlrec import io as mio
from mtlrec import outputs
from mtlrec.config import Schema
from mtlrec.data import records
from mtlrec.pipelines.leaks import LeakCheck
from mtlrec.pipelines.parse import (
    SPLITS,
    BadInputError,
    ChunkResult,
    ParquetPart,
    ParseContext,
    init_worker,
    is_parquet,
    order_kind_of,
    order_values,
    parquet_file,
    process_chunk,
    process_chunk_in_worker,
    release_memory,
    shard_name,
)

MANIFEST = "manifest.json"
REJECTED = "rejected.csv"


@dataclasses.dataclass(frozen=True)
class PrepareConfig:
    """Options of one prepare run (see `mtlrec-prepare --help`)."""

    output: str
    schema: Schema
    inputs: tuple[str, ...] = ()
    synthetic_rows: int | None = None
    splits: tuple[float, float, float] = (0.8, 0.1, 0.1)
    split_by: str | None = None
    # None: a seeded hash split; "input" or a column: time-ordered splits
    order_by: str | None = None
    seed: int = 0
    neg_ratio: float | None = None
    neg_label: str | None = None
    on_bad_rows: str = "fail"
    overwrite: bool = False
    workers: int = 0  # 0: one per core
    chunk_bytes: int = 8 << 20
    progress: bool | None = None  # None: only on a terminal
    # a previous dataset whose vocabularies this one continues (`continued_vocabularies`)
    vocab_from: str | None = None

    def __post_init__(self) -> None:
        if bool(self.inputs) == (self.synthetic_rows is not None):
            raise ValueError("Give either input files or synthetic_rows, not both or neither.")
        if self.synthetic_rows is not None and self.synthetic_rows < 1:
            raise ValueError(f"synthetic_rows must be >= 1. Received: {self.synthetic_rows}")
        if (len(self.splits) != 3 or not all(np.isfinite(self.splits)) or min(self.splits) < 0
                or abs(sum(self.splits) - 1) > 1e-6):
            raise ValueError(
                f"splits must be 3 non-negative fractions summing to 1 (train,valid,test). "
                f"Received: {self.splits}"
            )
        if self.on_bad_rows not in ("fail", "skip"):
            raise ValueError(f"on_bad_rows must be 'fail' or 'skip'. Received: {self.on_bad_rows!r}")
        if self.neg_ratio is not None and self.neg_ratio <= 0:
            raise ValueError(f"neg_ratio must be > 0. Received: {self.neg_ratio}")
        if self.split_by is not None and self.split_by not in self.schema.columns:
            raise ValueError(
                f"split_by={self.split_by!r} is not a column of the schema: {self.schema.columns}"
            )
        if self.order_by is not None:
            if self.split_by is not None:
                raise ValueError(f"--order_by={self.order_by} and --split_by={self.split_by}: an ordered split "
                                 "keeps time order, a split by column keeps a column's rows together; choose one")
            if self.order_by != "input" and self.order_by not in self.schema.columns:
                raise ValueError(f"--order_by={self.order_by}: expected 'input' or a column of the schema "
                                 f"{list(self.schema.columns)} (an order column that is not a feature goes in the "
                                 "schema's \"ignore\")")
        if self.neg_label is not None:
            self.schema.label(self.neg_label)


def parent_dataset(config: PrepareConfig):
    """The dataset `--vocab_from` names (a `Manifest`), checked to take the
    same schema; None without `vocab_from`.

    Continuing it (`_Merged.manifest`): every categorical value keeps its
    index and new values (their `min_count` applied) are appended; id
    tables grow to cover new ids and never shrink; hashed ids keep their
    buckets; numeric features keep the parent's normalisation (this
    split's own statistics are recorded as `train_numeric_stats`), so a
    model trained on the parent reads the new rows the way it read the old.
    """
    if config.vocab_from is None:
        return None
    from mtlrec.data.manifest import load_manifest
    from mtlrec.rundir import differences

    try:
        parent = load_manifest(config.vocab_from)
    except (FileNotFoundError, ValueError) as e:
        raise ValueError(f"--vocab_from={config.vocab_from}: {e}") from None
    diff = differences(parent.schema.to_json(), config.schema.to_json())
    if diff:
        raise ValueError(f"--vocab_from={config.vocab_from}: its schema differs from this one "
                         f"({'; '.join(diff)}); a dataset continues one with the same schema")
    if os.path.abspath(parent.root) == os.path.abspath(config.output.rstrip("/")) and not mio.is_remote(parent.root):
        raise ValueError(f"--vocab_from={config.vocab_from} is --output: name the previous dataset and a new "
                         "output, e.g. --vocab_from=data/day1 --output=data/day2")
    return parent


def _open_input(path: str) -> io.BufferedIOBase:
    raw = mio.open_binary(path)
    head = raw.peek(2)[:2] if hasattr(raw, "peek") else b""
    if path.endswith(".gz") or head == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb")  # type: ignore[return-value]
    return raw  # type: ignore[return-value]


def _read(stream, path: str, size: int, lines_before: int) -> bytes:
    try:
        return stream.read(size)
    except (EOFError, gzip.BadGzipFile, zlib.error) as e:
        raise BadInputError(
            f"{path}: truncated or corrupt gzip stream after line {lines_before}: {e}"
        ) from e


def read_header(path: str) -> list[str]:
    """The input's column names: a CSV's header line, a Parquet file's schema."""
    if is_parquet(path):
        pf = parquet_file(path)
        try:
            return list(pf.schema_arrow.names)
        finally:
            pf.close()
    with _open_input(path) as f:
        first = b""
        while b"\n" not in first:
            more = _read(f, path, 1 << 16, 0)
            if not more:
                break
            first += more
    line = first.split(b"\n", 1)[0].rstrip(b"\r").removeprefix(b"\xef\xbb\xbf")  # a UTF-8 BOM
    line = line.decode("utf-8", errors="replace")
    if not line.strip():
        raise BadInputError(f"{path}: file is empty: expected a header line")
    return next(csv.reader([line]))


def check_header(schema: Schema, header: list[str], path: str) -> None:
    """Header must name each schema column once, and nothing else."""
    dupes = sorted({c for c in header if header.count(c) > 1})
    if dupes:
        raise BadInputError(f"{path}:1: header names column(s) {dupes} more than once")
    missing = [c for c in schema.columns if c not in header]
    if missing:
        raise BadInputError(
            f"{path}:1: header lacks column(s) {missing}; the schema expects {list(schema.columns)}"
        )
    extra = [c for c in header if c not in schema.columns]
    if extra:
        raise BadInputError(
            f"{path}:1: header has column(s) {extra} that the schema does not know; "
            "remove them or list them in the schema's `ignore`"
        )


def iter_chunks(path: str, chunk_bytes: int) -> Iterator[tuple[bytes, int]]:
    """Yields (whole lines, line number of the first) after the header."""
    with _open_input(path) as f:
        buf = b""
        line = 1  # 1-based line number of buf's first line
        header_done = False
        while True:
            more = _read(f, path, chunk_bytes, line)
            buf += more
            if not header_done:
                if b"\n" not in buf and more:
                    continue
                buf = buf.split(b"\n", 1)[1] if b"\n" in buf else b""
                header_done, line = True, 2
            cut = buf.rfind(b"\n") + 1 if more else len(buf)
            if cut > 0:
                chunk, buf = buf[:cut], buf[cut:]
                yield chunk, line
                line += chunk.count(b"\n")
            if not more:
                return


def iter_parts(path: str, chunk_bytes: int) -> Iterator[tuple[bytes | ParquetPart, int]]:
    """The input's units of work with the line number of their first row:
    whole CSV lines (`iter_chunks`), or a Parquet file's row groups (each
    row r of the file counted as line r + 2, as if under a CSV header)."""
    if not is_parquet(path):
        yield from iter_chunks(path, chunk_bytes)
        return
    pf = parquet_file(path)
    try:
        sizes = [pf.metadata.row_group(i).num_rows for i in range(pf.metadata.num_row_groups)]
    finally:
        pf.close()
    line = 2
    for i, n in enumerate(sizes):
        if n:
            yield ParquetPart(i), line
        line += n


def _count_rows(path: str, chunk_bytes: int) -> int:
    if is_parquet(path):
        pf = parquet_file(path)
        try:
            return pf.metadata.num_rows
        finally:
            pf.close()
    total = 0
    for chunk, _ in iter_chunks(path, chunk_bytes):
        total += chunk.count(b"\n") + (0 if chunk.endswith(b"\n") else 1)
    return total


def _read_column(path: str, header: list[str], column: str, chunk_bytes: int) -> Iterator[tuple[np.ndarray, int]]:
    """One column of the input, part by part, with each part's first line
    number: as text for CSV, in its own type for Parquet (`line_of` gives a
    value's line)."""
    import pandas as pd

    if is_parquet(path):
        pf = parquet_file(path)
        try:
            line = 2
            for i in range(pf.metadata.num_row_groups):
                values = pf.read_row_group(i, columns=[column]).column(column)
                if values.null_count:
                    row = int(np.flatnonzero(values.is_null().to_numpy(zero_copy_only=False))[0]) + line - 1
                    raise BadInputError(f"{path}: row {row}: column '{column}': received a null, expected a number "
                                        "or a time")
                yield values.to_numpy(zero_copy_only=False), line
                line += len(values)
        finally:
            pf.close()
        return
    for chunk, first_line in iter_chunks(path, chunk_bytes):
        yield pd.read_csv(io.BytesIO(chunk), header=None, names=header, usecols=[column], dtype=str,
                          na_filter=False, skip_blank_lines=True)[column].to_numpy(), first_line


def _line_of(path: str, chunk_bytes: int, first_line: int, index: int) -> int:
    """The line of the `index`-th row of the CSV chunk that begins at
    `first_line` (blank lines hold no row)."""
    for chunk, line in iter_chunks(path, chunk_bytes):
        if line == first_line:
            return [first_line + i for i, text in enumerate(chunk.split(b"\n")) if text.strip(b"\r")][index]
    return first_line + index


def _fraction_index(fraction: float, n: int) -> int:
    return min(n, math.floor(fraction * n + 1e-9))


def _input_order(config: PrepareConfig) -> tuple[dict, dict]:
    """The ordered split by the input's row order: a first pass counts each
    file's data lines; returns (ParseContext fields, manifest record)."""
    offsets, total = [], 0
    for path in config.inputs:
        offsets.append(total)
        total += _count_rows(path, config.chunk_bytes)
    train, valid = config.splits[0], config.splits[0] + config.splits[1]
    edges = (_fraction_index(train, total), _fraction_index(valid, total))
    record = {"kind": "ordered", "by": "input", "fractions": list(config.splits), "rows_in_order": total,
              "valid_from_row": edges[0], "test_from_row": edges[1],
              "files": [{"path": p, "first_row": o} for p, o in zip(config.inputs, offsets)]}
    return {"order_edges": edges, "file_offsets": tuple(offsets)}, record


def _column_order(config: PrepareConfig, header: list[str]) -> tuple[dict, dict]:
    """The ordered split by a column's values: a first pass reads that
    column (8 bytes a row in memory), checks every value and finds the
    values where valid and test begin. Rows tied with such a value go to
    the later split, so no valid or test timestamp is also in train."""
    import pandas as pd

    column, kind, parts = config.order_by, None, []
    for path in config.inputs:
        for raw, first_line in _read_column(path, header, column, config.chunk_bytes):
            if not len(raw):
                continue
            if kind is None:
                kind = "time" if raw.dtype.kind == "M" else "number" if raw.dtype.kind in "iuf" else order_kind_of(raw[0])
                if kind is None:
                    raise BadInputError(f"{path}:{first_line}: column '{column}': received {raw[0]!r}, expected a "
                                        "number or an ISO 8601 time (--order_by)")
            values, bad = order_values(raw, kind)
            if bad is not None:
                where = (f"{path}: row {first_line + bad - 1}" if is_parquet(path)
                         else f"{path}:{_line_of(path, config.chunk_bytes, first_line, bad)}")
                raise BadInputError(f"{where}: column '{column}': received {raw[bad]!r}, expected a "
                                    f"{kind} like the first rows' (--order_by)")
            parts.append(values)
    values = np.concatenate(parts) if parts else np.zeros(0)
    n = len(values)
    at = [_fraction_index(config.splits[0], n), _fraction_index(config.splits[0] + config.splits[1], n)]
    inside = [i for i in at if i < n]
    ordered = np.partition(values, inside) if inside else values
    top = np.inf if kind != "time" else np.iinfo(np.int64).max
    edges = tuple(ordered[i].item() if i < n else top for i in at)

    def shown(v):
        if kind == "time" and v != top:
            return pd.Timestamp(v, tz="UTC").isoformat()
        return None if v in (np.inf, top) else v

    record = {"kind": "ordered", "by": column, "value_kind": kind, "fractions": list(config.splits),
              "rows_in_order": n, "valid_from": shown(edges[0]), "test_from": shown(edges[1])}
    return {"order_edges": edges, "order_kind": kind}, record


def _count_labels(path: str, label: str, chunk_bytes: int) -> tuple[int, int]:
    import pandas as pd

    pos = neg = 0
    header = read_header(path)
    for values, _ in _read_column(path, header, label, chunk_bytes):
        col = pd.Series(values).astype(str) if is_parquet(path) else pd.Series(values)
        col = col.replace({"True": "1", "False": "0"})
        pos += int((col == "1").sum())
        neg += int((col == "0").sum())
    return pos, neg


class _Progress:
    """A progress bar on a terminal; elsewhere (a log file, CI) a log line
    every `every` seconds, unless progress is turned off."""

    def __init__(self, enabled: bool | None, every: float = 10.0):
        from tqdm import tqdm

        tty = sys.stderr.isatty()
        self.bar = tqdm(unit=" rows", unit_scale=True, disable=not (tty if enabled is None else enabled),
                        smoothing=0.1)
        self.lines = enabled is None and not tty
        self.every, self.rows, self.start = every, 0, time.monotonic()
        self.last = self.start

    def update(self, rows: int) -> None:
        self.bar.update(rows)
        self.rows += rows
        now = time.monotonic()
        if self.lines and now - self.last >= self.every:
            self.last = now
            logging.info("prepared %d rows (%.0f rows/s)", self.rows, self.rows / max(now - self.start, 1e-9))

    def close(self) -> None:
        self.bar.close()


def _staging_dir(output: str) -> str:
    return output.rstrip("/") + ".incomplete"


STAGING_MARKER = outputs.KINDS["staging"][1][0]


def _mark_staging(staging: str) -> None:
    """Marks `staging` as prepare's own. The marker is created in place, not
    through a temporary file: its existence is what counts, so a kill while it
    is written still leaves a folder the next run recognises and clears."""
    text = b"mtlrec-prepare writes here; removed when done\n"
    if mio.is_remote(staging):
        mio.write_atomic(mio.join(staging, STAGING_MARKER), text)
        return
    with open(os.path.join(staging, STAGING_MARKER), "wb") as f:
        f.write(text)


def _replaced_dir(output: str, pid: int) -> str:
    """Where a replaced dataset waits for deletion while the new one moves in
    (a SIGKILL between the two renames leaves it; the next run removes it)."""
    head, tail = os.path.split(output)
    return os.path.join(head, f".{tail}.tmp-{pid}")


def _publish(staging: str, output: str, manifest: bytes) -> None:
    """Make the staged dataset visible at `output` in one step.

    The staging marker goes last (a kill before that leaves a staging
    directory the next run recognises, or a dataset with a stray marker)."""
    if not mio.is_remote(output):
        mio.write_atomic(os.path.join(staging, MANIFEST), manifest)
        old = None
        if os.path.isdir(output) and os.listdir(output):  # a dataset being replaced (checked by `claim`)
            old = _replaced_dir(output, os.getpid())
            os.rename(output, old)
        os.rename(staging, output)  # also replaces an empty directory
        mio.remove(os.path.join(output, STAGING_MARKER))
        if old:
            mio.rmtree(old)
        return
    g = mio.gfile()
    if g.exists(output):
        if g.exists(mio.join(output, MANIFEST)):
            g.remove(mio.join(output, MANIFEST))  # unpublish first
        mio.rmtree(output)
    for dirpath, _, files in g.walk(staging):
        rel = dirpath[len(staging):].strip("/")
        target_dir = mio.join(output, rel) if rel else output
        g.makedirs(target_dir)
        for name in files:
            if name == STAGING_MARKER and not rel:
                continue
            g.rename(mio.join(dirpath, name), mio.join(target_dir, name), overwrite=True)
    mio.write_atomic(mio.join(output, MANIFEST), manifest)
    mio.rmtree(staging)


def prepare(config: PrepareConfig) -> dict:
    """Runs the job; returns the manifest (also written to OUT/manifest.json)."""
    output = config.output.rstrip("/") if mio.is_remote(config.output) else os.path.abspath(config.output)
    if outputs.claim(config.output, "dataset", "output", config.inputs) == outputs.OURS and not config.overwrite:
        raise FileExistsError(
            f"{output} already holds a dataset ({MANIFEST}); pass --overwrite (overwrite=True in "
            "PrepareConfig) to replace it"
        )
    if not mio.is_remote(output) and outputs.holds_cwd(output):
        raise FileExistsError(
            f"--output={config.output} is the working directory or holds it: a dataset is published by renaming "
            "a folder into place, which would replace the folder this shell is in; choose a new folder, e.g. "
            "--output=data/tenrec"
        )
    staging = _staging_dir(output)
    outputs.claim(staging, "staging", "output", config.inputs)  # a leftover of ours is cleared below
    if not mio.is_remote(output):
        mio.remove_stale_temp(os.path.dirname(output), f".{os.path.basename(output)}.tmp-")
    if config.synthetic_rows is not None:
        from mtlrec.pipelines import synthetic

        with tempfile.TemporaryDirectory(prefix="mtlrec-synth-") as tmp:
            # --order_by=input: a time-ordered log, split by time; otherwise independent rows.
            path = synthetic.write_csv(os.path.join(tmp, "synthetic.csv"), config.synthetic_rows, config.seed,
                                       ordered=config.order_by == "input")
            manifest = prepare(dataclasses.replace(config, output=output, inputs=(path,), synthetic_rows=None))
        return manifest
    started = time.time()
    parent = parent_dataset(config)  # before any work: a dataset to continue that does not fit stops here
    kinds = {is_parquet(p) for p in config.inputs}
    if len(kinds) > 1:
        raise BadInputError(f"--input: {', '.join(config.inputs)} mixes CSV and Parquet files; prepare one format "
                            "at a time")
    headers = [read_header(p) for p in config.inputs]
    for path, header in zip(config.inputs, headers):
        check_header(config.schema, header, path)
        if is_parquet(path):  # columns are read by name
            header = [c for c in headers[0] if c in header]
        if header != headers[0]:
            raise BadInputError(
                f"{path}:1: header mismatch: received {header}, but "
                f"{config.inputs[0]} has {headers[0]} (all inputs need one column order)"
            )
    neg_label = config.neg_label or next(
        (lb.name for lb in config.schema.labels if lb.kind == "binary"), None
    )
    keep_rate = 1.0
    if config.neg_ratio is not None:
        pos = neg = 0
        for path in config.inputs:
            p, n = _count_labels(path, neg_label, config.chunk_bytes)
            pos, neg = pos + p, neg + n
        keep_rate = min(1.0, config.neg_ratio * pos / max(neg, 1))
        logging.info("Negative sampling on %s: %d positives, %d negatives, keep rate %.4f",
                     neg_label, pos, neg, keep_rate)
    order: dict = {}
    split = {"kind": "hash", "by": config.split_by or "row", "fractions": list(config.splits), "seed": config.seed}
    if config.order_by == "input":
        order, split = _input_order(config)
    elif config.order_by is not None:
        order, split = _column_order(config, headers[0])
    if split["kind"] == "ordered":
        logging.info("Ordered split by %s: %s", config.order_by,
                     ", ".join(f"{k}={v}" for k, v in split.items() if k.endswith(("_from", "_row", "in_order"))))
    ctx = ParseContext(
        schema=config.schema, header=tuple(headers[0]), split_fractions=tuple(config.splits),
        seed=config.seed, split_by=config.split_by,
        neg_label=neg_label if config.neg_ratio is not None else None,
        neg_keep_rate=keep_rate, on_bad_rows=config.on_bad_rows,
        order_by=config.order_by, **order,
    )
    if not mio.is_remote(staging):
        ctx = dataclasses.replace(ctx, write_dir=staging)
    try:  # from the first directory made: an interrupt at any point (SIGTERM included) leaves no staging folder
        mio.rmtree(staging)  # leftovers of an interrupted run (`claim` checked it is ours)
        mio.makedirs(staging)
        _mark_staging(staging)
        return _prepare_into(config, ctx, headers[0], staging, output, keep_rate, started, split, parent)
    except BaseException:
        mio.rmtree(staging)  # a failed run leaves nothing
        raise


def _prepare_into(config: PrepareConfig, ctx: ParseContext, header: list[str], staging: str, output: str,
                  keep_rate: float, started: float, split_record: dict, parent=None) -> dict:
    for split in SPLITS:
        mio.makedirs(mio.join(staging, split))
    merged = _Merged(config.schema)
    # Anonymous (unlinked at once): nothing is left behind, even by a SIGKILL.
    rejected_tmp = tempfile.TemporaryFile("w+", suffix=".csv", encoding="utf-8")
    rejected_tmp.write(",".join(header) + "\n")
    progress = _Progress(config.progress)

    def consume(result: ChunkResult) -> None:
        for split, data in result.encoded.items():
            name = shard_name(split, result.file_index, result.chunk_index)
            if ctx.write_dir is None:
                mio.write_atomic(mio.join(staging, name), data)
            merged.files[split].append((name, result.rows[split], *result.shard_info[split]))
        merged.add(result)
        for _, raw, _ in result.rejected:
            rejected_tmp.write(raw.rstrip("\r") + "\n")
        progress.update(result.rows_read)
        release_memory()

    tasks = (
        (chunk, path, fi, ci, line)
        for fi, path in enumerate(config.inputs)
        for ci, (chunk, line) in enumerate(iter_parts(path, config.chunk_bytes))
    )
    with rejected_tmp:
        try:
            _run(ctx, tasks, consume, config.workers or os.cpu_count() or 1)
        finally:
            progress.close()
        if merged.rows_read == 0:
            raise BadInputError(f"{', '.join(config.inputs)}: no data rows after the header")
        if merged.rejected:
            rejected_tmp.seek(0)
            mio.write_atomic(mio.join(staging, REJECTED), rejected_tmp.read().encode("utf-8"))
    manifest = merged.manifest(config, keep_rate, staging, parent)
    manifest["split"] = split_record
    manifest["leak_warnings"] = merged.leaks.warnings()
    for warning in manifest["leak_warnings"]:
        logging.warning("possible label leak: %s", warning)
    manifest["seconds"] = round(time.time() - started, 3)
    _publish(staging, output, json.dumps(manifest, indent=1).encode())
    return manifest


def _run(ctx: ParseContext, tasks, consume, workers: int) -> None:
    """Process chunks in order, in worker processes when there is more than one."""
    first = next(tasks, None)
    if first is None:
        return
    second = next(tasks, None)
    # chain, never (first, second, *tasks): unpacking would read the whole input.
    stream = itertools.chain([first], [second] if second is not None else [], tasks)
    if second is None or workers == 1:
        for task in stream:
            consume(process_chunk(ctx, *task))
        return
    # Fork is cheapest, but a parent running TensorFlow's threads must not
    # fork (locks held by other threads would stay held in the child).
    mp = multiprocessing.get_context("spawn" if "tensorflow" in sys.modules else "fork")
    with cf.ProcessPoolExecutor(workers, mp_context=mp, initializer=init_worker, initargs=(ctx,)) as pool:
        pending: list[cf.Future] = []
        for task in stream:
            pending.append(pool.submit(process_chunk_in_worker, task))
            if len(pending) >= 2 * workers:  # bounded memory: few chunks in flight
                consume(pending.pop(0).result())
        for fut in pending:
            consume(fut.result())


class _Merged:
    """Statistics merged over chunks."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.files: dict[str, list[tuple[str, int, int, int]]] = {s: [] for s in SPLITS}
        self.distinct: Counter = Counter()
        self.rows = Counter()
        self.positives = {s: Counter() for s in SPLITS}
        self.max_id: dict[str, int] = {}
        self.counts = {f.name: Counter() for f in schema.features if f.kind == "categorical"}
        self.moments = {f.name: np.zeros(3) for f in schema.features if f.kind == "numeric"}
        self.rejected: list[tuple[int, str, str]] = []
        self.rows_read = self.rows_dropped = 0
        self.leaks = LeakCheck(schema)

    def add(self, r: ChunkResult) -> None:
        self.rows.update(r.rows)
        for s in SPLITS:
            self.positives[s].update(r.positives[s])
        for k, v in r.max_id.items():
            self.max_id[k] = max(self.max_id.get(k, -1), v)
        self.distinct.update(r.distinct)
        for k, c in r.counts.items():
            self.counts[k].update(c)
        for k, m in r.moments.items():
            self.moments[k] += m
        self.rejected.extend(r.rejected)
        self.leaks.add(r.leak_sample)
        self.rows_read += r.rows_read
        self.rows_dropped += r.rows_dropped

    def manifest(self, config: PrepareConfig, keep_rate: float, staging: str, parent=None) -> dict:
        """The manifest of the merged chunks. With `parent` (a `Manifest`,
        `--vocab_from`), its vocabularies continued: see `continued_vocabularies`."""
        schema = self.schema
        vocab_size: dict[str, int] = {}
        vocab_files: dict[str, str] = {}
        numeric_stats: dict[str, dict[str, float]] = {}
        for f in schema.features:
            if f.kind in ("id", "sequence"):
                owner = schema.feature(f.vocab_from or f.name)
                vocab_size[f.name] = owner.hash_buckets or self.max_id.get(owner.name, -1) + 1
                if parent is not None and not owner.hash_buckets:  # ids grow, never shrink
                    vocab_size[f.name] = max(vocab_size[f.name], int(parent.vocab_size[f.name]))
            elif f.kind == "categorical":
                kept = [v for v, _ in sorted(
                    ((v, n) for v, n in self.counts[f.name].items() if n >= f.min_count),
                    key=lambda vn: (-vn[1], vn[0]),
                )]
                if parent is not None:  # every old value keeps its index; new ones come after
                    old = parent.vocabulary(f.name)
                    known = set(old)
                    kept = old + [v for v in kept if v not in known]
                rel = f"vocab/{f.name}.txt"
                mio.makedirs(mio.join(staging, "vocab"))
                mio.write_atomic(mio.join(staging, rel), "".join(f"{v}\n" for v in kept).encode())
                vocab_files[f.name] = rel
                vocab_size[f.name] = len(kept) + 1  # index 0: out of vocabulary
            else:
                s, ss, n = self.moments[f.name]
                mean = s / max(n, 1)
                std = float(np.sqrt(max(ss / max(n, 1) - mean * mean, 0.0)))
                if not (np.isfinite(mean) and np.isfinite(std)):
                    raise BadInputError(f"feature '{f.name}': mean {mean} / std {std} of the train split are not "
                                        "finite in float64; rescale the column")
                numeric_stats[f.name] = {"mean": mean, "std": std}
        own_numeric_stats = numeric_stats
        if parent is not None:  # a continued model keeps normalising as before
            numeric_stats = {name: dict(stats) for name, stats in parent.numeric_stats.items()}
        splits = {}
        for s in SPLITS:
            files = sorted(self.files[s])
            rows = int(self.rows[s])
            splits[s] = {
                "rows": rows,
                "files": [name for name, *_ in files],
                "file_rows": [n for _, n, _, _ in files],
                "file_bytes": [size for _, _, size, _ in files],
                "file_crc32c": [crc for *_, crc in files],
                "positive_rate": {
                    lb.name: (self.positives[s][lb.name] / rows if rows else 0.0)
                    for lb in schema.labels
                },
            }
        return {
            "format_version": records.FORMAT_VERSION,
            "block_rows": records.BLOCK_ROWS,
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "inputs": list(config.inputs),
            "schema": schema.to_json(),
            "vocab_size": vocab_size,
            # Per id vocabulary: the sum of each chunk's distinct train ids, an
            # upper bound of the distinct ids (training compares it with
            # vocab_size to catch sparse ids that would size a giant table).
            "id_distinct_at_most": dict(self.distinct),
            "vocab_files": vocab_files,
            "numeric_stats": numeric_stats,
            "splits": splits,
            "seed": config.seed,
            "split_fractions": list(config.splits),
            "split_by": config.split_by,
            "neg_ratio": config.neg_ratio,
            "neg_keep_rate": keep_rate,
            "rows_read": self.rows_read,
            "rows_rejected": len(self.rejected),
            "rows_dropped_by_sampling": self.rows_dropped,
            "rejected_examples": [why for _, _, why in self.rejected[:20]],
            **({"parent": {"path": parent.root, "created": parent.raw.get("created"),
                           "fingerprint": parent.fingerprint()},
                "train_numeric_stats": own_numeric_stats} if parent is not None else {}),
        }
