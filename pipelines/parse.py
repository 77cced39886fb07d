"""Chunk parsing, validation and encoding: the work of prepare's workers.

Imports no TensorFlow, so worker processes start fast. A chunk is a run of
whole CSV lines, or one row group of a Parquet file (`ParquetPart`); the
result is the chunk's rows, split and encoded as TFRecord column blocks,
plus the statistics the manifest needs.
"""

from __future__ import annotations

import csv
import ctypes
import dataclasses
import io
import os
import re
import signal
from collections import Counter

import google_crc32c
import numpy as np
import pyarrow as pa
import pyarrow.csv as pa_csv

from mtlrec import io as mio
from mtlrec.config import Schema
from mtlrec.data import records

SPLITS = ("train", "valid", "test")
_INT_PATTERN = r"\d{1,18}"
_MAX_ROW_KEY = 1 << 40
# Numbers are stored as float32: anything larger in magnitude becomes inf.
FLOAT32_MAX = float(np.finfo(np.float32).max)
# Fields the C readers accept but the schema does not: surrounding blanks
# (" 5" reads as 5) and "-0" in integer columns. Chunks with them take the
# careful path, so a value is judged the same wherever it falls.
_LENIENT_FIELD = re.compile(rb"(?:^|,)[ \t]|[ \t](?:,|\r?$)|(?:^|,)-0+(?:,|\r?$)", re.M)


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
    # Time-ordered splits (`--order_by`): "input" (the rows' place in the
    # input, files in order) or a column; rows before order_edges[0] are
    # train, before order_edges[1] valid, the rest test. For "input" the
    # edges are row positions and file_offsets each file's first position;
    # for a column they are its values ("number": float64, "time": int64 ns).
    order_by: str | None = None
    order_kind: str = ""
    order_edges: tuple = ()
    file_offsets: tuple[int, ...] = ()

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
    "float": "a finite number (stored as float32: |x| <= 3.4e38)",
}
_NUMPY_DTYPE = {"int": np.dtype(np.int64), "binary": np.dtype(np.int64), "float": np.dtype(np.float64)}
_PANDAS_DTYPE = {"int": "int64", "binary": "int64", "float": "float64", "str": "str", "ignore": "str"}
_ARROW_TYPE = {"int": pa.int64(), "binary": pa.int64(), "float": pa.float64(), "str": pa.string(), "ignore": pa.string()}


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
    # split -> (bytes, crc32c) of the shard written for it
    shard_info: dict[str, tuple[int, int]] = dataclasses.field(default_factory=dict)
    # id vocabulary owner -> distinct ids of this chunk's train rows
    distinct: dict[str, int] = dataclasses.field(default_factory=dict)
    # A few train rows for the label-leak check (mtlrec.pipelines.leaks)
    leak_sample: dict[str, np.ndarray] = dataclasses.field(default_factory=dict)


PARQUET_SUFFIXES = (".parquet", ".parq", ".pq")


def is_parquet(path: str) -> bool:
    """Whether prepare reads `path` as Parquet (by its name)."""
    return path.lower().endswith(PARQUET_SUFFIXES)


@dataclasses.dataclass(frozen=True)
class ParquetPart:
    """One row group of a Parquet input: the unit of work for its rows.
    Workers open the file themselves, so no row travels through the parent."""

    row_group: int


def parquet_file(path: str):
    """A `pyarrow.parquet.ParquetFile` of a local or remote path; a file that
    is not Parquet is a BadInputError naming it."""
    import pyarrow.parquet as pq

    try:
        return pq.ParquetFile(mio.open_binary(path))
    except (pa.ArrowException, OSError) as e:
        raise BadInputError(f"{path}: not a readable Parquet file ({str(e).splitlines()[0][:200]})") from None


