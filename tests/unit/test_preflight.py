"""mtlrec.training.preflight: what stops a run before its first step."""

import dataclasses

import pytest

from mtlrec.config import ModelConfig, parse_tasks
from mtlrec.data import load_manifest
from mtlrec.training import TrainConfig, preflight


def _config(data, **kw):
    return TrainConfig(model="mmoe", model_dir="unused", data=data, tasks=parse_tasks("click,like"),
                       model_config=ModelConfig(tasks=("click", "like"), embedding_dim=4), **{"batch_size": 64, **kw})


def test_a_sound_run_passes(small_dataset):
    preflight.check_run(_config(small_dataset), load_manifest(small_dataset))


def test_each_setting_that_cannot_work_is_named(small_dataset):
    manifest = load_manifest(small_dataset)
    rows = manifest.rows("train")
    with pytest.raises(ValueError, match=f"--batch_size={rows + 1} is larger than the train split"):
        preflight.check_run(_config(small_dataset, batch_size=rows + 1), manifest)
    with pytest.raises(ValueError, match="--monitor=like/recall: expected auc_mean or <task>/<metric>"):
        preflight.check_run(_config(small_dataset, monitor="like/recall"), manifest)
    with pytest.raises(ValueError, match="--monitor=share/auc"):
        preflight.check_run(_config(small_dataset, monitor="share/auc"), manifest)
    preflight.check_run(_config(small_dataset, monitor="like/gauc"), manifest)
    with pytest.raises(ValueError, match=r"--oov_features=no_such_feature: \['no_such_feature'\] are not id features"):
        preflight.check_run(_config(small_dataset, oov_dropout=0.1, oov_features=("no_such_feature",)), manifest)


def test_a_split_without_rows_stops(small_dataset):
    manifest = load_manifest(small_dataset)
    empty = dataclasses.replace(manifest, splits={**manifest.splits, "test": {**manifest.splits["test"], "rows": 0}})
    assert empty.rows("test") == 0
    with pytest.raises(ValueError, match="the test split has no rows"):
        preflight.check_run(_config(small_dataset), empty)


def test_tables_that_cannot_fit_in_memory_stop_with_the_largest(small_dataset):
    manifest = load_manifest(small_dataset)
    config = _config(small_dataset)
    widths = preflight.table_widths(config, manifest)
    assert set(widths) and all(w == 4 for w in widths.values())  # MMoE: one set of width embedding_dim
    with pytest.raises(ValueError, match=r"the embedding tables need .* GiB .* the largest is '\w+'"):
        preflight.check_tables(config, manifest, memory=1000)
    preflight.check_tables(config, manifest, memory=2**40)
