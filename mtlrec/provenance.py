"""Where a result came from: versions, code, command line, time.

Written into `metrics.json` so two runs can be told apart later.
"""

from __future__ import annotations

import datetime
import os
import platform
import subprocess
import sys
from typing import Any


def now() -> str:
    return datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")


def _version(package: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def git_commit() -> str | None:
    """The commit of the mtlrec checkout (with `-dirty` for local changes),
    or None when mtlrec is not installed from a git checkout."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    if not os.path.exists(os.path.join(root, ".git")):
        return None
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=5, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", root, "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=5).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return commit + ("-dirty" if dirty else "")


def provenance(started_at: str, flags: dict[str, Any] | None = None) -> dict[str, Any]:
    """The provenance block of metrics.json."""
    import keras
    import tensorflow as tf

    return {
        "mtlrec_version": _version("mtlrec"),
        "git_commit": git_commit(),
        "tensorflow_version": tf.__version__,
        "keras_version": keras.__version__,
        "python_version": platform.python_version(),
        "started_at": started_at,
        "finished_at": now(),
        "command_line": list(sys.argv),
        "flags": flags,
    }
