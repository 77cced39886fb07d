"""The label-leak check of prepare: inputs that give a label away.

A log whose features were computed after the outcome is a common, silent
mistake: a history that already holds the row's own clicked item, a
"watch time" column kept as a feature. A model trained on it looks
excellent offline and is useless when served. Prepare samples train rows
from every chunk and warns, naming the feature and the label, when

- a numeric feature alone ranks a binary label with AUC above
  `AUC_LIMIT` (or below 1 - `AUC_LIMIT`), or
- a sequence feature that shares an id feature's vocabulary holds the
  row's own id on at least `OWN_ID_POSITIVE` of the label's positive rows
  and `OWN_ID_LIFT` times as often as on its negative rows.
"""

from __future__ import annotations

import numpy as np

from mtlrec.config import Schema

AUC_LIMIT = 0.98
OWN_ID_POSITIVE = 0.3
OWN_ID_LIFT = 5.0
ROWS_PER_CHUNK = 4096  # sampled train rows per chunk
ROWS_IN_ALL = 200_000  # the check reads at most this many
MIN_POSITIVES = 20


def _own_id_pairs(schema: Schema) -> list[tuple[str, str]]:
    """(sequence feature, id feature) pairs that share one vocabulary."""
    ids = {f.name for f in schema.features if f.kind == "id"}
    return [(f.name, f.vocab_from) for f in schema.features if f.kind == "sequence" and f.vocab_from in ids]


def sample_rows(schema: Schema, part: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """The first ROWS_PER_CHUNK train rows of a chunk, reduced to what the
    check reads: binary labels, numeric features, and per sequence whether
    it holds the row's own id."""
    n = min(ROWS_PER_CHUNK, len(next(iter(part.values()))))
    out: dict[str, np.ndarray] = {}
    for label in schema.labels:
        if label.kind == "binary":
            out[f"label:{label.name}"] = np.asarray(part[label.name][:n], np.float32)
    for f in schema.features:
        if f.kind == "numeric":
            out[f"numeric:{f.name}"] = np.asarray(part[f.name][:n], np.float64)
    for seq, id_name in _own_id_pairs(schema):
        own = part[id_name][:n]
        out[f"own:{seq}"] = ((part[seq][:n] == own[:, None]) & (own[:, None] > 0)).any(axis=1)
    return out


class LeakCheck:
    """Gathers the chunks' samples; `warnings()` lists what gives a label away."""

    def __init__(self, schema: Schema):
        self.schema = schema
        self.parts: list[dict[str, np.ndarray]] = []
        self.rows = 0

    def add(self, sample: dict[str, np.ndarray]) -> None:
        if not sample or self.rows >= ROWS_IN_ALL:
            return
        self.parts.append(sample)
        self.rows += len(next(iter(sample.values())))

    def warnings(self) -> list[str]:
        from mtlrec.metrics import auc  # pandas: the parent process only (workers parse without it)

        if not self.parts:
            return []
        data = {k: np.concatenate([p[k] for p in self.parts]) for k in self.parts[0]}
        found = []
        for key, y in data.items():
            if not key.startswith("label:"):
                continue
            label = key.split(":", 1)[1]
            positives = y > 0.5
            if positives.sum() < MIN_POSITIVES or (~positives).sum() < MIN_POSITIVES:
                continue
            for name, values in data.items():
                kind, feature = name.split(":", 1)
                if kind == "numeric":
                    a = auc(y, values)
                    if max(a, 1 - a) > AUC_LIMIT:
                        found.append(f"feature '{feature}' alone ranks label '{label}' with AUC {a:.4f} on the "
                                     f"train split (above {AUC_LIMIT}): is it measured after the outcome?")
                elif kind == "own":
                    on_pos, on_neg = float(values[positives].mean()), float(values[~positives].mean())
                    if on_pos >= OWN_ID_POSITIVE and on_pos >= OWN_ID_LIFT * max(on_neg, 1e-9):
                        found.append(f"sequence '{feature}' holds the row's own id on {on_pos:.0%} of the rows "
                                     f"with label '{label}' = 1 and {on_neg:.1%} of the others: does the history "
                                     "include the row's own outcome? It should end before the row")
        return found
