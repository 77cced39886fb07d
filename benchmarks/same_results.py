"""Whether the working tree trains exactly what a base commit trains.

    python -m benchmarks.same_results --base=1e9ef19

Runs fixed-seed MMoE, PLE with per-task stopping and APLE with MEDA's reset
(generated data, dropout on) once with the base commit's `mtlrec` and once
with the working tree's, and compares metrics.json's test figures and
validation history bit for bit. Exits 1 on any difference: a restructuring
that claims "no change in behaviour" runs this (issue 25).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile

from absl import app

# --base (and the checkout of a commit) are compare_commits' own.
from benchmarks.compare_commits import _BASE, _REPO, _checkout

COMMON = ["--synthetic_rows=20000", "--batch_size=512", "--seed=7", "--dropout=0.1", "--tasks=click,like,share",
          "--verbose=0", "--export=false", "--tensorboard=false"]
RUNS = {
    "mmoe": ["--model=mmoe", "--epochs=3"],
    "ple": ["--model=ple", "--task_patience=1", "--patience=6", "--epochs=6", "--learning_rate=0.02"],
    "aple": ["--model=aple", "--epochs=3", "--embedding_reset=epoch", "--ame_task_dims=16,32", "--ame_shared_dim=16"],
}


def _train(tree: str, name: str, out: str, cache: str) -> dict:
    env = {**os.environ, "PYTHONPATH": tree, "MTLREC_CACHE": cache, "TF_CPP_MIN_LOG_LEVEL": "3"}
    model_dir = os.path.join(out, name)
    subprocess.run([sys.executable, "-m", "mtlrec.cli.train", *RUNS[name], *COMMON, f"--model_dir={model_dir}"],
                   env=env, cwd=tree, check=True, capture_output=True)
    with open(os.path.join(model_dir, "metrics.json")) as f:
        metrics = json.load(f)
    return {"test": metrics["test"], "valid": [h["valid"] for h in metrics["history"]]}


def main(argv):
    del argv
    same = True
    with tempfile.TemporaryDirectory(prefix="mtlrec-same-") as work:
        os.makedirs(os.path.join(work, "base"))
        base = _checkout(_BASE.value, os.path.join(work, "base"))
        for name in RUNS:
            a = _train(base, name, os.path.join(work, "out-base"), os.path.join(work, "cache-base"))
            b = _train(_REPO, name, os.path.join(work, "out-new"), os.path.join(work, "cache-new"))
            equal = a == b
            same &= equal
            print(json.dumps({"model": name, "bit_identical": equal,
                              "test_auc": {t: m["auc"] for t, m in b["test"].items() if isinstance(m, dict)}}))
    return 0 if same else 1


if __name__ == "__main__":
    app.run(main)
