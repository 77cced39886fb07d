"""Training throughput of the library at two commits, runs alternated.

    python -m benchmarks.compare_commits --base=ebef087 --rounds=3 \\
        --models=ple,aple,stem,aitm,mmoe,esmm -- --sizes=flagfile --novocab

Each round runs `benchmarks.model_bench` (this checkout's script) once
against the `mtlrec` package of `--base` and once against the working tree,
each in its own process, base first in odd rounds and second in even ones
(a side that always ran second measured ~5% slower on unchanged models); the rest of the command line goes to
model_bench. Prints, per model, every run's examples/s, the medians and
new/base. A shared machine drifts: alternating keeps the drift out of the
ratio.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import tempfile

from absl import app, flags

_BASE = flags.DEFINE_string("base", None, "Commit to compare the working tree with.", required=True)
_ROUNDS = flags.DEFINE_integer("rounds", 3, "Alternated rounds (one run of each side per round).")
_MODELS = flags.DEFINE_list("models", ["ple", "aple", "stem", "aitm"], "Models to time.")
_WORKDIR = flags.DEFINE_string("workdir", "bench/model_bench", "Where model_bench keeps its generated dataset.")

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _checkout(commit: str, into: str) -> str:
    """The `mtlrec` and `pipelines` packages of `commit`, unpacked under `into`."""
    archive = subprocess.run(["git", "-C", _REPO, "archive", commit, "mtlrec", "pipelines"],
                             check=True, capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", into], input=archive, check=True)
    return into


def _run(tree: str, extra: list[str]) -> dict[str, int]:
    """examples/s per model of one model_bench run with `mtlrec` taken from `tree`."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([tree, _REPO]), "TF_CPP_MIN_LOG_LEVEL": "3"}
    cmd = [sys.executable, "-m", "benchmarks.model_bench", f"--models={','.join(_MODELS.value)}",
           f"--workdir={os.path.abspath(_WORKDIR.value)}", "--repeats=1", *extra]
    out = subprocess.run(cmd, env=env, cwd=tempfile.gettempdir(), check=True, capture_output=True, text=True).stdout
    rows = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    return {r["model"]: r["examples_per_sec_median"] for r in rows if "model" in r}


def main(argv):
    extra = [a for a in argv[1:] if a != "--"]
    with tempfile.TemporaryDirectory(prefix="mtlrec-base-") as base:
        sides = {"base": _checkout(_BASE.value, base), "new": _REPO}
        runs: dict[str, dict[str, list[int]]] = {s: {m: [] for m in _MODELS.value} for s in sides}
        for r in range(_ROUNDS.value):
            order = list(sides.items()) if r % 2 == 0 else list(sides.items())[::-1]  # base-new, new-base, ...
            for side, tree in order:
                for model, rate in _run(tree, extra).items():
                    runs[side][model].append(rate)
                print(json.dumps({"round": r + 1, "side": side, **{m: v[-1] for m, v in runs[side].items()}}),
                      flush=True)
    print("| model | base examples/s | new examples/s | base median | new median | new / base |")
    print("|---|---|---|---|---|---|")
    for m in _MODELS.value:
        b, n = statistics.median(runs["base"][m]), statistics.median(runs["new"][m])
        print(f"| {m} | {', '.join(f'{v:,}' for v in runs['base'][m])} | {', '.join(f'{v:,}' for v in runs['new'][m])} "
              f"| {b:,.0f} | {n:,.0f} | {n / b:.2f}x |")


if __name__ == "__main__":
    app.run(main)
