"""Local multi-worker scaling: the same training on 1, 2 and 4 workers.

    python -m benchmarks.distributed_bench --workers=1,2,4 --rows=1000000

Prepares `--rows` generated rows in small shard files (every worker needs
files of its own), then trains `--model` with experiments/<model>.flags
through `mtlrec-launch --workers=N` (N = 1 is plain mtlrec-train) and
prints, per N, the training examples/s (all workers together) and the test
AUC per task. All workers share this machine's cores, so this measures the
cost of the multi-worker machinery, not a cluster's speed-up.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from absl import app, flags

_WORKERS = flags.DEFINE_list("workers", ["1", "2", "4"], "Worker counts.")
_ROWS = flags.DEFINE_integer("rows", 1_000_000, "Generated rows.")
_MODEL = flags.DEFINE_string("model", "ple", "Model (its experiments flagfile).")
_EPOCHS = flags.DEFINE_integer("epochs", 2, "Epochs.")
_WORKDIR = flags.DEFINE_string("workdir", None, "Where data and runs go (default: a temp dir).")


def main(argv):
    del argv
    from mtlrec.config import tenrec_schema
    from mtlrec.pipelines.prepare import PrepareConfig, prepare

    work = _WORKDIR.value or tempfile.mkdtemp(prefix="mtlrec-dist-")
    data = os.path.join(work, f"data-{_ROWS.value}")
    if not os.path.exists(os.path.join(data, "manifest.json")):
        prepare(PrepareConfig(output=data, schema=tenrec_schema(), synthetic_rows=_ROWS.value, seed=0,
                              chunk_bytes=4 << 20))
    args = [f"--flagfile=experiments/{_MODEL.value}.flags", f"--data={data}", f"--epochs={_EPOCHS.value}",
            "--patience=10", "--noexport", "--notensorboard"]
    for n in map(int, _WORKERS.value):
        model_dir = os.path.join(work, f"{_MODEL.value}-{n}w")
        if n == 1:
            command = [sys.executable, "-m", "mtlrec.cli.train", *args, f"--model_dir={model_dir}", "--overwrite"]
        else:
            command = [sys.executable, "-m", "mtlrec.cli.launch", f"--workers={n}", "--", *args,
                       f"--model_dir={model_dir}", "--overwrite"]
        subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        with open(os.path.join(model_dir, "metrics.json")) as f:
            m = json.load(f)
        print(json.dumps({"workers": n, "replicas": m["replicas"], "train_examples_per_sec": round(m["train_examples_per_sec"]),
                          "test_auc": {t["name"]: round(m["test"][t["name"]]["auc"], 4) for t in m["tasks"]},
                          "best_epoch": m["best_epoch"]}), flush=True)


if __name__ == "__main__":
    app.run(main)
