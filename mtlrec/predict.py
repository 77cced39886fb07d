"""Streaming batch scoring of a CSV with an exported SavedModel.

Uses only TensorFlow on the SavedModel's own signature, so it scores any
mtlrec export (and needs nothing from the training code). Values are
validated as `mtlrec-prepare` validates them, and errors name the true line
of the file (blank lines and quoted fields included).
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator, Sequence

import numpy as np
import tensorflow as tf

from mtlrec import io as mio
from mtlrec import outputs
from mtlrec.export import latest_version
from mtlrec.pipelines.parse import describe_bad, valid_values


def _kind(spec: tf.TensorSpec) -> str:
    if spec.dtype == tf.string:
        return "str"
    return "int" if spec.dtype.is_integer else "float"


def _batches(path: str, chunk_rows: int) -> Iterator[tuple[list[str], list[list[str]], list[int]]]:
    """(header, rows, line number of each row), `chunk_rows` rows at a time."""
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
        with mio.open_text(info) as f:
            tasks = [t for t in json.load(f).get("tasks", []) if t in outputs]
    return tasks + sorted(set(outputs) - set(tasks))


def _is_predictions(path: str, output_names: Sequence[str]) -> bool:
    with open(path, newline="", encoding="utf-8", errors="replace") as f:
        header = next(csv.reader(f), [])
    return set(output_names) <= set(header)


def predict_csv(export_dir: str, input_path: str, output_path: str, keep_columns=(), chunk_rows: int = 65536,
                overwrite: bool = False) -> int:
    """Scores `input_path` chunk by chunk into `output_path` (atomically).

    The output may replace only an earlier prediction file (with
    `overwrite`), never the input or any other file.
    """
    path = latest_version(export_dir)
    model = tf.saved_model.load(path)
    fn = model.signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    output_names = output_order(path, fn.structured_outputs)
    outputs.claim_file(output_path, "output", overwrite, inputs=[input_path],
                       is_ours=lambda p: _is_predictions(p, output_names), what="an mtlrec-predict output")
    if not mio.exists(input_path):
        raise FileNotFoundError(f"--input={input_path}: no such file")
    out_dir = mio.local_path(output_path).rsplit("/", 1)[0] if "/" in output_path else "."
    name = mio.local_path(output_path).rsplit("/", 1)[-1]
    mio.remove_stale_temp(out_dir, name)  # left by killed runs
    rows = 0
    with mio.AtomicFile(output_path) as out:
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
