"""The run state: what a run has done so far, written to `state.json` with
every checkpoint and read back when a run resumes."""

from __future__ import annotations

import dataclasses
import json
import resource
from typing import Any

from mtlrec import io as mio


@dataclasses.dataclass
class RunState:
    """Where a run stands after its last finished epoch.

    `history` holds one entry per epoch (as metrics.json's `history`);
    `task_losses` each epoch's mean training loss per task (DWA reads them);
    `tasks` and `frozen_tasks` are per-task stopping's records (best AUC,
    best epoch, epochs without improvement; the epoch each frozen task
    froze). The times and memory add up over the processes of a resumed run.
    """

    epoch: int = 0
    best_score: float | None = None
    best_epoch: int | None = None
    bad_epochs: int = 0
    best_after_freezing: bool = False  # the best weights were validated after a freeze
    stopped_early: bool = False
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    task_losses: list[list[float]] = dataclasses.field(default_factory=list)
    tasks: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)
    frozen_tasks: dict[str, int] = dataclasses.field(default_factory=dict)
    train_seconds: float = 0.0
    train_examples: int = 0
    wall_seconds: float = 0.0
    peak_rss_mb: float = 0.0
    # Wall seconds of the earlier processes of a resumed run (not written: it is `wall_seconds` when read).
    wall_seconds_before: float = dataclasses.field(default=0.0, metadata={"saved": False})

    def improves(self, score: float) -> bool:
        """Whether `score` beats the best validation score so far."""
        return self.best_score is None or score > self.best_score

    def best_valid(self) -> dict[str, Any] | None:
        """The validation metrics of the selected weights."""
        if not self.best_epoch:
            return None
        entry = self.history[self.best_epoch - 1]
        return entry["valid_after_freezing" if self.best_after_freezing else "valid"]

    def to_json(self) -> bytes:
        return json.dumps({f.name: getattr(self, f.name) for f in dataclasses.fields(self)
                           if f.metadata.get("saved", True)}, indent=1).encode()

    @classmethod
    def read(cls, path: str) -> RunState:
        """The state in `path`; fields a state written by an older version
        lacks take their defaults."""
        raw = mio.read_json(path)
        known = {f.name for f in dataclasses.fields(cls) if f.metadata.get("saved", True)}
        state = cls(**{k: v for k, v in raw.items() if k in known})
        state.best_after_freezing = bool(state.best_after_freezing)
        state.stopped_early = bool(state.stopped_early)
        state.wall_seconds_before = state.wall_seconds
        return state


def peak_rss_mb() -> float:
    """This process's peak resident memory, MiB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
