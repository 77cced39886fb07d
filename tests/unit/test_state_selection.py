"""mtlrec.training.state and selection: the run state on disk, the best epoch and patience."""

import json

import pytest

from mtlrec.training import selection
from mtlrec.training.state import RunState


def test_the_state_round_trips_and_reads_an_older_state_json(tmp_path):
    state = RunState(epoch=2, best_score=0.7, best_epoch=1, bad_epochs=1, history=[{"epoch": 1}, {"epoch": 2}],
                     task_losses=[[0.5, 0.2]], frozen_tasks={"like": 2}, train_seconds=3.5, wall_seconds=9.0)
    path = tmp_path / "state.json"
    path.write_bytes(state.to_json())
    assert "wall_seconds_before" not in json.loads(path.read_text())
    back = RunState.read(str(path))
    assert back.wall_seconds_before == 9.0  # the earlier processes' time
    back.wall_seconds_before = 0.0
    assert back == state
    # A state.json written before the run state was typed: only some keys, and one it no longer writes.
    path.write_text(json.dumps({"epoch": 1, "best_score": 0.6, "best_epoch": 1, "bad_epochs": 0,
                                "history": [{"epoch": 1}], "wall_seconds": 4.0, "wall_seconds_before": 1.0}))
    old = RunState.read(str(path))
    assert (old.epoch, old.best_epoch, old.task_losses, old.frozen_tasks, old.stopped_early) == (1, 1, [], {}, False)
    assert old.wall_seconds_before == 4.0


def test_selection_keeps_the_best_and_counts_epochs_without_improvement():
    state = RunState()
    assert selection.select(state, 0.6, 1) and (state.best_epoch, state.bad_epochs) == (1, 0)
    assert not selection.select(state, 0.59, 2) and state.bad_epochs == 1
    assert not selection.patience_spent(state, 2)
    assert not selection.select(state, 0.55, 3, after_freezing=True) and state.bad_epochs == 1
    assert not selection.select(state, 0.6, 3) and selection.patience_spent(state, 2)  # equal is no gain
    assert selection.select(state, 0.61, 4, after_freezing=True)
    assert (state.best_epoch, state.bad_epochs, state.best_after_freezing) == (4, 0, True)
    state.history = [{"valid": "v1"}, {}, {}, {"valid": "v4", "valid_after_freezing": "f4"}]
    assert state.best_valid() == "f4"


def test_the_monitor_score():
    metrics = {"auc_mean": 0.7, "click": {"auc": 0.6, "logloss": 0.4}}
    assert selection.score(metrics, "auc_mean") == 0.7
    assert selection.score(metrics, "click/auc") == 0.6
    assert selection.score(metrics, "click/logloss") == -0.4  # lower is better
    with pytest.raises(ValueError, match="--monitor=like/auc"):
        selection.score(metrics, "like/auc")
