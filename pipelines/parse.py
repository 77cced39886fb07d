"""Chunk parsing, validation and encoding: the work of prepare's workers.

Imports no TensorFlow, so worker processes start fast. A chunk is a run of
whole CSV lines; the result is the chunk's rows, split and encoded as
TFRecord column blocks, plus the statistics the manifest needs.
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import io
import os
from collections import Counter

import numpy as np
import pandas as pd

from mtlrec import io as mio
from mtlrec.config import Schema
from mtlrec.data import records

SPLITS = ("train", "valid", "test")
_INT_PATTERN = r"\d{1,18}"
_MAX_ROW_KEY = 1 << 40


class BadInputError(ValueError):
    """Input that breaks the schema; the message names file, line and column."""


@dataclasses.dataclass(frozen=True)
class ParseContext:
    schema: Schema
    header: tuple[str, ...]
    split_fractions: tuple[float, float, float]
    seed: int
    split_by: str | None = None
    neg_label: str | None = None
    neg_keep_rate: float = 1.0
    on_bad_rows: str = "fail"
    # A local staging directory: workers write their shards there directly
    # (no shard bytes through the parent). None: shards return as bytes.
    write_dir: str | None = None

    def kind_of(self, column: str) -> str:
        """'int', 'float', 'str', 'binary' or 'ignore' for a CSV column."""
        for f in self.schema.features:
            if column in f.columns:
                return {"id": "int", "sequence": "int", "numeric": "float"}.get(f.kind, "str")
        for label in self.schema.labels:
            if label.name == column:
                return "binary" if label.kind == "binary" else "float"
        return "ignore"


_EXPECTED = {
    "int": "a non-negative integer",
    "binary": "0 or 1",
    "float": "a finite number",
}
_PANDAS_DTYPE = {"int": "int64", "binary": "int64", "float": "float64", "str": "str", "ignore": "str"}


@dataclasses.dataclass
class ChunkResult:
    """What one chunk contributes to the dataset."""

    file_index: int
    chunk_index: int
    encoded: dict[str, bytes]
    rows: dict[str, int]
    positives: dict[str, dict[str, int]]
    max_id: dict[str, int]
    counts: dict[str, Counter]
    moments: dict[str, tuple[float, float, int]]
    rejected: list[tuple[int, str, str]]
    rows_read: int
    rows_dropped: int


def _fast_parse(ctx: ParseContext, chunk: bytes) -> pd.DataFrame | None:
    """Parse with pandas' C reader; None when anything needs a closer look."""
    if b"\n\n" in chunk or b"\n\r\n" in chunk or chunk.startswith((b"\n", b"\r\n")):
        return None  # blank lines shift line numbers: take the careful path
    ncols = len(ctx.header)
    if b'"' not in chunk:
        # Without quotes every line has ncols - 1 separators. Comparing totals
        # is enough: a short line is offset only by a long one, which the C
        # reader rejects ("Expected N fields").
        lines = chunk.count(b"\n") + (not chunk.endswith(b"\n"))
        if chunk.count(b",") != (ncols - 1) * lines:
            return None
    dtypes = {c: _PANDAS_DTYPE[ctx.kind_of(c)] for c in ctx.header}
    try:
        df = pd.read_csv(
            io.BytesIO(chunk), header=None, names=list(ctx.header), dtype=dtypes,
            na_filter=False, engine="c", skip_blank_lines=False,
        )
    except (ValueError, pd.errors.ParserError, OverflowError):
        return None
    for c in ctx.header:
        kind = ctx.kind_of(c)
        col = df[c].to_numpy()
        if kind == "int" and (col < 0).any():
            return None
        if kind == "binary" and ((col != 0) & (col != 1)).any():
            return None
        if kind == "float" and not np.isfinite(col).all():
            return None
        if kind in ("str", "ignore") and df[c].isna().any():
            return None
    return df


def _careful_parse(
    ctx: ParseContext, chunk: bytes, first_line: int, path: str
) -> tuple[bytes, np.ndarray, list[tuple[int, str, str]]]:
    """Find bad lines exactly. Returns (good lines, their line numbers, rejects)."""
    raw_lines = chunk.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    text_lines = [line.rstrip(b"\r").decode("utf-8", errors="replace") for line in raw_lines]
    bad: dict[int, str] = {}
    rows: list[list[str]] = []
    row_idx: list[int] = []
    for i, fields in enumerate(csv.reader(text_lines)):
        if not text_lines[i]:
            continue  # blank line: not a row
        if len(fields) != len(ctx.header):
            bad[i] = (
                f"wrong number of fields: received {len(fields)}, "
                f"expected {len(ctx.header)} ({','.join(ctx.header[:4])},...)"
            )
            continue
        rows.append(fields)
        row_idx.append(i)
    if rows:
        columns = list(zip(*rows))
        for j, name in enumerate(ctx.header):
            kind = ctx.kind_of(name)
            if kind in ("str", "ignore"):
                continue
            values = pd.Series(columns[j], dtype=object)
            if kind == "int":
                ok = values.str.fullmatch(_INT_PATTERN).to_numpy(bool)
            elif kind == "binary":
                ok = values.isin(["0", "1"]).to_numpy(bool)
            else:
                num = pd.to_numeric(values, errors="coerce").to_numpy(np.float64)
                ok = np.isfinite(num)
            for k in np.flatnonzero(~ok):
                i = row_idx[k]
                if i in bad:
                    continue
                value = columns[j][k]
                what = _EXPECTED[kind]
                if kind == "int" and value.lstrip().startswith("-"):
                    what += " (ids cannot be negative)"
                bad[i] = f"column '{name}': received {value!r}, expected {what}"
    rejects = [
        (first_line + i, raw_lines[i].decode("utf-8", "replace"), f"{path}:{first_line + i}: {bad[i]}")
        for i in sorted(bad)
    ]
    if rejects and ctx.on_bad_rows == "fail":
        raise BadInputError(rejects[0][2])
    good = [i for i in range(len(raw_lines)) if i not in bad and text_lines[i]]
    return b"\n".join(raw_lines[i] for i in good) + b"\n", first_line + np.asarray(good, np.int64), rejects