def _parquet_values(ctx: ParseContext, path: str, name: str, column: pa.ChunkedArray,
                    bad: dict[int, str]) -> np.ndarray:
    """A Parquet column as the numpy array the CSV path would give; rows with
    a value the schema does not take go into `bad` (row index -> why), a
    column of a type that cannot hold the kind is a BadInputError."""
    kind, t = ctx.kind_of(name), column.type
    column = pa.chunked_array([column.combine_chunks()], type=t)
    nulls = np.asarray(column.is_null().to_numpy(zero_copy_only=False), bool) if column.null_count else None

    def mark(rows: np.ndarray, why) -> None:
        for i in np.flatnonzero(rows):
            bad.setdefault(int(i), why(int(i)))

    def shown(i: int):
        return column[i].as_py()

    if nulls is not None:
        mark(nulls, lambda i: f"column '{name}': received a null, expected "
                              f"{_EXPECTED.get(kind, 'a value')}")
    if pa.types.is_string(t) or pa.types.is_large_string(t):
        text = np.array(column.fill_null("").to_pylist(), dtype=object)
        if kind in ("str", "ignore"):
            return text
        ok = valid_values(kind, text)
        mark(~ok, lambda i: f"column '{name}': {describe_bad(kind, text[i])}")
        text = np.where(ok, text, "0")
        return text.astype(np.float64) if kind == "float" else text.astype(np.int64)
    numeric = pa.types.is_integer(t) or pa.types.is_boolean(t) or pa.types.is_floating(t) or pa.types.is_decimal(t)
    if kind in ("str", "ignore"):
        if not (numeric or pa.types.is_temporal(t)):
            raise BadInputError(f"{path}: column '{name}' is Parquet type {t}, expected strings (or numbers, read "
                                "as their text)")
        if pa.types.is_temporal(t) and name == ctx.order_by:
            return column.to_numpy(zero_copy_only=False)
        return np.array(column.cast(pa.string()).fill_null("").to_pylist(), dtype=object)
    if kind in ("int", "binary") and not (pa.types.is_integer(t) or pa.types.is_boolean(t)):
        raise BadInputError(f"{path}: column '{name}' is Parquet type {t}, expected an integer type "
                            f"({_EXPECTED[kind]}{'; ids are not fractions' if numeric else ''})")
    if not numeric:
        raise BadInputError(f"{path}: column '{name}' is Parquet type {t}, expected numbers ({_EXPECTED[kind]})")
    if kind == "float":
        values = column.cast(pa.float64()).fill_null(0.0).to_numpy()
        mark(~(np.abs(values) <= FLOAT32_MAX), lambda i: f"column '{name}': {describe_bad(kind, repr(shown(i)))}")
        return values
    if pa.types.is_unsigned_integer(t):
        wide = column.cast(pa.uint64()).fill_null(0).to_numpy()
        mark(wide > np.iinfo(np.int64).max, lambda i: f"column '{name}': {describe_bad(kind, str(shown(i)))}")
        values = np.minimum(wide, np.iinfo(np.int64).max).astype(np.int64)
    else:
        values = column.cast(pa.int64()).fill_null(0).to_numpy()
    wrong = values < 0 if kind == "int" else (values != 0) & (values != 1)
    mark(wrong, lambda i: f"column '{name}': {describe_bad(kind, str(shown(i)))}")
    return values


