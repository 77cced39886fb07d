"""mtlrec.rundir: a run's identity, its claim on MODEL_DIR, the lock and the status."""

import json
import types

import pytest

from mtlrec import rundir
from mtlrec.config import ModelConfig, parse_tasks
from mtlrec.training.config import TrainConfig


def _config(model_dir, **kw):
    tasks = parse_tasks("click,like|click")
    return TrainConfig(model="mmoe", model_dir=str(model_dir), data="unused", tasks=tasks,
                       model_config=ModelConfig(tasks=("click", "like")), **kw)


MANIFEST = types.SimpleNamespace(raw={"created": "2026-12-03T00:00:00"}, vocab_size={"user_id": 10},
                                 splits=("train", "valid"), rows=lambda s: {"train": 100, "valid": 20}[s])


def test_identity_holds_what_the_weights_mean_and_not_how_the_run_went(tmp_path):
    ident = rundir.identity(_config(tmp_path, epochs=5, patience=2, verbose=0, seed=3), MANIFEST)
    assert ident["tasks"] == ["click", "like|click"] and ident["seed"] == 3
    assert ident["loss_weights"] == {"click": 1.0, "like": 1.0}
    assert ident["dataset"] == {"created": "2026-12-03T00:00:00", "vocab_size": {"user_id": 10},
                                "rows": {"train": 100, "valid": 20}}
    for never in ("model_dir", "data", "epochs", "patience", "verbose", "overwrite", "steps_per_execution"):
        assert never not in ident
    assert "tasks" not in ident["model_config"]
    # Settings at their defaults stay out, so runs recorded before they existed still resume.
    assert not {"embedding_reset", "task_patience", "loss_balancing", "dwa_temperature"} & set(ident)
    changed = rundir.identity(_config(tmp_path, embedding_reset="epoch", loss_balancing="dwa"), MANIFEST)
    assert changed["embedding_reset"] == "epoch"
    assert changed["loss_balancing"] == "dwa" and changed["dwa_temperature"] == 2.0
    assert "gradnorm_alpha" not in changed  # only the chosen rule's settings


def test_differences_name_each_changed_setting():
    diff = rundir.differences({"seed": 1, "model_config": {"dropout": 0.1}}, {"seed": 2, "model_config": {}})
    assert diff == ["model_config: '(unset)' recorded, {} now", "model_config.dropout: 0.1 recorded, '(unset)' now",
                    "seed: 1 recorded, 2 now"]


def test_a_run_dir_records_resumes_refuses_other_settings_and_locks(tmp_path):
    run = tmp_path / "run"
    with rundir.RunDir(str(run), _config(run), MANIFEST) as rd:
        rd.status("training", epochs=2)
        record = json.loads((run / rundir.RUN_FILE).read_text())
        assert record["status"] == "training" and record["epochs"] == 2 and record["format"] == rundir.FORMAT
        with pytest.raises(FileExistsError, match=r"in use by another mtlrec run \(pid \d+\)"):
            rundir.RunDir(str(run), _config(run), MANIFEST).__enter__()
    assert rundir.read_status(str(run)) == "training"
    with rundir.RunDir(str(run), _config(run, epochs=9), MANIFEST) as rd:  # not identity: resumes
        assert rd.record["status"] == "training"
    with pytest.raises(ValueError, match=r"other settings \(seed: 0 recorded, 4 now\)"):
        rundir.RunDir(str(run), _config(run, seed=4), MANIFEST).__enter__()
    assert rundir.recorded_differences(str(run), _config(run, seed=4), MANIFEST) == ["seed: 0 recorded, 4 now"]
    (run / "checkpoints").mkdir()
    with rundir.RunDir(str(run), _config(run, seed=4, overwrite=True), MANIFEST) as rd:
        assert rd.record["status"] == "new" and rd.record["identity"]["seed"] == 4
    assert not (run / "checkpoints").exists()


def test_a_folder_of_someone_elses_files_is_never_claimed(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an mtlrec-train run"):
        rundir.RunDir(str(tmp_path), _config(tmp_path, overwrite=True), MANIFEST).__enter__()
    assert (tmp_path / "notes.txt").read_text() == "mine"
    assert rundir.read_status(str(tmp_path)) is None
