"""File access for local paths and any `tf.io.gfile` scheme (s3://, hdfs://, gs://).

Local paths use the standard library, so processes that never touch remote
storage never import TensorFlow. Remote paths go through `tf.io.gfile` with
`tensorflow_io` imported, which registers the s3:// and hdfs:// filesystems.
"""

from __future__ import annotations

import json
import os
import shutil
from typing import IO, Any


def is_remote(path: str) -> bool:
    return "://" in path and not path.startswith("file://")


def local_path(path: str) -> str:
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
    return open(local_path(path), mode)


def open_text(path: str, mode: str = "r") -> IO[str]:
    if is_remote(path):
        return gfile().GFile(path, mode)  # text mode: reads and writes str
    return open(local_path(path), mode, encoding="utf-8")


def read_json(path: str, what: str = "") -> Any:
    """The JSON value in `path`; a truncated or corrupted file is a
    ValueError naming the file, the place and what to do, not a bare
    "Expecting value: line 7 column 1"."""
    try:
        with open_text(path) as f:
            text = f.read()
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: byte {e.start} is not UTF-8: the file is corrupted, expected "
                         f"{what or 'JSON'} written by mtlrec") from None
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        state = "empty" if not text.strip() else "truncated or corrupted"
        raise ValueError(f"{path}:{e.lineno}:{e.colno}: not valid JSON ({e.msg}): the file is {state}; "
                         f"expected {what or 'JSON'} written by mtlrec") from None


def exists(path: str) -> bool:
    return gfile().exists(path) if is_remote(path) else os.path.exists(local_path(path))


def size(path: str) -> int:
    return gfile().stat(path).length if is_remote(path) else os.path.getsize(local_path(path))


def isdir(path: str) -> bool:
    return gfile().isdir(path) if is_remote(path) else os.path.isdir(local_path(path))


def listdir(path: str) -> list[str]:
    if is_remote(path):
        return [name.rstrip("/") for name in gfile().listdir(path)]
    return os.listdir(local_path(path))


def makedirs(path: str) -> None:
    if is_remote(path):
        gfile().makedirs(path)
    else:
        os.makedirs(local_path(path), exist_ok=True)


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
        shutil.rmtree(local_path(path), ignore_errors=True)


def remove(path: str) -> None:
    if is_remote(path):
        gfile().remove(path)
    else:
        os.remove(local_path(path))


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
    tmp = f"{local_path(path)}.tmp-{os.getpid()}"
    try:
        with open(tmp, "wb") as f:
            f.write(data)
            if sync:
                f.flush()
                os.fsync(f.fileno())
        os.replace(tmp, local_path(path))
    except OSError as e:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise named(e, path) from None


def named(error: OSError, path: str) -> OSError:
    """`error` with `path` as its file name when it has none: a full disk
    ("No space left on device") or a size limit then names where it wrote."""
    if error.filename is not None:
        return error
    return type(error)(error.errno, error.strerror or str(error), path)


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class AtomicFile:
    """A local file that appears at `path` only when closed without error.

    Writes `path.tmp-<pid>` and renames it over `path` at the end; on an
    error the temporary file is removed. A SIGKILL can leave it behind:
    `remove_stale_temp` (called by the next run of the same command) clears
    temporary files of processes that are gone. (Anonymous `O_TMPFILE`
    files would vanish by themselves, but linking one into place fails with
    EXDEV on sandboxed kernels such as gVisor.)
    """

    def __init__(self, path: str, mode: str = "w", before_publish=None):
        """`before_publish(tmp_path)`: called with the complete temporary
        file just before it is renamed into place."""
        self.before_publish = before_publish
        self.path = local_path(path)
        self.tmp = f"{self.path}.tmp-{os.getpid()}"
        text = {} if "b" in mode else {"encoding": "utf-8", "newline": ""}
        self.file = open(self.tmp, mode, **text)

    def __enter__(self):
        return self.file

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            try:
                self.file.flush()
                os.fsync(self.file.fileno())
                self.file.close()
                if self.before_publish is not None:
                    self.before_publish(self.tmp)
                os.replace(self.tmp, self.path)
                return False
            except OSError as e:
                exc = e
        try:
            self.file.close()
        except OSError:
            pass  # the buffered rest could not be written either
        if os.path.exists(self.tmp):
            os.remove(self.tmp)
        if isinstance(exc, OSError) and exc.filename is None:
            raise named(exc, self.path) from None
        if exc_type is None:
            raise exc
        return False


def remove_stale_temp(directory: str, prefix: str) -> None:
    """Removes `prefix*.tmp-<pid>` files and dirs of processes no longer alive."""
    if is_remote(directory) or not os.path.isdir(local_path(directory)):
        return
    for name in os.listdir(local_path(directory)):
        if not name.startswith(prefix) or ".tmp-" not in name:
            continue
        pid = name.rsplit(".tmp-", 1)[1].split("-")[-1].split(".")[0]
        if pid.isdigit() and int(pid) != os.getpid() and not pid_alive(int(pid)):
            path = os.path.join(local_path(directory), name)
            if os.path.isdir(path):
                rmtree(path)
            else:
                os.remove(path)
