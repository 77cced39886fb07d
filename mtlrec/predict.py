"""Streaming batch scoring of a CSV with an exported SavedModel.

Uses only TensorFlow and pandas on the SavedModel's own signature, so it
scores any mtlrec export (and needs nothing from the training code).
"""

from __future__ import annotations

import os

import numpy as np
import pandas as pd
import tensorflow as tf

from mtlrec.export import latest_version


def predict_csv(export_dir: str, input_path: str, output_path: str, keep_columns=(), chunk_rows: int = 65536) -> int:
    """Scores `input_path` chunk by chunk into `output_path` (atomically)."""
    model = tf.saved_model.load(latest_version(export_dir))
    fn = model.signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    header = pd.read_csv(input_path, nrows=0).columns
    missing = [c for c in specs if c not in header] + [c for c in keep_columns if c not in header]
    if missing:
        raise ValueError(f"{input_path}:1: missing column(s) {sorted(set(missing))}; the model needs {sorted(specs)}")
    tmp = f"{output_path}.tmp-{os.getpid()}"
    rows = 0
    first_line = 2
    try:
        with open(tmp, "w", encoding="utf-8") as out:
            for i, chunk in enumerate(pd.read_csv(input_path, chunksize=chunk_rows, dtype=str, keep_default_na=False)):
                inputs = {}
                for name, spec in specs.items():
                    col = chunk[name]
                    if spec.dtype == tf.string:
                        inputs[name] = tf.constant(col.to_numpy(str))
                    else:
                        num = pd.to_numeric(col, errors="coerce")
                        bad = np.flatnonzero(num.isna().to_numpy())
                        if len(bad):
                            raise ValueError(f"{input_path}:{first_line + bad[0]}: column '{name}': received "
                                             f"{col.iloc[bad[0]]!r}, expected a number")
                        inputs[name] = tf.constant(num.to_numpy(spec.dtype.as_numpy_dtype))
                outputs = fn(**inputs)
                frame = chunk[list(keep_columns)].copy()
                for k in sorted(outputs):
                    frame[k] = outputs[k].numpy()
                frame.to_csv(out, header=i == 0, index=False)
                rows += len(chunk)
                first_line += len(chunk)
        os.replace(tmp, output_path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return rows
