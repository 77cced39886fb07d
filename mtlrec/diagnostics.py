"""What a finished run keeps beside its metrics for `mtlrec-report`'s figures.

`MODEL_DIR/diagnostics.json` (a few kilobytes), computed by mtlrec-train on
the test split with the selected weights:

- `reliability`: per task, the test rows (weight > 0) sorted by predicted
  probability and cut into `RELIABILITY_BINS` bins of equal row count; per
  bin the mean prediction, the observed positive rate and the row count.
  A calibrated task has the two equal in every bin.
- `gates`: per gated layer (OMoE/MMoE/DLEN experts, each CGC/PLE/APLE and
  STEM level), the mean softmax weight each gate gives each expert of the
  level. Rows are gates (one per task, plus `shared` on a level that feeds
  another), columns the level's experts (`expert<i>` of a mixture,
  `<task>/<i>` for task-specific and `shared/<i>` for shared experts). An
  expert a gate does not see has weight 0, so each row sums to 1;
  `visible` (rows x columns of booleans) tells those cells from learned zeros.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

FILE = "diagnostics.json"
RELIABILITY_BINS = 10


def reliability(labels, probs, weights=None, bins: int = RELIABILITY_BINS) -> dict[str, list]:
    """Predicted vs observed rate in `bins` equal-count bins of the rows with weight > 0."""
    labels, probs = np.asarray(labels, np.float64), np.asarray(probs, np.float64)
    keep = np.ones(len(labels), bool) if weights is None else np.asarray(weights) > 0
    y, p = labels[keep], probs[keep]
    order = np.argsort(p, kind="stable")
    parts = [part for part in np.array_split(order, min(bins, len(order))) if len(part)]
    return {
        "mean_prediction": [float(p[i].mean()) for i in parts],
        "positive_rate": [float(y[i].mean()) for i in parts],
        "rows": [int(len(i)) for i in parts],
    }


# Keras and TensorFlow are imported where gates are read: mtlrec-report
# (reliability, FILE) does without them.


def _layout(layer, tasks: Sequence[str]) -> tuple[list[str], list[str], list[list[int]]]:
    """(gate names, expert names, the expert columns each gate weighs, in its order)."""
    from mtlrec.layers.experts import MixtureOfExperts
    from mtlrec.layers.stem import STEMLayer

    tasks = list(tasks)
    if isinstance(layer, MixtureOfExperts):
        experts = [f"expert{i}" for i in range(layer.num_experts)]
        gates = tasks if layer.num_gates == len(tasks) else [f"gate{k}" for k in range(layer.num_gates)]
        if layer.num_gates == 1:
            gates = ["all tasks"]
        return gates, experts, [list(range(len(experts)))] * layer.num_gates
    k, n = layer.num_task_experts, layer.num_tasks
    names = tasks if len(tasks) == n else [f"task{t}" for t in range(n)]
    experts = [f"{names[t]}/{i}" for t in range(n) for i in range(k)]
    experts += [f"shared/{i}" for i in range(layer.num_shared_experts)]
    shared = list(range(n * k, len(experts)))
    gates = list(names) + ([] if layer.is_last else ["shared"])
    if isinstance(layer, STEMLayer):  # every gate weighs every expert
        return gates, experts, [list(range(len(experts)))] * len(gates)
    columns = [list(range(t * k, (t + 1) * k)) + shared for t in range(n)]
    if not layer.is_last:
        columns.append(list(range(len(experts))))
    return gates, experts, columns


def gated_layers(network) -> list:
    from mtlrec.layers.experts import MixtureOfExperts
    from mtlrec.layers.extraction import CGCLayer
    from mtlrec.layers.stem import STEMLayer

    return [layer for layer in network.layers if isinstance(layer, (MixtureOfExperts, CGCLayer, STEMLayer))]


class GateProbe:
    """Gate weights of a functional network's gated layers, row by row.

    A second model reads each gated layer's inputs off the network's graph;
    the layer is then called on them with `return_gates=True`. Costs one
    forward pass of the network per batch.
    """

    def __init__(self, network, tasks: Sequence[str]):
        import keras
        import tensorflow as tf

        self.layers = gated_layers(network)
        self.layouts = [_layout(layer, tasks) for layer in self.layers]
        if not self.layers:
            return
        # Keyed, not a list: Keras returns a one-output list unwrapped.
        self._inputs = keras.Model(network.input, {f"{i}": layer.input for i, layer in enumerate(self.layers)})
        self._fn = tf.function(self._gates, reduce_retracing=True)

    def _gates(self, features):
        inputs = self._inputs(features, training=False)
        return [layer(inputs[f"{i}"], training=False, return_gates=True)[1] for i, layer in enumerate(self.layers)]

    def batches(self, dataset, max_rows: int | None = None):
        """Per batch: for each layer, a list of (rows, experts-of-the-gate) arrays."""
        seen = 0
        for features, *_ in dataset:
            out = [[g.numpy() for g in layer_gates] for layer_gates in self._fn(features)]
            if max_rows is not None and seen + len(out[0][0]) > max_rows:
                keep = max_rows - seen
                out = [[g[:keep] for g in layer_gates] for layer_gates in out]
            seen += len(out[0][0])
            yield out
            if max_rows is not None and seen >= max_rows:
                return

    def mean_weights(self, dataset, max_rows: int | None = None) -> list[dict[str, Any]]:
        """Mean weight per gate and expert of each gated layer (see module doc)."""
        if not self.layers:
            return []
        sums = [np.zeros((len(g), len(e))) for g, e, _ in self.layouts]
        rows = 0
        for out in self.batches(dataset, max_rows):
            rows += len(out[0][0])
            for s, (_, _, columns), layer_gates in zip(sums, self.layouts, out):
                for r, (cols, g) in enumerate(zip(columns, layer_gates)):
                    s[r, cols] += g.sum(axis=0, dtype=np.float64)
        return [
            {"layer": layer.name, "gates": gates, "experts": experts, "rows": rows,
             "weights": (s / max(rows, 1)).round(6).tolist(),
             "visible": [[c in cols for c in range(len(experts))] for cols in columns]}
            for layer, (gates, experts, columns), s in zip(self.layers, self.layouts, sums)
        ]

    def write_histograms(self, dataset, step: int, max_rows: int = 20_000) -> None:
        """TensorBoard histograms `gates/<layer>/<gate>/<expert>` of the rows'
        weights, under the current default summary writer."""
        import tensorflow as tf

        if not self.layers:
            return
        collected: list[list[list[np.ndarray]]] = [[[] for _ in layout[0]] for layout in self.layouts]
        for out in self.batches(dataset, max_rows):
            for per_layer, layer_gates in zip(collected, out):
                for per_gate, g in zip(per_layer, layer_gates):
                    per_gate.append(g)
        for layer, (gates, experts, columns), per_layer in zip(self.layers, self.layouts, collected):
            for gate, cols, parts in zip(gates, columns, per_layer):
                weights = np.concatenate(parts)
                for j, col in enumerate(cols):
                    tf.summary.histogram(f"gates/{layer.name}/{gate}/{experts[col]}", weights[:, j], step=step)
