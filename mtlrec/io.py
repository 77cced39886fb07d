"""File access for local paths and any `tf.io.gfile` scheme (s3://, hdfs://, gs://).

Local paths use the standard library, so processes that never touch remote
storage never import TensorFlow. Remote paths go through `tf.io.gfile` with
`tensorflow_io` imported, which registers the s3:// and hdfs:// filesystems.
"""

from __future__ import annotations

import os
import shutil
from typing import IO, Any


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def _local(path: str) -> str:
    return path[len("file://"):] if path.startswith("file://") else path


def gfile() -> Any:
    """`tf.io.gfile` with tensorflow-io's filesystems registered."""
    import tensorflow as tf
    import tensorflow_io  # noqa: F401  (registers s3:// and hdfs://)

    return tf.io.gfile


def join(*parts: str) -> str:
    if is_remote(parts[0]):
        return "/".join(p.strip("/") if i else p.rstrip("/") for i, p in enumerate(parts))
    return os.path.join(*parts)


def open_binary(path: str, mode: str = "rb") -> IO[bytes]:
    if is_remote(path):
        return gfile().GFile(path, mode)
    return open(_local(path), mode)


def open_text(path: str, mode: str = "r") -> IO[str]:
    if is_remote(path):
        return gfile().GFile(path, mode)  # text mode: reads and writes str
    return open(_local(path), mode, encoding="utf-8")


def exists(path: str) -> bool:
    return gfile().exists(path) if is_remote(path) else os.path.exists(_local(path))


def makedirs(path: str) -> None:
    if is_remote(path):
        gfile().makedirs(path)
    else:
        os.makedirs(_local(path), exist_ok=True)


def rmtree(path: str) -> None:
    if is_remote(path):
        g = gfile()
        try:
            if g.exists(path):
                g.rmtree(path)
        except Exception as e:  # tf.errors.NotFoundError: a prefix with no objects
            if type(e).__name__ != "NotFoundError":
                raise
    else:
        shutil.rmtree(_local(path), ignore_errors=True)


def remove(path: str) -> None:
    if is_remote(path):
        gfile().remove(path)
    else:
        os.remove(_local(path))


def write_atomic(path: str, data: bytes, sync: bool = True) -> None:
    """Write a file so readers see either nothing or all of it.

    `sync=False` skips the fsync, for files that are published later by a
    synced step (prepare's shards: the manifest and the directory rename).
    """
    if is_remote(path):
        # Object stores publish an object only when its upload completes.
        with gfile().GFile(path, "wb") as f:
            f.write(data)
        return
    tmp = f"{_local(path)}.tmp-{os.getpid()}"
    with open(tmp, "wb") as f:
        f.write(data)
        if sync:
            f.flush()
            os.fsync(f.fileno())
    os.replace(tmp, _local(path))
