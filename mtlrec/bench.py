"""Train several models over several seeds, then report them side by side.

Each run is `mtlrec-train --flagfile=EXPERIMENTS/<model>.flags` in its own
process (the same code path as the command, and a per-run peak memory),
with the bench's extra train flags, `--seed=SEED+k` and
`--model_dir=OUT/runs/<model>/seed<seed>`. Runs go seed by seed, each seed
over every model, so a noisy host affects models alike. A finished run is
skipped on a rerun; an interrupted one resumes from its checkpoints. A run
that fails is reported at the end (its log in OUT/logs/) and the others go on.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Sequence
from typing import Any

from absl import logging

from mtlrec import io as mio
from mtlrec import outputs
from mtlrec.report import write_report
from mtlrec.rundir import read_status

BENCH_FILE = "bench.json"


def run_dir(out: str, model: str, seed: int) -> str:
    return mio.join(out, "runs", model, f"seed{seed}")


def _finished(path: str) -> bool:
    return mio.exists(mio.join(path, "metrics.json")) and read_status(path) == "finished"


def _last_error(log_path: str) -> str:
    with open(log_path, errors="replace") as f:
        lines = [line.strip() for line in f if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    return (errors or lines or ["(no output)"])[-1][:300]


def bench(models: Sequence[str], seeds: Sequence[int], out: str, data: str, train_args: Sequence[str] = (),
          experiments_dir: str = "experiments") -> dict[str, Any]:
    """Trains what is not finished yet, writes OUT/report.*; returns the
    report's paths and rows, and `failed` (run dirs whose training failed)."""
    for model in models:
        flagfile = os.path.join(experiments_dir, f"{model}.flags")
        if not os.path.exists(flagfile):
            raise FileNotFoundError(f"--models={model}: no flagfile {flagfile} (run from the repository root or "
                                    "pass --experiments_dir)")
    settings = {"data": data, "train_args": list(train_args), "experiments_dir": experiments_dir}
    if outputs.claim(out, "bench", "out") == outputs.OURS:
        recorded = mio.read_json(mio.join(out, BENCH_FILE))
        if {k: recorded.get(k) for k in settings} != settings:
            raise ValueError(f"--out={out} holds a bench with other settings ({json.dumps(recorded)}); "
                             "its runs would not compare: choose another --out")
    mio.makedirs(mio.join(out, "logs"))
    mio.write_atomic(mio.join(out, BENCH_FILE), json.dumps({**settings, "models": list(models),
                                                               "seeds": list(seeds)}, indent=1).encode())
    plan = [(model, seed) for seed in seeds for model in models]
    failed: list[str] = []
    for i, (model, seed) in enumerate(plan, 1):
        path = run_dir(out, model, seed)
        if _finished(path):
            logging.info("bench [%d/%d] %s seed %d: finished before, skipped", i, len(plan), model, seed)
            continue
        log_path = mio.join(out, "logs", f"{model}-seed{seed}.log")
        command = [sys.executable, "-m", "mtlrec.cli.train", f"--flagfile={experiments_dir}/{model}.flags",
                   *train_args, f"--data={data}", f"--model={model}", f"--model_dir={path}", f"--seed={seed}"]
        logging.info("bench [%d/%d] %s seed %d: training (log: %s)", i, len(plan), model, seed, log_path)
        start = time.perf_counter()
        with open(log_path, "a") as log:
            log.write(f"$ {' '.join(command)}\n")
            log.flush()
            code = subprocess.call(command, stdout=log, stderr=subprocess.STDOUT)
        if code != 0:
            failed.append(path)
            logging.warning("bench [%d/%d] %s seed %d: failed (exit %d): %s", i, len(plan), model, seed, code,
                            _last_error(log_path))
            continue
        metrics = mio.read_json(mio.join(path, "metrics.json"))
        logging.info("bench [%d/%d] %s seed %d: done in %.0f s, test auc_mean %.4f", i, len(plan), model, seed,
                     time.perf_counter() - start, metrics["test"]["auc_mean"])
    finished = [run_dir(out, m, s) for m, s in plan if _finished(run_dir(out, m, s))]
    result: dict[str, Any] = {"failed": failed}
    if finished:
        result.update(write_report(finished, out))
    return result
