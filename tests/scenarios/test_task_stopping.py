"""Per-task early stopping and id dropout for cold start (issue 15)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtlrec.config import ModelConfig, TaskSpec, parse_tasks
from mtlrec.data import load_manifest, make_dataset
from mtlrec.data.dataset import drop_to_oov, oov_features
from mtlrec.models import MODELS, build_model
from mtlrec.training import TrainConfig, loop, make_train_step, task_stopping, train
from mtlrec.training.embedding_reset import embedding_tables
from mtlrec.training.run import Run
from mtlrec.training.task_stopping import owned_variables

TASKS = ("ctr", "like", "share")
MODEL = ModelConfig(tasks=TASKS, embedding_dim=8, expert_units=(16,), tower_units=(8,), num_experts=2,
                    ame_task_dims=(8, 8, 16), ame_shared_dim=8, ame_rank=4)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_every_task_owns_its_head_and_shares_the_rest(name, small_dataset):
    manifest = load_manifest(small_dataset)
    network = build_model(name, manifest, MODEL, task_labels={"ctr": "click", "like": "like", "share": "share"})
    owned = owned_variables(network, TASKS)
    ids = [id(v) for vs in owned.values() for v in vs]
    assert len(ids) == len(set(ids))  # no variable has two owners
    for t in TASKS:
        assert owned[t], (name, t)
        # A task's own parameters include the layer giving its output (a tower or task head).
        assert any(p in v.path for v in owned[t] for p in (f"{t}_tower", f"task{TASKS.index(t)}_", f"{t}_"))
    shared_tables = [tb.embeddings for tb in embedding_tables(network) if "task" not in tb.embeddings.path]
    assert shared_tables and not {id(v) for v in shared_tables} & set(ids)
    # Shared experts and shared gates belong to no task.
    assert not any("shared_expert" in v.path or "expert_" in v.path.split("/")[1] for vs in owned.values() for v in vs
                   if len(v.path.split("/")) > 1)


def _run(data, tmp_path, name="aple", **kw):
    config = TrainConfig(model=name, model_dir=str(tmp_path), data=data, tasks=parse_tasks("ctr=click,like,share"),
                         model_config=MODEL, batch_size=256, learning_rate=0.01, verbose=0, tensorboard=False,
                         task_patience=1, **kw)
    return Run(config, load_manifest(data), tf.distribute.get_strategy())


def _slots(opt, variable):
    return tuple(s.numpy() for s in opt.slots(variable))


def test_a_frozen_task_keeps_its_weights_and_slots_bit_identical(small_dataset, tmp_path):
    run = _run(small_dataset, tmp_path)
    strategy = tf.distribute.get_strategy()
    tasks = (TaskSpec("ctr", "click"), TaskSpec("like"), TaskSpec("share"))
    ds = make_dataset(load_manifest(small_dataset), "train", 256, tasks, repeat=True, drop_remainder=True)
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    step = make_train_step(run.trainer, strategy)
    for _ in range(3):
        step(iterator)
    opt = run.trainer.optimizer
    # Epoch 1: every task improves (its best is kept); epoch 2: like does not and freezes.
    first = {"ctr": {"auc": 0.6}, "like": {"auc": 0.7}, "share": {"auc": 0.5}}
    run.state.history.append({})
    task_stopping.after_epoch(run, 1, first)
    best_like = [v.numpy() for v in run.stopping.owned["like"]]
    for _ in range(3):
        step(iterator)
    assert any(not np.array_equal(v.numpy(), b) for v, b in zip(run.stopping.owned["like"], best_like))
    run.state.history.append({})
    assert not task_stopping.after_epoch(run, 2, {"ctr": {"auc": 0.61}, "like": {"auc": 0.69}, "share": {"auc": 0.52}})
    assert run.state.frozen_tasks == {"like": 2} and run.state.history[-1]["frozen_tasks"] == ["like"]
    like = run.stopping.owned["like"]
    for v, b in zip(like, best_like):  # back to the best epoch's values
        np.testing.assert_array_equal(v.numpy(), b)
    assert any("task1_embedding" in v.path for v in like)  # APLE's like embedding set is like's own
    frozen = task_stopping.frozen_variables(run)
    assert {id(v) for v in frozen} == {id(v) for v in like}
    before = {v.path: (v.numpy(), *_slots(opt, v)) for v in like}
    others = {v.path: v.numpy() for t in ("ctr", "share") for v in run.stopping.owned[t]}
    shared = {v.path: v.numpy() for v in run.trainer.trainable_variables if id(v) not in
              {id(w) for vs in run.stopping.owned.values() for w in vs}}
    step = make_train_step(run.trainer, strategy, frozen)
    for _ in range(4):
        step(iterator)
    for v in like:
        for got, want in zip((v.numpy(), *_slots(opt, v)), before[v.path]):
            np.testing.assert_array_equal(got, want)
    by_path = {v.path: v for v in run.trainer.trainable_variables}
    assert all(not np.array_equal(by_path[p].numpy(), w) for p, w in others.items() if "embedding" not in p)
    assert sum(not np.array_equal(by_path[p].numpy(), w) for p, w in shared.items()) >= len(shared) - 1
    # ctr and share do not improve either: every task is frozen, training is over.
    run.state.history.append({})
    assert task_stopping.after_epoch(run, 3, {"ctr": {"auc": 0.5}, "like": {"auc": 0.9}, "share": {"auc": 0.5}}) is True
    assert run.state.frozen_tasks == {"like": 2, "ctr": 3, "share": 3}  # a frozen task is judged no more


def test_meda_reset_leaves_a_frozen_tasks_own_tables(small_dataset, tmp_path):
    run = _run(small_dataset, tmp_path, embedding_reset="epoch")
    run.state.frozen_tasks = {"like": 1}
    tables = embedding_tables(run.network)
    before = {t.embeddings.path: t.embeddings.numpy() for t in tables}
    loop.start_epoch(run, 2)
    for t in tables:
        same = np.array_equal(t.embeddings.numpy(), before[t.embeddings.path])
        assert same == ("task1_embedding" in t.embeddings.path), t.embeddings.path


def test_task_patience_end_to_end_freezes_by_the_validation_history(learn_dataset, tmp_path):
    config = TrainConfig(model="aitm", model_dir=str(tmp_path / "run"), data=learn_dataset,
                         tasks=parse_tasks("click,like,share"), model_config=ModelConfig(
                             tasks=("click", "like", "share"), embedding_dim=8, expert_units=(16,), tower_units=(8,)),
                         epochs=5, patience=5, task_patience=1, batch_size=1024, learning_rate=0.01, verbose=0,
                         tensorboard=False)
    metrics = train(config)
    history, stopping = metrics["history"], metrics["task_stopping"]
    for t in ("click", "like", "share"):  # replay the rule on the recorded validation AUCs
        best, frozen_at = -1.0, None
        for h in history:
            auc = h["valid"][t]["auc"]
            if auc > best:
                best, best_epoch = auc, h["epoch"]
            else:
                frozen_at = h["epoch"]
                break
        assert stopping["frozen_tasks"].get(t) == frozen_at, t
        assert stopping["tasks"][t]["best_epoch"] == best_epoch
        assert stopping["tasks"][t]["best_auc"] == pytest.approx(best)
        for h in history:
            assert (t in h["frozen_tasks"]) == (frozen_at is not None and h["epoch"] >= frozen_at)
    assert len(history) == 5 or len(stopping["frozen_tasks"]) == 3
    run = json.loads((tmp_path / "run" / "run.json").read_text())
    assert run["identity"]["task_patience"] == 1
    with pytest.raises(ValueError, match="task_patience"):
        train(TrainConfig(**{**config.__dict__, "task_patience": 2}))


def test_oov_dropout_sends_a_seeded_fraction_of_ids_to_the_oov_row(small_dataset):
    manifest = load_manifest(small_dataset)
    assert oov_features(manifest) == ["user_id", "item_id"]  # not gender, age or category
    assert oov_features(manifest, ["user_id"]) == ["user_id"]
    with pytest.raises(ValueError, match="--oov_features=click: \\['click'\\] are not id features"):
        oov_features(manifest, ["click"])
    tasks = (TaskSpec("click"),)
    plain = make_dataset(manifest, "train", 4096, tasks, shuffle=False)
    dropped = drop_to_oov(plain, ["user_id", "item_id"], 0.2, seed=3)
    hits = {"user_id": 0, "item_id": 0}
    rows = 0
    for (x, _, _), (d, _, _) in zip(plain, dropped):
        for name in hits:
            changed = x[name].numpy() != d[name].numpy()
            assert (d[name].numpy()[changed] == -1).all()
            hits[name] += int(changed.sum())
        np.testing.assert_array_equal(x["video_category"].numpy(), d["video_category"].numpy())
        rows += len(x["user_id"])
    for name in hits:
        assert hits[name] / rows == pytest.approx(0.2, abs=0.015)
    again = [d["user_id"].numpy() for d, _, _ in drop_to_oov(plain, ["user_id", "item_id"], 0.2, seed=3)]
    first = [d["user_id"].numpy() for d, _, _ in dropped]
    assert all(np.array_equal(a, b) for a, b in zip(again, first))
    other = [d["user_id"].numpy() for d, _, _ in drop_to_oov(plain, ["user_id", "item_id"], 0.2, seed=4)]
    assert not all(np.array_equal(a, b) for a, b in zip(other, first))


def _cold_click(learn_dataset, model_dir, **kw):
    """(the mean predicted click of the test rows scored as unseen items, the click rate, the user table's
    out-of-vocabulary row)."""
    config = TrainConfig(model="mmoe", model_dir=str(model_dir), data=learn_dataset, tasks=parse_tasks("click,like"),
                         model_config=ModelConfig(tasks=("click", "like"), embedding_dim=8, expert_units=(16,),
                                                  num_experts=2, tower_units=(8,)),
                         epochs=1, batch_size=1024, learning_rate=0.01, verbose=0, tensorboard=False, **kw)
    train(config)
    network = keras.saving.load_model(str(model_dir / "model.keras"), compile=False)
    ds = make_dataset(load_manifest(learn_dataset), "test", 8192, config.tasks, shuffle=False)
    preds, labels = [], []
    for x, y, _ in ds:
        preds.append(network(dict(x, item_id=-tf.ones_like(x["item_id"])), training=False)["click"].numpy())
        labels.append(y["click"].numpy())
    users = next(t for t in embedding_tables(network) if t.embeddings.path.endswith("user_id_embedding/embeddings"))
    masks = [w for w in network.weights if w.path.endswith("item_id_seen")]
    if kw.get("oov_dropout"):  # the trained model knows which items training saw, and sends the others to row 0
        from mtlrec.data.dataset import split_ids

        seen = split_ids(learn_dataset, "train", ["item_id"])["item_id"]
        assert len(masks) == 1 and np.flatnonzero(masks[0].numpy()[1:]).tolist() == seen.tolist()
        x, _, _ = next(iter(ds))
        unseen = np.setdiff1d(np.arange(load_manifest(learn_dataset).vocab_size["item_id"]), seen)
        if len(unseen):
            a = network(dict(x, item_id=tf.fill(tf.shape(x["item_id"]), np.int64(unseen[0]))), training=False)
            b = network(dict(x, item_id=-tf.ones_like(x["item_id"])), training=False)
            np.testing.assert_array_equal(a["click"].numpy(), b["click"].numpy())
    else:
        assert not masks
    return float(np.concatenate(preds).mean()), float(np.concatenate(labels).mean()), users.embeddings.numpy()[0]


def test_ids_unseen_in_training_read_the_oov_row(small_dataset, tmp_path):
    from mtlrec.layers.embedding import FeatureEmbedding, feature_specs, set_seen_ids

    manifest = load_manifest(small_dataset)
    layer = FeatureEmbedding(feature_specs(manifest, ["item_id"]), 4)
    layer.build()
    assert list(layer.seen) == ["item_id"] and layer.seen["item_id"].shape == (manifest.vocab_size["item_id"] + 1,)
    net = keras.Sequential([layer])  # set_seen_ids walks a model's layers
    assert set_seen_ids(net, {"item_id": np.array([0, 3, 7])}) == 1
    spec = next(f for f in layer.features if f["name"] == "item_id")
    got = layer._index(spec, tf.constant([0, 3, 5, 7, -1, 10**9], tf.int64)).numpy()
    np.testing.assert_array_equal(got, [1, 4, 0, 8, 0, 0])  # 5 is inside the range but unseen: row 0
    user = next(f for f in layer.features if f["name"] == "user_id")
    np.testing.assert_array_equal(layer._index(user, tf.constant([5, -1], tf.int64)).numpy(), [6, 0])  # no mask


def test_oov_dropout_trains_the_row_unseen_ids_read(learn_dataset, tmp_path):
    plain, rate, plain_row = _cold_click(learn_dataset, tmp_path / "plain", oov_dropout=0.0, unseen_ids="own_row")
    trained, _, trained_row = _cold_click(learn_dataset, tmp_path / "oov", oov_dropout=0.2)
    # Measured: unseen items 0.282 plain, 0.257 with the dropout, click rate 0.2465 (users: 0.277 and 0.275).
    assert abs(trained - rate) < abs(plain - rate) - 0.015, (plain, trained, rate)
    assert abs(trained - rate) < 0.02
    # Plain training never reads the out-of-vocabulary row: it keeps its initial draw (std 0.05).
    assert np.abs(plain_row).max() < 0.25 and np.abs(trained_row - plain_row).max() > 0.05
    with pytest.raises(ValueError, match="oov_dropout must be in"):
        TrainConfig(**{**TrainConfig(model="mmoe", model_dir=str(tmp_path), data=learn_dataset,
                                     tasks=parse_tasks("click"), model_config=ModelConfig(tasks=("click",))).__dict__,
                       "oov_dropout": 1.0})


def test_a_sigkilled_run_with_every_multi_epoch_option_resumes_to_the_uninterrupted_result(learn_dataset, tmp_path):
    # MEDA's reset, per-task stopping (its frozen set and best copies) and id dropout all resume from the
    # last epoch checkpoint: the killed-and-resumed run repeats the uninterrupted one epoch by epoch.
    import signal
    import subprocess
    import sys
    import time

    from tests.helpers import run_cli

    args = ["--model=aple", "--tasks=click,like,share", f"--data={learn_dataset}", "--embedding_dim=8",
            "--expert_units=16", "--tower_units=8", "--ame_task_dims=8,8,8", "--ame_shared_dim=8",
            "--batch_size=512", "--learning_rate=0.01", "--epochs=5", "--patience=5", "--embedding_reset=epoch",
            "--task_patience=1", "--oov_dropout=0.1", "--noexport", "--verbose=2", "--notensorboard"]
    whole = run_cli("mtlrec.cli.train", *args, f"--model_dir={tmp_path / 'whole'}")
    assert whole.returncode == 0, whole.stderr[-3000:]
    killed_dir = tmp_path / "killed"
    proc = subprocess.Popen([sys.executable, "-m", "mtlrec.cli.train", *args, f"--model_dir={killed_dir}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    state = killed_dir / "state.json"
    deadline = time.time() + 300
    while time.time() < deadline and not (state.exists() and json.loads(state.read_text() or "{}").get("epoch", 0) >= 2):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    assert proc.wait() == -signal.SIGKILL
    done = json.loads(state.read_text())["epoch"]
    resumed = run_cli("mtlrec.cli.train", *args, f"--model_dir={killed_dir}")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    a = json.loads((tmp_path / "whole" / "metrics.json").read_text())
    b = json.loads((killed_dir / "metrics.json").read_text())
    assert done < len(a["history"])  # killed mid-run (an epoch takes seconds; the kill came within ms of epoch 2)
    assert "resumed from" in resumed.stderr and f"after epoch {done}" in resumed.stderr
    assert [h["epoch"] for h in b["history"]] == [h["epoch"] for h in a["history"]]
    for ha, hb in zip(a["history"], b["history"]):
        assert ha.get("frozen_tasks") == hb.get("frozen_tasks")
        for t in ("click", "like", "share"):
            assert ha["valid"][t]["auc"] == pytest.approx(hb["valid"][t]["auc"], abs=1e-6), (ha["epoch"], t)
    assert a["task_stopping"] == b["task_stopping"] and a["best_epoch"] == b["best_epoch"]
    for t in ("click", "like", "share"):
        assert a["test"][t]["auc"] == pytest.approx(b["test"][t]["auc"], abs=1e-6)
