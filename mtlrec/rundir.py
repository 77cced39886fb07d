"""A training run's directory: what run it holds, who writes it, how far it got.

`MODEL_DIR/run.json` records the settings that define the run (model,
architecture, tasks in order, loss weights, optimizer, batch, seed, the
dataset's identity) and the run's status. A rerun with the same settings
resumes; a rerun with other settings stops before doing anything and lists
the differences. `MODEL_DIR/.lock` (an exclusive `flock`, released by the
kernel when the process dies, even by SIGKILL) refuses a second concurrent
run. Export reads the status: only a `finished` run is exported.
"""

from __future__ import annotations

import fcntl
import json
import os
from typing import Any

from absl import logging

from mtlrec import io as mio
from mtlrec import outputs

RUN_FILE = "run.json"
LOCK_FILE = outputs.LOCK
FORMAT = 1
# What mtlrec-train writes in MODEL_DIR and --overwrite removes (export/ stays: see RunDir._clear).
OWNED = (RUN_FILE, "state.json", "checkpoints", "best.weights.h5", "model.keras", "metrics.json",
         "diagnostics.json", "export_info.json", "tensorboard")

def identity(config, manifest) -> dict[str, Any]:
    """The settings that define a run (`TrainConfig.identity`, by what each
    field is marked) and the dataset's, as plain JSON values."""
    out = config.identity()
    out["dataset"] = {"created": manifest.raw.get("created"), "vocab_size": manifest.vocab_size,
                      "rows": {s: manifest.rows(s) for s in manifest.splits}}
    return json.loads(json.dumps(out, default=list))  # tuples -> lists, as read back


def flatten(d: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested settings as one level: {"a.b": v}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        if isinstance(v, dict) and v:
            out.update(flatten(v, f"{prefix}{k}."))
        else:
            out[f"{prefix}{k}"] = v
    return out


def differences(recorded: dict[str, Any], now: dict[str, Any]) -> list[str]:
    a, b = flatten(recorded), flatten(now)
    return [f"{k}: {a.get(k, '(unset)')!r} recorded, {b.get(k, '(unset)')!r} now"
            for k in sorted(set(a) | set(b)) if a.get(k) != b.get(k)]


class RunDir:
    """Claims MODEL_DIR for one run: checks, locks and records it.

    Use as a context manager around the whole training; `status` updates
    `run.json` atomically.
    """

    def __init__(self, model_dir: str, config, manifest, parent: dict[str, Any] | None = None):
        self.path = model_dir
        self.parent = parent  # the run a warm start continues (run.json `parent`)
        self.run_file = mio.join(model_dir, RUN_FILE)
        self.identity = identity(config, manifest)
        self.overwrite = config.overwrite
        self._lock_fd: int | None = None
        self.record: dict[str, Any] = {}

    def __enter__(self) -> RunDir:
        state = outputs.claim(self.path, "run", "model_dir")
        mio.makedirs(self.path)
        self._lock()
        try:
            if state == outputs.OURS:
                self._check_same_run()
            if not self.record:
                self.record = {"format": FORMAT, "identity": self.identity, "status": "new",
                               **({"parent": self.parent} if self.parent else {})}
                mio.write_atomic(self.run_file, json.dumps(self.record, indent=1).encode())
            # We hold the lock: temporary files left here belong to killed runs.
            mio.remove_stale_temp(self.path, "")
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        if self._lock_fd is not None:
            os.close(self._lock_fd)  # releases the flock
            self._lock_fd = None

    def _lock(self) -> None:
        if mio.is_remote(self.path):
            return  # object stores have no locks: one writer per model_dir is the user's to ensure
        path = os.path.join(mio.local_path(self.path), LOCK_FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise FileExistsError(
                f"--model_dir={self.path} is in use by another mtlrec run (pid {holder}); "
                "wait for it to finish or choose another --model_dir"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, str(os.getpid()).encode(), 0)
        self._lock_fd = fd

    def _check_same_run(self) -> None:
        if self.overwrite:
            self._clear()
            return
        if not mio.exists(self.run_file):
            raise ValueError(
                f"--model_dir={self.path} holds a run written by an older mtlrec (no {RUN_FILE}), whose "
                "settings cannot be checked; pass --overwrite to start over there, or choose another --model_dir"
            )
        self.record = mio.read_json(self.run_file)
        diff = differences(self.record.get("identity", {}), self.identity)
        if diff:
            raise ValueError(
                f"--model_dir={self.path} holds a run with other settings ({'; '.join(diff)}). "
                "Rerun with the recorded settings to resume it, choose another --model_dir, "
                "or pass --overwrite (overwrite=True in TrainConfig) to start over (deletes its checkpoints "
                "and results)"
            )

    def _clear(self) -> None:
        """Removes what mtlrec-train wrote here (`OWNED`, and temporary files
        of killed runs), nothing else: a user's files and the export versions
        (a server may be loading them; the new run adds a later version) stay."""
        kept = []
        for name in mio.listdir(self.path):
            if name == LOCK_FILE:
                continue
            if name not in OWNED and ".tmp-" not in name:
                kept.append(name)
                continue
            path = mio.join(self.path, name)
            if mio.isdir(path):
                mio.rmtree(path)
            else:
                mio.remove(path)
        if kept:
            logging.info("--overwrite: kept %s in %s (not written by mtlrec-train, or exports)",
                         ", ".join(sorted(kept)), self.path)
        self.record = {}

    def status(self, status: str, **extra: Any) -> None:
        self.record.update(status=status, **extra)
        mio.write_atomic(self.run_file, json.dumps(self.record, indent=1, default=str).encode())


def recorded_differences(model_dir: str, config, manifest) -> list[str]:
    """How `config` differs from the run recorded in `model_dir` ([] when it
    matches or nothing is recorded)."""
    path = mio.join(model_dir, RUN_FILE)
    if not mio.exists(path):
        return []
    return differences(mio.read_json(path).get("identity", {}), identity(config, manifest))


def read_status(model_dir: str) -> str | None:
    """The status in `run.json` (None for runs written before it existed)."""
    path = mio.join(model_dir, RUN_FILE)
    if not mio.exists(path):
        return None
    return mio.read_json(path).get("status")


def read_record(model_dir: str) -> dict[str, Any]:
    """`run.json` of `model_dir` ({} when there is none)."""
    path = mio.join(model_dir, RUN_FILE)
    return mio.read_json(path) if mio.exists(path) else {}


def record_export(model_dir: str, path: str) -> None:
    """Notes in `run.json` the SavedModel version the run exported (a rerun of a
    finished, exported run exports nothing more)."""
    record = read_record(model_dir)
    record["exported"] = path
    mio.write_atomic(mio.join(model_dir, RUN_FILE), json.dumps(record, indent=1, default=str).encode())