def _uniform(keys: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Deterministic U[0, 1) per key, independent of chunking and workers."""
    h = pd.util.hash_array(keys)  # numeric keys: pandas ignores hash_key, so mix the seed in below
    h = pd.util.hash_array(h ^ np.uint64((seed * 0x9E3779B97F4A7C15 + salt) % (1 << 64)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _columns(ctx: ParseContext, df: pd.DataFrame) -> dict[str, np.ndarray]:
    """Stored columns as numpy arrays (sequences stacked to [rows, length])."""
    cols: dict[str, np.ndarray] = {}
    for f in ctx.schema.features:
        if f.kind == "sequence":
            cols[f.name] = np.stack([df[c].to_numpy(records.INT_DTYPE) for c in f.columns], axis=1)
        elif f.kind == "id":
            cols[f.name] = df[f.name].to_numpy(records.INT_DTYPE)
        elif f.kind == "numeric":
            cols[f.name] = df[f.name].to_numpy(records.FLOAT_DTYPE)
        else:
            cols[f.name] = df[f.name].to_numpy(object)
    for label in ctx.schema.labels:
        cols[label.name] = df[label.name].to_numpy(records.FLOAT_DTYPE)
    return cols


def _encode(cols: dict[str, np.ndarray], rows: int) -> bytes:
    out = []
    for start in range(0, rows, records.BLOCK_ROWS):
        end = min(start + records.BLOCK_ROWS, rows)
        block = {
            k: [x.encode("utf-8") for x in v[start:end]] if v.dtype == object else v[start:end]
            for k, v in cols.items()
        }
        out.append(records.frame(records.encode_block(block, end - start)))
    return b"".join(out)


def process_chunk(
    ctx: ParseContext, chunk: bytes, path: str, file_index: int, chunk_index: int, first_line: int
) -> ChunkResult:
    """Parse, validate, split, sample and encode one chunk of CSV lines."""
    rejected: list[tuple[int, str, str]] = []
    df = _fast_parse(ctx, chunk)
    if df is not None:
        line_no = first_line + np.arange(len(df), dtype=np.int64)
    else:
        good, line_no, rejected = _careful_parse(ctx, chunk, first_line, path)
        df = _fast_parse(ctx, good) if len(line_no) else pd.DataFrame(columns=list(ctx.header))
        if df is None:
            raise RuntimeError(f"{path}: lines {first_line}+ passed validation but not parsing")
    rows_read = len(df) + len(rejected)
    cols = _columns(ctx, df)
    split_key = df[ctx.split_by].to_numpy() if ctx.split_by else None
    del df

    key = line_no + np.int64(file_index) * _MAX_ROW_KEY
    if ctx.neg_label is not None and ctx.neg_keep_rate < 1.0:
        keep = (cols[ctx.neg_label] > 0) | (_uniform(key, ctx.seed, 2) < ctx.neg_keep_rate)
        cols = {k: v[keep] for k, v in cols.items()}
        key = key[keep]
        split_key = split_key[keep] if split_key is not None else None
    kept = len(key)
    rows_dropped = rows_read - len(rejected) - kept

    u = _uniform(split_key if split_key is not None else key, ctx.seed, 1)
    edges = np.cumsum(ctx.split_fractions)
    split_of = np.searchsorted(edges[:-1], u, side="right")

    result = ChunkResult(file_index, chunk_index, {}, {}, {}, {}, {}, {}, rejected, rows_read, rows_dropped)
    for s, name in enumerate(SPLITS):
        mask = split_of == s
        part = {k: v[mask] for k, v in cols.items()}
        n = int(mask.sum())
        result.rows[name] = n
        result.positives[name] = {lb.name: int((part[lb.name] > 0).sum()) for lb in ctx.schema.labels}
        if n:
            result.encoded[name] = _encode(part, n)
            if ctx.write_dir is not None:
                name_ = shard_name(name, file_index, chunk_index)
                mio.write_atomic(os.path.join(ctx.write_dir, name_), result.encoded[name], sync=False)
                result.encoded[name] = b""  # written
        if name != "train" or not n:
            continue
        for f in ctx.schema.features:
            v = part[f.name]
            if f.kind in ("id", "sequence"):
                owner = f.vocab_from or f.name
                result.max_id[owner] = max(result.max_id.get(owner, -1), int(v.max()))
            elif f.kind == "categorical":
                result.counts[f.name] = Counter(pd.Series(v).value_counts().to_dict())
            else:
                v = v.astype(np.float64)
                result.moments[f.name] = (float(v.sum()), float((v * v).sum()), len(v))
    return result


def shard_name(split: str, file_index: int, chunk_index: int) -> str:
    return f"{split}/part-{file_index:03d}-{chunk_index:05d}.tfrecord"


def release_memory() -> None:
    """Hand freed heap back to the OS: large, short-lived buffers per chunk
    otherwise fragment glibc's heap and RSS creeps up with input size."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


# Worker-process state, set once by `init_worker` (spawned processes).
_CTX: ParseContext | None = None


def init_worker(ctx: ParseContext) -> None:
    global _CTX
    _CTX = ctx


def process_chunk_in_worker(args: tuple[bytes, str, int, int, int]) -> ChunkResult:
    if _CTX is None:
        raise RuntimeError("prepare worker used before init_worker")
    try:
        return process_chunk(_CTX, *args)
    finally:
        release_memory()
