"""Where a result came from: versions, code, command line, time, machine.

Written into `metrics.json` so two runs can be told apart later.
"""

from __future__ import annotations

import datetime
import os
import platform
import re
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


# The vector extensions that decide which kernels TensorFlow's CPU ops get:
# AVX-512 and its bfloat16 dot products (AMD Zen 4, Intel Cooper Lake on),
# and Intel's AMX tiles (Sapphire Rapids on).
VECTOR_FLAGS = ("avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile", "amx_bf16", "amx_int8")


def _cpuinfo() -> tuple[str | None, set[str]]:
    try:
        text = open("/proc/cpuinfo", encoding="utf-8").read()
    except OSError:  # not Linux
        return platform.processor() or None, set()
    model = next((line.split(":", 1)[1].strip() for line in text.splitlines() if line.startswith("model name")), None)
    flags = next((line.split(":", 1)[1].split() for line in text.splitlines() if line.startswith("flags")), [])
    return model, set(flags)


def onednn_version() -> str | None:
    """The oneDNN that TensorFlow's wheel was built with, from the headers it
    ships (the library itself exposes no version to Python)."""
    import tensorflow as tf

    path = os.path.join(tf.sysconfig.get_include(), "external", "onednn", "include", "oneapi", "dnnl",
                        "dnnl_version.h")
    try:
        text = open(path, encoding="utf-8").read()
    except OSError:
        return None
    parts = [re.search(rf"#define DNNL_VERSION_{k} (\d+)", text) for k in ("MAJOR", "MINOR", "PATCH")]
    return ".".join(m.group(1) for m in parts) if all(parts) else None


def host() -> dict[str, Any]:
    """The machine a figure was measured on: CPU model, its vector extensions,
    the cores this process may use, and whether TensorFlow's oneDNN ops are on."""
    from mtlrec.training.runtime import host_cores

    model, flags = _cpuinfo()
    return {
        "cpu_model": model,
        "vector_extensions": [f for f in VECTOR_FLAGS if f in flags],
        "logical_cpus": os.cpu_count(),
        "usable_cpus": host_cores(),
        # TensorFlow 2.9+ turns its oneDNN ops on by default on x86 Linux; TF_ENABLE_ONEDNN_OPTS=0 turns them off.
        "onednn_opts": os.environ.get("TF_ENABLE_ONEDNN_OPTS", "1") not in ("0", "false", "False"),
        "onednn_version": onednn_version(),
    }


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
        "host": host(),
        "started_at": started_at,
        "finished_at": now(),
        "command_line": list(sys.argv),
        "flags": flags,
    }


if __name__ == "__main__":  # `python -m mtlrec.provenance`: the host line benchmarks print with their figures
    import json

    print(json.dumps(host()))