def _parquet_parse(ctx: ParseContext, part: ParquetPart, path: str, first_line: int):
    """One row group -> (columns, line numbers, rejects, rows read). Line
    numbers are the rows' as if the file were CSV with a header (row r of
    the file, from 0, is line r + 2), so the hash split of a row is the same
    whichever of the two formats it came in; messages name the row (from 1)."""
    wanted = [c for c in ctx.header if ctx.kind_of(c) != "ignore" or c in (ctx.split_by, ctx.order_by)]
    pf = parquet_file(path)
    try:
        table = pf.read_row_group(part.row_group, columns=wanted)
    except pa.ArrowException as e:
        raise BadInputError(f"{path}: row group {part.row_group} cannot be read ({str(e).splitlines()[0][:200]})") from None
    finally:
        pf.close()
    rows_before = first_line - 2
    bad: dict[int, str] = {}
    parsed = {c: _parquet_values(ctx, path, c, table.column(c), bad) for c in wanted}
    n = table.num_rows
    rejects = []
    if bad:
        lines = {}
        for i in sorted(bad):
            out = io.StringIO()
            csv.writer(out, lineterminator="").writerow(
                ["" if v is None else v for v in (table.column(c)[i].as_py() if c in wanted else "" for c in ctx.header)])
            lines[i] = out.getvalue()
        rejects = [(first_line + i, lines[i], f"{path}: row {rows_before + i + 1}: {bad[i]}") for i in sorted(bad)]
        if ctx.on_bad_rows == "fail":
            raise BadInputError(rejects[0][2])
        good = np.ones(n, bool)
        good[sorted(bad)] = False
        parsed = {c: v[good] for c, v in parsed.items()}
        line_no = first_line + np.flatnonzero(good).astype(np.int64)
    else:
        line_no = first_line + np.arange(n, dtype=np.int64)
    return parsed, line_no, rejects, n


def _fast_parse(ctx: ParseContext, chunk: bytes, validated: bool = False) -> dict[str, np.ndarray] | None:
    """Parse with a C reader; None when anything needs a closer look.

    Returns CSV column -> numpy array. Arrow's reader parses these chunks
    about twice as fast as pandas' (0.75M vs 0.42M rows/s on one core) and
    hands back one array per column, where pandas first consolidates columns
    of one type into a 2-D block.
    """
    if b"\n\n" in chunk or b"\n\r\n" in chunk or chunk.startswith((b"\n", b"\r\n")):
        return None  # blank lines shift line numbers: take the careful path
    if not validated and (b" " in chunk or b"\t" in chunk or b"-0" in chunk) and _LENIENT_FIELD.search(chunk):
        return None
    ncols = len(ctx.header)
    if not validated and b'"' in chunk and any(line.count(b'"') % 2 for line in chunk.split(b"\n")):
        return None  # a quoted field spanning lines: the careful path names it
    if b'"' not in chunk:
        # Without quotes every line has ncols - 1 separators. Comparing totals
        # is enough: a short line is offset only by a long one, which the C
        # reader rejects ("Expected N columns").
        lines = chunk.count(b"\n") + (not chunk.endswith(b"\n"))
        if chunk.count(b",") != (ncols - 1) * lines:
            return None
    kinds = {c: ctx.kind_of(c) for c in ctx.header}
    # Arrow reads "0x1f" in an integer column as 31; pandas rejects it.
    read = _read_pandas if b"x" in chunk or b"X" in chunk else _read_arrow
    try:
        parsed = read(chunk, kinds)
    except (ValueError, OverflowError, pa.ArrowException):  # pandas' ParserError is a ValueError
        return None
    for c, kind in kinds.items():
        col = parsed[c]
        if kind == "int" and (col < 0).any():
            return None
        if kind == "binary" and ((col != 0) & (col != 1)).any():
            return None
        if kind == "float" and not (np.abs(col) <= FLOAT32_MAX).all():  # also False for NaN
            return None
    return parsed


def _read_arrow(chunk: bytes, kinds: dict[str, str]) -> dict[str, np.ndarray]:
    table = pa_csv.read_csv(
        pa.py_buffer(chunk),
        read_options=pa_csv.ReadOptions(column_names=list(kinds), use_threads=False),
        parse_options=pa_csv.ParseOptions(newlines_in_values=False, ignore_empty_lines=False),
        convert_options=pa_csv.ConvertOptions(
            column_types={c: _ARROW_TYPE[k] for c, k in kinds.items()},
            null_values=[], strings_can_be_null=False, quoted_strings_can_be_null=False,
        ),
    )
    return {c: _to_numpy(table.column(c), kinds[c]) for c in kinds}


