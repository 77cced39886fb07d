"""mtlrec-tune: a search beats its worst trial, resumes, and its best flags reproduce."""

import json
import os

import pandas as pd
import pytest

from mtlrec import training, tuning
from mtlrec.config import ModelConfig, parse_tasks
from mtlrec.training import TrainConfig
from tests.helpers import run_cli

SPACE = {"learning_rate": {"type": "float", "min": 1e-4, "max": 3e-2, "log": True},
         "expert_units": {"type": "choice", "values": [8, 32]}}


@pytest.fixture(scope="module")
def searched(learn_dataset, tmp_path_factory):
    tuner_dir = str(tmp_path_factory.mktemp("tune") / "search")
    tasks = parse_tasks("click,like")
    base = TrainConfig(model="mmoe", model_dir=tuner_dir, data=learn_dataset, tasks=tasks,
                       model_config=ModelConfig(tasks=("click", "like"), embedding_dim=8, num_experts=2, tower_units=(8,)),
                       epochs=1, train_steps=40, batch_size=1024, verbose=0, tensorboard=False,
                       devices=("/cpu:0", "/cpu:1"))
    hypermodel = tuning.MtlrecHyperModel(base, SPACE, "val_like_auc")
    result = tuning.search(hypermodel, tuner_dir, "random", max_trials=3, seed=1)
    return tuner_dir, hypermodel, result


def test_search_beats_worst_trial_reading_the_named_task(searched):
    tuner_dir, _, result = searched
    table = pd.read_csv(os.path.join(tuner_dir, "trials.csv"), dtype={"trial": str})
    assert len(table) == 3 and (table.status == "COMPLETED").all()
    assert result["objective"] == "val_like_auc"
    assert table["val_like_auc"].max() > table["val_like_auc"].min()
    for _, row in table.iterrows():
        metrics = json.load(open(os.path.join(tuning.trial_run_dir(tuner_dir, row.trial), "metrics.json")))
        assert metrics["replicas"] == 2  # trials train under MirroredStrategy
        assert row.val_like_auc == pytest.approx(metrics["valid"]["like"]["auc"])
        assert row.val_like_auc != pytest.approx(metrics["valid"]["click"]["auc"])
    assert "| trial | status | val_like_auc |" in open(os.path.join(tuner_dir, "trials.md")).read()


def test_resumed_search_does_not_rerun_finished_trials(searched, monkeypatch):
    tuner_dir, hypermodel, _ = searched
    calls = []
    real_train = training.train

    def counting_train(cfg):
        calls.append(cfg.model_dir)
        return real_train(cfg)

    monkeypatch.setattr(tuning, "train", counting_train)
    tuning.search(hypermodel, tuner_dir, "random", max_trials=4, seed=1)
    assert len(calls) == 1
    assert len(pd.read_csv(os.path.join(tuner_dir, "trials.csv"))) == 4


def test_best_flags_reproduce_the_best_trial(searched, tmp_path):
    tuner_dir, _, _ = searched
    table = pd.read_csv(os.path.join(tuner_dir, "trials.csv"))
    best_score = table["val_like_auc"].max()
    flagfile = os.path.join(tuner_dir, "best.flags")
    assert open(flagfile).readline().startswith("# Best trial")
    res = run_cli("mtlrec.cli.train", f"--flagfile={flagfile}", f"--model_dir={tmp_path / 'best'}",
                  "--noexport", "--verbose=0", "--devices=")
    assert res.returncode == 0, res.stderr[-3000:]
    metrics = json.loads((tmp_path / "best" / "metrics.json").read_text())
    # Same data, seed and settings; one device instead of two: float sums
    # in another order, so "within noise", not bit-equal.
    assert metrics["valid"]["like"]["auc"] == pytest.approx(best_score, abs=0.01)


def test_objective_and_space_errors():
    assert tuning.objective_of("auc_mean", ("click",)) == ("val_auc_mean", None)
    assert tuning.objective_of("click=1,like=2", ("click", "like")) == ("val_weighted_auc", {"click": 1.0, "like": 2.0})
    with pytest.raises(ValueError, match="--objective=clik"):
        tuning.objective_of("clik", ("click",))
    with pytest.raises(ValueError, match="not a training or model setting"):
        tuning._check("lr", {"type": "float"})
    space = tuning.default_space("mmoe_dlen", ("click", "like"))
    assert {"dlen_alpha_scale", "num_experts", "loss_weight/like", "learning_rate"} <= set(space)
    for model in ("escm2_ips", "aitm", "aple_lowrank"):
        assert set(tuning.default_space(model, ("click",))) - set(tuning._COMMON)


@pytest.mark.parametrize("kind", ["bayesian", "hyperband"])
def test_bayesian_and_hyperband_search_run_and_write_results(kind, small_dataset, tmp_path):
    tasks = parse_tasks("click,like")
    base = TrainConfig(model="mmoe", model_dir=str(tmp_path), data=small_dataset, tasks=tasks,
                       model_config=ModelConfig(tasks=("click", "like"), embedding_dim=4, num_experts=2, tower_units=(4,)),
                       epochs=2, train_steps=6, batch_size=512, verbose=0, tensorboard=False)
    hypermodel = tuning.MtlrecHyperModel(base, SPACE, "val_auc_mean")
    tuner_dir = str(tmp_path / kind)
    result = tuning.search(hypermodel, tuner_dir, kind, max_trials=2, seed=3)
    table = pd.read_csv(os.path.join(tuner_dir, "trials.csv"))
    assert result["trials"] == len(table) >= 2
    assert (table.status == "COMPLETED").all()
    assert result["best_score"] == pytest.approx(table["val_auc_mean"].max())
    if kind == "hyperband":
        # Hyperband hands each trial its epoch budget.
        assert set(table["tuner/epochs"]) <= {1, 2}
        flags = open(os.path.join(tuner_dir, "best.flags")).read()
        best_epochs = int(table.loc[table["val_auc_mean"].idxmax(), "tuner/epochs"])
        assert f"--epochs={best_epochs}\n" in flags
