"""One DeepCTR 0.9.4 model trained for one epoch on `export_rows` arrays.

Runs in the peers virtualenv (tensorflow-cpu 2.15.1, deepctr 0.9.4), never in
mtlrec's. Prints one JSON line: steady-state examples/s (first batch, which
builds the graph, left out), the whole epoch's, and test AUC per task.
DeepCTR's default sizes of each model are kept; only the embedding width,
optimizer, batch and tasks are set, to what mtlrec's side uses.
"""

import argparse
import json
import time

import numpy as np
import tensorflow as tf
from deepctr.feature_column import DenseFeat, SparseFeat, VarLenSparseFeat
from deepctr.models import ESMM, MMOE, PLE, SharedBottom
from sklearn.metrics import roc_auc_score

BUILDERS = {"shared_bottom": SharedBottom, "mmoe": MMOE, "ple": PLE, "esmm": ESMM}


class BatchClock(tf.keras.callbacks.Callback):
    def on_train_begin(self, logs=None):
        self.ends = []
        self.start = time.perf_counter()

    def on_train_batch_end(self, batch, logs=None):
        self.ends.append(time.perf_counter())


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", required=True, help="export_rows' .npz")
    p.add_argument("--model", required=True, choices=sorted(BUILDERS))
    p.add_argument("--batch_size", type=int, default=4096)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--embedding_dim", type=int, default=16)
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args()
    tf.keras.utils.set_random_seed(a.seed)
    meta = json.load(open(a.rows.removesuffix(".npz") + ".json"))
    data = np.load(a.rows)
    columns = []
    for f in meta["features"]:
        if f["kind"] == "numeric":
            columns.append(DenseFeat(f["name"], 1))
            continue
        sparse = SparseFeat(f["name"], vocabulary_size=f["vocabulary_size"], embedding_dim=a.embedding_dim,
                            embedding_name=f.get("table", f["name"]))
        columns.append(VarLenSparseFeat(sparse, maxlen=f["maxlen"], combiner="mean") if f["kind"] == "sequence"
                       else sparse)
    tasks = meta["tasks"]
    model = BUILDERS[a.model](columns, task_names=tuple(tasks))
    model.compile(tf.keras.optimizers.Adam(a.learning_rate), loss=["binary_crossentropy"] * len(tasks))

    def split(name):
        x = {f["name"]: data[f"{name}/{f['name']}"] for f in meta["features"]}
        return x, [data[f"{name}/label/{t}"] for t in tasks]

    x, y = split("train")
    clock = BatchClock()
    model.fit(x, y, batch_size=a.batch_size, epochs=1, shuffle=True, verbose=0, callbacks=[clock])
    n = len(y[0])
    steady = (len(clock.ends) - 1) * a.batch_size / (clock.ends[-1] - clock.ends[0])
    xt, yt = split("test")
    predictions = model.predict(xt, batch_size=16384, verbose=0)
    auc = {t: float(roc_auc_score(yt[i], np.asarray(predictions[i]).ravel())) for i, t in enumerate(tasks)}
    print(json.dumps({"library": "deepctr", "model": a.model, "steady_examples_per_sec": steady,
                      "epoch_examples_per_sec": n / (clock.ends[-1] - clock.start), "test_auc": auc}))


if __name__ == "__main__":
    main()