def _to_numpy(column: pa.ChunkedArray, kind: str) -> np.ndarray:
    """Arrow column -> numpy. pyarrow's own `to_numpy` imports pandas, which
    costs each worker ~0.6 s; a column without nulls is read off its buffer."""
    if column.null_count:
        raise ValueError("missing values")
    if kind in ("str", "ignore"):
        return np.array(column.to_pylist(), dtype=object)
    dtype = _NUMPY_DTYPE[kind]
    parts = [
        np.frombuffer(a.buffers()[1], dtype, count=len(a), offset=a.offset * dtype.itemsize)
        for a in column.chunks
    ]
    if len(parts) == 1:
        return parts[0]
    return np.concatenate(parts) if parts else np.zeros(0, dtype)


def _read_pandas(chunk: bytes, kinds: dict[str, str]) -> dict[str, np.ndarray]:
    import pandas as pd

    df = pd.read_csv(
        io.BytesIO(chunk), header=None, names=list(kinds),
        dtype={c: _PANDAS_DTYPE[k] for c, k in kinds.items()},
        na_filter=False, engine="c", skip_blank_lines=False,
    )
    if df.isna().to_numpy().any():  # a short line of a quoted CSV
        raise ValueError("missing values")
    return {c: df[c].to_numpy() for c in kinds}


def _no_rows(ctx: ParseContext) -> dict[str, np.ndarray]:
    return {c: np.zeros(0, _NUMPY_DTYPE.get(ctx.kind_of(c), object)) for c in ctx.header}


def _careful_parse(
    ctx: ParseContext, chunk: bytes, first_line: int, path: str
) -> tuple[bytes, np.ndarray, list[tuple[int, str, str]]]:
    """Find bad lines exactly. Returns (good lines, their line numbers, rejects)."""
    raw_lines = chunk.split(b"\n")
    if raw_lines and raw_lines[-1] == b"":
        raw_lines.pop()
    bad: dict[int, str] = {}
    text_lines = []
    for i, line in enumerate(raw_lines):
        try:
            text_lines.append(line.rstrip(b"\r").decode("utf-8"))
        except UnicodeDecodeError as e:
            text_lines.append(line.rstrip(b"\r").decode("utf-8", errors="replace"))
            bad[i] = f"not valid UTF-8 (byte {line[e.start]:#04x} at position {e.start + 1})"
    rows: list[list[str]] = []
    row_idx: list[int] = []
    for i, line in enumerate(text_lines):
        if not line or i in bad:
            continue  # blank line: not a row
        if line.count('"') % 2:
            bad[i] = "a quoted field spans lines (newline inside quotes), which is not supported"
            continue
        fields = next(csv.reader([line]))
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
            ok = valid_values(kind, columns[j])
            for k in np.flatnonzero(~ok):
                i = row_idx[k]
                if i not in bad:
                    bad[i] = f"column '{name}': {describe_bad(kind, columns[j][k])}"
    rejects = [
        (first_line + i, raw_lines[i].decode("utf-8", "replace"), f"{path}:{first_line + i}: {bad[i]}")
        for i in sorted(bad)
    ]
    if rejects and ctx.on_bad_rows == "fail":
        raise BadInputError(rejects[0][2])
    good = [i for i in range(len(raw_lines)) if i not in bad and text_lines[i]]
    return b"\n".join(raw_lines[i] for i in good) + b"\n", first_line + np.asarray(good, np.int64), rejects


def valid_values(kind: str, values) -> np.ndarray:
    """Which CSV field strings are valid for a column kind ('int', 'binary',
    'float'; strings always are). Prepare and predict judge values alike."""
    if kind in ("str", "ignore"):
        return np.ones(len(values), bool)
    import pandas as pd

    series = pd.Series(values, dtype=object)
    if kind == "int":
        return series.str.fullmatch(_INT_PATTERN).to_numpy(bool)
    if kind == "binary":
        return series.isin(["0", "1"]).to_numpy(bool)
    return np.abs(pd.to_numeric(series, errors="coerce").to_numpy(np.float64)) <= FLOAT32_MAX  # False for NaN


def describe_bad(kind: str, value: str) -> str:
    what = _EXPECTED[kind]
    if kind == "int" and value.lstrip().startswith("-"):
        what += " (ids cannot be negative)"
    return f"received {value!r}, expected {what}"


