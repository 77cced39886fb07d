"""Where mtlrec may write: outputs never replace anything mtlrec did not make.

Every command that writes a directory or file calls `claim` first. A path
is free when it does not exist or is an empty directory; it is mtlrec's own
when it holds the marker file of the same kind of artifact (a dataset's
`manifest.json`, a run's `run.json`, ...). Anything else (an unrelated file,
a folder of the user's, an input of the same command) is refused, with
`--overwrite` or without: that flag only replaces an artifact of the same
kind.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable

from mtlrec import io as mio

# kind -> (what it is, the files any one of which marks it as mtlrec's)
KINDS: dict[str, tuple[str, tuple[str, ...]]] = {
    "dataset": ("an mtlrec-prepare dataset", ("manifest.json",)),
    "run": ("an mtlrec-train run", ("run.json", "state.json")),
    "tuner": ("an mtlrec-tune search", ("oracle.json", "best.flags", "trials.csv")),
    "staging": ("an mtlrec-prepare staging directory", (".mtlrec-staging",)),
    "report": ("an mtlrec-report output", ("report.md", "report.csv", "bench.json")),
    "bench": ("an mtlrec-bench directory", ("bench.json",)),
}

ABSENT, EMPTY, OURS = "absent", "empty", "ours"
LOCK = ".lock"  # mtlrec-train's lock file (mtlrec.rundir)


def _abs(path: str) -> str:
    return path.rstrip("/") if mio.is_remote(path) else os.path.realpath(mio.local_path(path))


def _inside(child: str, parent: str) -> bool:
    return child == parent or child.startswith(parent.rstrip("/") + "/")


def holds_cwd(path: str) -> bool:
    """Whether the local `path` is the working directory or one of its parents."""
    return _inside(os.path.realpath(os.getcwd()), _abs(path))


def check_not_input(path: str, inputs: Iterable[str], flag: str) -> None:
    """Refuse an output that is, or contains, one of the inputs."""
    target = _abs(path)
    for inp in inputs:
        if _inside(_abs(inp), target):
            raise FileExistsError(f"--{flag}={path} would overwrite the input {inp}: choose another --{flag}")


def _listing(path: str, limit: int = 5) -> str:
    names = sorted(mio.listdir(path))
    shown = ", ".join(names[:limit]) + (f", ... ({len(names)} entries)" if len(names) > limit else "")
    return shown


def claim(path: str, kind: str, flag: str, inputs: Iterable[str] = ()) -> str:
    """Checks that `path` may hold an artifact of `kind`; returns its state.

    Returns ABSENT, EMPTY (an empty directory) or OURS (an artifact of the
    same kind, to be resumed or, with --overwrite, replaced). Raises
    FileExistsError naming what is there when the path belongs to someone
    else or is one of `inputs`.
    """
    what, markers = KINDS[kind]
    check_not_input(path, inputs, flag)
    if not mio.exists(path):
        return ABSENT
    if not mio.isdir(path):
        raise FileExistsError(f"--{flag}={path} is an existing file, not {what}: choose another --{flag}")
    names = [n for n in mio.listdir(path) if n != LOCK]
    if not names:  # a lock alone: a run killed as it started
        return EMPTY
    if any(mio.exists(mio.join(path, m)) for m in markers):
        return OURS
    if all(n.startswith(tuple(f"{m}.tmp-" for m in markers)) for n in names):
        return OURS  # nothing but a marker's temporary file: killed while the marker was first written
    raise FileExistsError(
        f"--{flag}={path} already holds files that are not {what} ({_listing(path)}); "
        f"mtlrec will not replace them, even with --overwrite: choose another --{flag} or remove them yourself"
    )


def claim_file(path: str, flag: str, overwrite: bool, inputs: Iterable[str] = (),
               is_ours=None, what: str = "an mtlrec output") -> None:
    """The same rules for a single output file. `is_ours(path)` tells
    whether an existing file is an artifact of the same kind."""
    check_not_input(path, inputs, flag)
    if not mio.exists(path):
        return
    if mio.isdir(path):
        raise FileExistsError(f"--{flag}={path} is a directory: expected a file path")
    if is_ours is None or not is_ours(path):
        raise FileExistsError(
            f"--{flag}={path} exists and is not {what}; mtlrec will not replace it, even with --overwrite: "
            f"choose another --{flag}"
        )
    if not overwrite:
        raise FileExistsError(f"--{flag}={path} exists ({what}): pass --overwrite to replace it")


# A single output file (mtlrec-predict's CSV) is known as mtlrec's by a mark
# beside it: `.NAME.mtlrec` records the command and the file's size and
# SHA-256, which a user's file at that path cannot match by accident (a
# header, a name or a column list can).
def mark_path(path: str) -> str:
    head, name = os.path.split(mio.local_path(path))
    return os.path.join(head, f".{name}.mtlrec")


def _digest(path: str) -> tuple[int, str]:
    sha = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            sha.update(block)
    return os.path.getsize(path), sha.hexdigest()


def mark_file(final_path: str, written: str, command: str) -> None:
    """Records that `command` wrote `written` (a complete file about to be
    renamed to `final_path`)."""
    size, sha = _digest(written)
    record = {"written_by": command, "bytes": size, "sha256": sha}
    mio.write_atomic(mark_path(final_path), json.dumps(record).encode())


def is_marked(path: str, command: str) -> bool:
    """Whether `path` is, byte for byte, the file `command` last wrote there."""
    mark = mark_path(path)
    if not os.path.exists(mark):
        return False
    try:
        record = json.loads(open(mark, encoding="utf-8").read())
    except (ValueError, OSError):
        return False
    if record.get("written_by") != command or record.get("bytes") != os.path.getsize(mio.local_path(path)):
        return False
    return record.get("sha256") == _digest(mio.local_path(path))[1]
