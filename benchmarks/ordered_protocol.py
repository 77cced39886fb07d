"""Hash-split validation against time-ordered validation and test, per MEDA epoch.

    python -m benchmarks.ordered_protocol --out=bench/ordered --rows=400000 --users=50000 --items=100000
    python -m benchmarks.ordered_protocol --out=bench/ordered_default          # the generated default's sizes

One time-ordered generated log (`synthetic.generate(ordered=True)`), two
datasets of it, both trained with the MMoE flagfile + the sparse_ids
overlay (MEDA, 6 epochs) and --test_each_epoch:

- `hash`: the training period (the first 90% of the rows) split at random
  8:1 into train and valid, as a random split would; test = the last 10%.
- `ordered`: train = the first 80%, valid = the next 10%, test = the last
  10% (`mtlrec-prepare --order_by=input`), the protocol mtlrec's default.

Both test splits are the same rows: the future. A `period` column (0 hash
train, 1 hash valid, 2 the future) makes the first dataset with
`--order_by=period`. Prints a markdown table per seed: each epoch's valid
click/like AUC under both protocols and the future's. Not part of CI.
"""

import argparse
import json
import os
import subprocess
import sys

import numpy as np


def _write_log(path, rows, users, items, seed):
    from mtlrec.pipelines import synthetic

    rng = np.random.default_rng(seed + 100)
    future = int(0.9 * rows)
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        start = 0
        for i, frame in enumerate(synthetic.generate(rows, seed=seed, n_users=users, n_items=items, ordered=True)):
            index = np.arange(start, start + len(frame))
            period = np.where(index >= future, 2, (rng.random(len(frame)) < 1 / 9).astype(int))
            frame["period"] = period
            frame.to_csv(f, header=i == 0, index=False)
            start += len(frame)
    os.replace(tmp, path)


def _prepare(csv_path, out, schema, *extra):
    if os.path.exists(os.path.join(out, "manifest.json")):
        return
    subprocess.run([sys.executable, "-m", "mtlrec.cli.prepare", f"--input={csv_path}", f"--output={out}",
                    f"--schema={schema}", *extra], check=True)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rows", type=int, default=200_000)
    p.add_argument("--users", type=int, default=None)
    p.add_argument("--items", type=int, default=None)
    p.add_argument("--seeds", default="0")
    p.add_argument("--flagfiles", default="experiments/mmoe.flags,experiments/sparse_ids.flags")
    p.add_argument("--extra", default="", help="more mtlrec-train flags, space separated")
    a = p.parse_args()
    from mtlrec.config import tenrec_schema
    from mtlrec.pipelines.synthetic import default_sizes

    users, items = a.users or default_sizes(a.rows)[0], a.items or default_sizes(a.rows)[1]
    os.makedirs(a.out, exist_ok=True)
    schema = os.path.join(a.out, "schema.json")
    obj = tenrec_schema().to_json()
    obj["ignore"] = [*obj["ignore"], "period"]
    with open(schema, "w") as f:
        json.dump(obj, f)
    for seed in [int(s) for s in a.seeds.split(",")]:
        csv_path = os.path.join(a.out, f"log-{seed}.csv")
        if not os.path.exists(csv_path):
            _write_log(csv_path, a.rows, users, items, seed)
        hash_ds, ordered_ds = os.path.join(a.out, f"hash-{seed}"), os.path.join(a.out, f"ordered-{seed}")
        # period 0 is ~80% of the rows, 1 ~10%, 2 exactly the last 10%: a cut at 85% falls in period 1's
        # rows and one at 95% in period 2's, so ties put exactly period 0 in train and 1 in valid.
        _prepare(csv_path, hash_ds, schema, "--order_by=period", "--splits=0.85,0.1,0.05")
        _prepare(csv_path, ordered_ds, schema, "--order_by=input", "--splits=0.8,0.1,0.1")
        history = {}
        for name, data in (("hash", hash_ds), ("ordered", ordered_ds)):
            run = os.path.join(a.out, f"run-{name}-{seed}")
            subprocess.run([sys.executable, "-m", "mtlrec.cli.train",
                            *[f"--flagfile={f}" for f in a.flagfiles.split(",")], f"--data={data}",
                            f"--model_dir={run}", f"--seed={seed}", "--test_each_epoch", "--noexport",
                            "--notensorboard", "--verbose=0", *a.extra.split()], check=True)
            with open(os.path.join(run, "metrics.json")) as f:
                metrics = json.load(f)
            history[name] = metrics
        print(f"\nseed {seed}: {a.rows} rows, {users} users, {items} items; flagfiles {a.flagfiles} {a.extra}")
        print("| epoch | hash valid click / like | ordered valid click / like | future (test) click / like, "
              "hash-split run | future click / like, ordered run |")
        print("|---|---|---|---|---|")
        for h, o in zip(history["hash"]["history"], history["ordered"]["history"]):
            def pair(split):
                return f"{split['click']['auc']:.4f} / {split['like']['auc']:.4f}"
            print(f"| {h['epoch']} | {pair(h['valid'])} | {pair(o['valid'])} | {pair(h['test'])} | {pair(o['test'])} |")
        for name in ("hash", "ordered"):
            m = history[name]
            print(f"{name}: best epoch {m['best_epoch']}, test click {m['test']['click']['auc']:.4f} like "
                  f"{m['test']['like']['auc']:.4f}; cold rows {m['test_cold']['fraction_of_test_rows']:.1%}")


if __name__ == "__main__":
    main()
