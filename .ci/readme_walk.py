"""Runs README.md's first-hour sequence, command by command, as a new user would.

The sequence is the ```bash block after the line `<!-- first-hour -->` in
README.md. The steps a CI run has already done (clone, virtualenv, install,
the test suite) are skipped; every other line runs, in order, in a scratch
folder that holds only a link to the repository's `experiments/`, with a
cache of its own (so the generated data is made as on a fresh machine). A
failing line stops the walk and names it, with its output. The time of
each step is printed, to keep README's figures honest.

    python .ci/readme_walk.py [--keep DIR]
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MARK = "<!-- first-hour -->"
DONE_BY_CI = ("git clone", "cd mtlrec", "python3 -m venv", "pip install", "python -m pytest")


def commands(readme: str) -> list[str]:
    """The block's commands: comments stripped, continuation lines joined."""
    text = open(readme, encoding="utf-8").read()
    if MARK not in text:
        raise SystemExit(f"{readme}: no line {MARK} before the first-hour block")
    block = re.search(r"```bash\n(.*?)```", text[text.index(MARK):], re.S)
    if block is None:
        raise SystemExit(f"{readme}: no ```bash block after {MARK}")
    out, pending = [], ""
    for line in block.group(1).splitlines():
        line = re.sub(r"\s+#.*$", "", line).rstrip()  # a comment after the command (no '#' inside commands)
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line = (pending + line).strip()
        pending = ""
        if line and not line.startswith("#"):
            out.append(line)
    return out


def walk(folder: str) -> list[tuple[str, float]]:
    os.symlink(os.path.join(REPO, "experiments"), os.path.join(folder, "experiments"))
    env = dict(os.environ, MTLREC_CACHE=os.path.join(folder, ".cache"))
    timings = []
    for command in commands(os.path.join(REPO, "README.md")):
        if command.startswith(DONE_BY_CI):
            print(f"skipped (done by CI): {command}", flush=True)
            continue
        t0 = time.monotonic()
        res = subprocess.run(["bash", "-c", f"set -euo pipefail; {command}"], cwd=folder, env=env,
                             capture_output=True, text=True)
        took = time.monotonic() - t0
        if res.returncode != 0:
            sys.stderr.write(res.stdout[-3000:] + res.stderr[-5000:])
            raise SystemExit(f"README first-hour step failed (status {res.returncode}): {command}")
        timings.append((command, took))
        print(f"{took:7.1f} s  {command}", flush=True)
    return timings


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keep", help="run in this (new or empty) folder and keep what the steps wrote")
    args = parser.parse_args()
    if args.keep:
        os.makedirs(args.keep, exist_ok=True)
        if os.listdir(args.keep):
            raise SystemExit(f"--keep {args.keep}: the folder is not empty")
        folder = os.path.abspath(args.keep)
    else:
        folder = tempfile.mkdtemp(prefix="mtlrec-readme-")
    try:
        timings = walk(folder)
    finally:
        if not args.keep:
            shutil.rmtree(folder, ignore_errors=True)
    print(f"{sum(t for _, t in timings):7.1f} s  in all, {len(timings)} steps")


if __name__ == "__main__":
    main()