def _hash64(keys: np.ndarray) -> np.ndarray:
    """`pandas.util.hash_array`, without importing pandas for 64-bit integers.

    For those pandas applies this mixer (splitmix64's finaliser) to the
    integer's bits; the same values keep every split identical to earlier
    versions. Other keys (strings, floats) go to pandas.
    """
    if keys.dtype.kind not in "iu" or keys.dtype.itemsize != 8:
        import pandas as pd

        return pd.util.hash_array(keys)
    h = keys.view(np.uint64).copy()
    with np.errstate(over="ignore"):
        h ^= h >> np.uint64(30)
        h *= np.uint64(0xBF58476D1CE4E5B9)
        h ^= h >> np.uint64(27)
        h *= np.uint64(0x94D049BB133111EB)
        h ^= h >> np.uint64(31)
    return h


def _uniform(keys: np.ndarray, seed: int, salt: int) -> np.ndarray:
    """Deterministic U[0, 1) per key, independent of chunking and workers."""
    h = _hash64(keys)  # numeric keys: pandas ignores hash_key, so mix the seed in below
    h = _hash64(h ^ np.uint64((seed * 0x9E3779B97F4A7C15 + salt) % (1 << 64)))
    return (h >> np.uint64(11)).astype(np.float64) * (1.0 / (1 << 53))


