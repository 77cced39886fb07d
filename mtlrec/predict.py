"""Streaming batch scoring of a CSV with an exported SavedModel.

Uses only TensorFlow on the SavedModel's own signature, so it scores any
mtlrec export (and needs nothing from the training code). Values are
validated as `mtlrec-prepare` validates them, and errors name the true line
of the file (blank lines and quoted fields included).
"""

from __future__ import annotations

import csv
from collections.abc import Iterator

import numpy as np
import tensorflow as tf

from mtlrec import io as mio
from mtlrec import outputs
from mtlrec.export import latest_version
from mtlrec.pipelines.parse import describe_bad, valid_values

COMMAND = "mtlrec-predict"


def _kind(spec: tf.TensorSpec) -> str:
    if spec.dtype == tf.string:
        return "str"
    return "int" if spec.dtype.is_integer else "float"


def _first_bad_utf8(path: str) -> tuple[int, bytes]:
    """The line number and the bytes of the first line that is not UTF-8."""
    with open(mio.local_path(path), "rb") as f:
        for number, line in enumerate(f, 1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as e:
                return number, line[max(0, e.start - 10):e.end + 10]
    return 0, b""


def _batches(path: str, chunk_rows: int) -> Iterator[tuple[list[str], list[list[str]], list[int]]]:
    """(header, rows, line number of each row), `chunk_rows` rows at a time."""
    try:
        yield from _decoded_batches(path, chunk_rows)
    except UnicodeDecodeError:
        line, near = _first_bad_utf8(path)
        raise ValueError(f"{path}:{line}: bytes that are not UTF-8 (near {near!r}): expected a UTF-8 CSV "
                         "(re-encode it, e.g. iconv -f latin1 -t utf-8)") from None


def _decoded_batches(path: str, chunk_rows: int) -> Iterator[tuple[list[str], list[list[str]], list[int]]]:
    with open(mio.local_path(path), newline="", encoding="utf-8-sig") as f:  # -sig: drops a BOM
        reader = csv.reader(f)
        header = next(reader, None)
        if header is None:
            raise ValueError(f"{path}: file is empty: expected a header line")
        rows: list[list[str]] = []
        lines: list[int] = []
        end = reader.line_num
        for fields in reader:
            start, end = end + 1, reader.line_num
            if not fields:
                continue  # a blank line
            if len(fields) != len(header):
                raise ValueError(f"{path}:{start}: wrong number of fields: received {len(fields)}, "
                                 f"expected {len(header)}")
            rows.append(fields)
            lines.append(start)
            if len(rows) == chunk_rows:
                yield header, rows, lines
                rows, lines = [], []
        if rows or end <= 1:
            yield header, rows, lines


def output_order(saved_model: str, outputs) -> list[str]:
    """Tasks in task order (from the export's assets.extra/mtlrec.json),
    then the other outputs (score, p_up, ...) sorted."""
    info = mio.join(saved_model, "assets.extra", "mtlrec.json")
    tasks: list[str] = []
    if mio.exists(info):
        tasks = [t for t in mio.read_json(info).get("tasks", []) if t in outputs]
    return tasks + sorted(set(outputs) - set(tasks))


def predict_csv(export_dir: str, input_path: str, output_path: str, keep_columns=(), chunk_rows: int = 65536,
                overwrite: bool = False) -> int:
    """Scores `input_path` chunk by chunk into `output_path` (atomically).

    The output may replace only an earlier prediction file (with
    `overwrite`): one whose mark (`.NAME.mtlrec` beside it, written with
    it) matches its bytes; never the input or any other file.
    """
    path = latest_version(export_dir)
    model = tf.saved_model.load(path)
    fn = model.signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    output_names = output_order(path, fn.structured_outputs)
    outputs.claim_file(output_path, "output", overwrite, inputs=[input_path],
                       is_ours=lambda p: outputs.is_marked(p, COMMAND),
                       what=f"an mtlrec-predict output (one has its mark {outputs.mark_path(output_path)})")
    if not mio.exists(input_path):
        raise FileNotFoundError(f"--input={input_path}: no such file")
    out_dir = mio.local_path(output_path).rsplit("/", 1)[0] if "/" in output_path else "."
    name = mio.local_path(output_path).rsplit("/", 1)[-1]
    mio.remove_stale_temp(out_dir, name)  # left by killed runs (the file's and its mark's)
    mio.remove_stale_temp(out_dir, f".{name}.mtlrec")
    rows = 0
    with mio.AtomicFile(output_path, before_publish=lambda tmp: outputs.mark_file(output_path, tmp, COMMAND)) as out:
        writer = csv.writer(out, lineterminator="\n")
        for header, batch, lines in _batches(input_path, chunk_rows):
            if rows == 0:
                missing = [c for c in specs if c not in header] + [c for c in keep_columns if c not in header]
                if missing:
                    raise ValueError(f"{input_path}:1: missing column(s) {sorted(set(missing))}; "
                                     f"the model needs {sorted(specs)}")
                writer.writerow([*keep_columns, *output_names])
            if not batch:
                continue
            columns = dict(zip(header, zip(*batch)))
            inputs = {}
            for col, spec in specs.items():
                values, kind = columns[col], _kind(spec)
                bad = np.flatnonzero(~valid_values(kind, values))
                if len(bad):
                    raise ValueError(f"{input_path}:{lines[bad[0]]}: column '{col}': "
                                     f"{describe_bad(kind, values[bad[0]])}")
                if kind == "str":
                    inputs[col] = tf.constant(list(values))
                else:  # via str, not float64: 18-digit ids stay exact
                    inputs[col] = tf.constant(np.asarray(values, str).astype(spec.dtype.as_numpy_dtype))
            scores = fn(**inputs)
            table = [columns[c] for c in keep_columns] + [scores[k].numpy().astype(str) for k in output_names]
            writer.writerows(zip(*table))
            rows += len(batch)
    return rows
