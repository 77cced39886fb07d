"""DeepCTR 0.9.4's MMoE with MEDA written around it, on `export_rows` arrays.

    deepctr-venv/bin/python benchmarks/peers/deepctr_meda.py --rows=rows.npz --epochs=4 --seed=0

Runs in the peers virtualenv (tensorflow-cpu 2.15.1, deepctr 0.9.4), never in
mtlrec's. DeepCTR's MMoE at its defaults (3 experts 256-128, towers 64,
embeddings drawn RandomNormal(stddev 1e-4), embedding L2 1e-5 on the whole
tables), Adam 1e-3, batch 4096. MEDA: before each epoch after the first,
every embedding table is drawn afresh from its initializer and its Adam
moments are zeroed; nothing else changes. Prints one JSON line: per epoch
the valid and test AUC per task, and the epoch chosen on valid (mean AUC).
`--no_meda` trains the same model plainly; `--in_order` feeds the rows in
their stored (time) order every epoch instead of Keras' shuffle.
"""

import argparse
import json

import numpy as np
import tensorflow as tf
from deepctr.feature_column import SparseFeat, VarLenSparseFeat
from deepctr.models import MMOE
from sklearn.metrics import roc_auc_score


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--rows", required=True)
    p.add_argument("--epochs", type=int, default=4)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--batch_size", type=int, default=4096)
    p.add_argument("--learning_rate", type=float, default=1e-3)
    p.add_argument("--embedding_dim", type=int, default=16)
    p.add_argument("--l2_reg_embedding", type=float, default=1e-5)
    p.add_argument("--no_meda", action="store_true")
    p.add_argument("--in_order", action="store_true",
                   help="train on the rows in their stored (time) order every epoch instead of Keras' shuffle")
    a = p.parse_args()
    tf.keras.utils.set_random_seed(a.seed)
    meta = json.load(open(a.rows.removesuffix(".npz") + ".json"))
    data = np.load(a.rows)
    columns = []
    for f in meta["features"]:
        sparse = SparseFeat(f["name"], vocabulary_size=f["vocabulary_size"], embedding_dim=a.embedding_dim,
                            embedding_name=f.get("table", f["name"]))
        columns.append(VarLenSparseFeat(sparse, maxlen=f["maxlen"], combiner="mean") if f["kind"] == "sequence"
                       else sparse)
    tasks = meta["tasks"]
    model = MMOE(columns, task_names=tuple(tasks), l2_reg_embedding=a.l2_reg_embedding, seed=a.seed)
    optimizer = tf.keras.optimizers.legacy.Adam(a.learning_rate)  # legacy: its slots are reachable by variable
    model.compile(optimizer, loss=["binary_crossentropy"] * len(tasks))
    tables = [layer for layer in model.layers if isinstance(layer, tf.keras.layers.Embedding)]

    def split(name):
        return {f["name"]: data[f"{name}/{f['name']}"] for f in meta["features"]}, \
            [data[f"{name}/label/{t}"] for t in tasks]

    x, y = split("train")
    xv, yv = split("valid")
    xt, yt = split("test")

    def aucs(xs, ys):
        predictions = model.predict(xs, batch_size=16384, verbose=0)
        return {t: float(roc_auc_score(ys[i], np.asarray(predictions[i]).ravel())) for i, t in enumerate(tasks)}

    history = []
    for epoch in range(1, a.epochs + 1):
        if epoch > 1 and not a.no_meda:
            for k, layer in enumerate(tables):
                table = layer.embeddings
                init = tf.keras.initializers.RandomNormal(stddev=1e-4, seed=a.seed * 1000 + epoch * 100 + k)
                table.assign(init(table.shape))
                for slot in ("m", "v"):
                    moment = optimizer.get_slot(table, slot)
                    moment.assign(tf.zeros_like(moment))
        model.fit(x, y, batch_size=a.batch_size, epochs=1, shuffle=not a.in_order, verbose=0)
        history.append({"epoch": epoch, "valid": aucs(xv, yv), "test": aucs(xt, yt)})
    best = max(history, key=lambda h: np.mean(list(h["valid"].values())))
    print(json.dumps({"library": "deepctr", "model": "mmoe", "meda": not a.no_meda, "seed": a.seed,
                      "in_order": a.in_order,
                      "history": history, "best_epoch": best["epoch"], "test_auc": best["test"]}))


if __name__ == "__main__":
    main()