def _columns(ctx: ParseContext, parsed: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Stored columns as numpy arrays (sequences stacked to [rows, length])."""
    cols: dict[str, np.ndarray] = {}
    for f in ctx.schema.features:
        if f.kind == "sequence":
            cols[f.name] = np.stack([parsed[c].astype(records.INT_DTYPE, copy=False) for c in f.columns], axis=1)
        elif f.kind == "id":
            cols[f.name] = parsed[f.name].astype(records.INT_DTYPE, copy=False)
        elif f.kind == "numeric":
            cols[f.name] = parsed[f.name].astype(records.FLOAT_DTYPE)
        else:
            cols[f.name] = parsed[f.name].astype(object, copy=False)
    for label in ctx.schema.labels:
        cols[label.name] = parsed[label.name].astype(records.FLOAT_DTYPE)
    return cols


ORDER_KINDS = ("number", "time")


def order_kind_of(value: str) -> str | None:
    """"number" or "time" (ISO 8601) for an order column's value, None for neither."""
    import pandas as pd

    try:
        float(value)
        return "number"
    except ValueError:
        pass
    try:
        pd.Timestamp(value)
        return "time"
    except (ValueError, TypeError):
        return None


def order_values(values: np.ndarray, kind: str) -> tuple[np.ndarray, int | None]:
    """The order column as numbers (float64) or times (int64 ns, UTC), and
    the index of the first value that is neither (None when all are)."""
    import pandas as pd

    if kind == "number":
        if values.dtype.kind in "iuf":
            out = values.astype(np.float64)
        else:
            out = pd.to_numeric(pd.Series(values, dtype=str), errors="coerce").to_numpy(np.float64)
        bad = ~np.isfinite(out)
    else:
        times = pd.to_datetime(pd.Series(values, dtype=str), errors="coerce", utc=True, format="ISO8601")
        bad = times.isna().to_numpy()
        out = times.to_numpy(dtype="datetime64[ns]").astype(np.int64)
    first = np.flatnonzero(bad)
    return out, (int(first[0]) if len(first) else None)


def _order_split(ctx: ParseContext, parsed: dict[str, np.ndarray], line_no: np.ndarray, file_index: int,
                 path: str) -> np.ndarray:
    """Split index (0 train, 1 valid, 2 test) of each row of an ordered split."""
    if ctx.order_by == "input":
        position = line_no - 2 + ctx.file_offsets[file_index]
    else:
        position, bad = order_values(np.asarray(parsed[ctx.order_by]), ctx.order_kind)
        if bad is not None:
            raise BadInputError(f"{path}:{line_no[bad]}: column '{ctx.order_by}': received "
                                f"{parsed[ctx.order_by][bad]!r}, expected a {ctx.order_kind} (--order_by)")
    return np.searchsorted(np.asarray(ctx.order_edges), position, side="right")


def process_chunk(
    ctx: ParseContext, chunk: bytes, path: str, file_index: int, chunk_index: int, first_line: int
) -> ChunkResult:
    """Parse, validate, split, sample and encode one chunk of CSV lines (or
    one Parquet row group: `chunk` a `ParquetPart`)."""
    rejected: list[tuple[int, str, str]] = []
    if isinstance(chunk, ParquetPart):
        parsed, line_no, rejected, rows = _parquet_parse(ctx, chunk, path, first_line)
        rows -= len(rejected)
    elif (parsed := _fast_parse(ctx, chunk)) is not None:
        rows = len(parsed[ctx.header[0]])
        line_no = first_line + np.arange(rows, dtype=np.int64)
    else:
        good, line_no, rejected = _careful_parse(ctx, chunk, first_line, path)
        parsed = _fast_parse(ctx, good, validated=True) if len(line_no) else _no_rows(ctx)
        if parsed is None:
            raise RuntimeError(f"{path}: lines {first_line}+ passed validation but not parsing")
        rows = len(line_no)
    rows_read = rows + len(rejected)
    cols = _columns(ctx, parsed)
    split_key = parsed[ctx.split_by] if ctx.split_by else None
    ordered = _order_split(ctx, parsed, line_no, file_index, path) if ctx.order_by else None
    del parsed

    key = line_no + np.int64(file_index) * _MAX_ROW_KEY
    if ctx.neg_label is not None and ctx.neg_keep_rate < 1.0:
        keep = (cols[ctx.neg_label] > 0) | (_uniform(key, ctx.seed, 2) < ctx.neg_keep_rate)
        cols = {k: v[keep] for k, v in cols.items()}
        key = key[keep]
        split_key = split_key[keep] if split_key is not None else None
        ordered = ordered[keep] if ordered is not None else None
    kept = len(key)
    rows_dropped = rows_read - len(rejected) - kept

    if ordered is not None:
        split_of = ordered
    else:
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
            result.encoded[name] = records.encode_rows(part, n)
            result.shard_info[name] = (len(result.encoded[name]), google_crc32c.value(result.encoded[name]))
            if ctx.write_dir is not None:
                name_ = shard_name(name, file_index, chunk_index)
                mio.write_atomic(os.path.join(ctx.write_dir, name_), result.encoded[name], sync=False)
                result.encoded[name] = b""  # written
        if name != "train" or not n:
            continue
        ids: dict[str, list[np.ndarray]] = {}
        for f in ctx.schema.features:
            v = part[f.name]
            if f.kind in ("id", "sequence"):
                owner = f.vocab_from or f.name
                result.max_id[owner] = max(result.max_id.get(owner, -1), int(v.max()))
                ids.setdefault(owner, []).append(v.ravel())
            elif f.kind == "categorical":
                result.counts[f.name] = Counter(v.tolist())
            else:
                v = v.astype(np.float64)
                result.moments[f.name] = (float(v.sum()), float((v * v).sum()), len(v))
        result.distinct = {k: len(np.unique(np.concatenate(v))) for k, v in ids.items()}
        from mtlrec.pipelines.leaks import sample_rows

        result.leak_sample = sample_rows(ctx.schema, part)
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
    # A Ctrl-C reaches the whole process group: the parent alone reports it
    # and cleans up, then shuts the pool down (SIGTERM here ends quietly).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    die_with_parent()


def die_with_parent() -> None:
    """Linux: this process gets SIGKILL when its parent dies (a `kill -9` of
    mtlrec-prepare then leaves no worker running). Elsewhere a no-op."""
    try:
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def process_chunk_in_worker(args: tuple[bytes, str, int, int, int]) -> ChunkResult:
    if _CTX is None:
        raise RuntimeError("prepare worker used before init_worker")
    try:
        return process_chunk(_CTX, *args)
    finally:
        release_memory()
