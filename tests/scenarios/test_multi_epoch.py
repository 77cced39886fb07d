"""Multi-epoch training: MEDA's embedding reset, the embedding optimizers (issue 15)."""

import json

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtlrec.config import ModelConfig, TaskSpec, parse_tasks
from mtlrec.data import load_manifest, make_dataset
from mtlrec.models import build_model
from mtlrec.optimizers import LazyAdam, mark_row_sparse
from mtlrec.training import MultiTaskTrainer, TrainConfig, make_train_step, train
from mtlrec.training.embedding_reset import embedding_tables, reset_embeddings, reset_seed
from tests.helpers import interrupt_once_at_epoch

MODEL = ModelConfig(tasks=("click", "like"), embedding_dim=8, expert_units=(16,), tower_units=(8,), num_experts=2,
                    ame_task_dims=(8, 16), ame_shared_dim=8, ame_rank=4)


def _trained(name, data, steps=3):
    """A model and its LazyAdam after a few steps (so every slot is non-zero somewhere)."""
    keras.utils.set_random_seed(0)
    manifest = load_manifest(data)
    tasks = (TaskSpec("click"), TaskSpec("like"))
    trainer = MultiTaskTrainer(build_model(name, manifest, MODEL), ["click", "like"])
    trainer.compile(optimizer=LazyAdam(0.01))
    ds = make_dataset(manifest, "train", 256, tasks, repeat=True, drop_remainder=True)
    trainer(next(iter(ds))[0])
    strategy = tf.distribute.get_strategy()
    step = make_train_step(trainer, strategy)
    iterator = iter(strategy.experimental_distribute_dataset(ds))
    for _ in range(steps):
        step(iterator)
    return trainer


def _slots(opt, variable):
    return tuple(s.numpy() for s in opt.slots(variable))


# Tables per model with the small dataset's 5 tables (user, item + hist, category, gender, age). STEM's
# and APLE's sets are column blocks of one table per feature (fused_embedding_sets, the builders' default).
@pytest.mark.parametrize("name,sets", [("mmoe", 1), ("stem", 1), ("aple", 1), ("aple_lowrank", 1)])
def test_reset_draws_fresh_tables_and_slots_and_leaves_dense_state(name, sets, small_dataset):
    trainer = _trained(name, small_dataset)
    opt = trainer.optimizer
    tables = embedding_tables(trainer.network)
    table_vars = {id(t.embeddings) for t in tables}
    assert len(tables) == 5 * sets
    dense = [v for v in trainer.trainable_variables if id(v) not in table_vars]
    assert dense
    before = {v.path: (v.numpy(), *_slots(opt, v)) for v in dense}
    old_tables = [t.embeddings.numpy() for t in tables]
    assert any(np.abs(_slots(opt, t.embeddings)[1]).sum() > 0 for t in tables)

    assert reset_embeddings(trainer.network, opt, seed=5, epoch=3) == len(tables)

    for i, (t, old) in enumerate(zip(tables, old_tables)):
        fresh = keras.initializers.RandomNormal(stddev=0.05, seed=reset_seed(5, 3, i))(t.embeddings.shape)
        np.testing.assert_array_equal(t.embeddings.numpy(), fresh.numpy())
        assert not np.array_equal(t.embeddings.numpy(), old)
        m, v = _slots(opt, t.embeddings)
        assert not m.any() and not v.any()
    if len(tables) > 1:  # each table gets its own draw
        assert not np.array_equal(tables[0].embeddings.numpy()[:2, :4], tables[1].embeddings.numpy()[:2, :4])
    for v in dense:  # dense weights and their Adam slots are bit-identical
        for a, b in zip(before[v.path], (v.numpy(), *_slots(opt, v))):
            np.testing.assert_array_equal(a, b)


def test_reset_seed_differs_by_epoch_and_table_and_repeats():
    seeds = {reset_seed(0, e, i) for e in (2, 3, 4) for i in range(20)}
    assert len(seeds) == 60
    assert reset_seed(7, 3, 2) == reset_seed(7, 3, 2)


def _config(data, model_dir, **kw):
    defaults = dict(epochs=3, train_steps=24, batch_size=512, learning_rate=0.01, verbose=0, tensorboard=False,
                    patience=3, embedding_reset="epoch")
    return TrainConfig(model="mmoe", model_dir=str(model_dir), data=data, tasks=parse_tasks("click,like"),
                       model_config=MODEL, **{**defaults, **kw})


def test_interrupted_meda_run_resumes_to_the_uninterrupted_result(small_dataset, tmp_path, monkeypatch):
    # With the lazy table decay: the rows' last-decayed steps are in the checkpoint.
    whole = train(_config(small_dataset, tmp_path / "whole", embedding_decay=0.01))

    calls = interrupt_once_at_epoch(monkeypatch, 3)  # after epoch 3's reset, before its first step
    with pytest.raises(KeyboardInterrupt):
        train(_config(small_dataset, tmp_path / "resumed", embedding_decay=0.01))
    state = json.loads((tmp_path / "resumed" / "state.json").read_text())
    assert state["epoch"] == 2
    resumed = train(_config(small_dataset, tmp_path / "resumed", embedding_decay=0.01))
    assert calls == [1, 2, 3, 3]
    assert [h["epoch"] for h in resumed["history"]] == [1, 2, 3]
    for a, b in zip(whole["history"], resumed["history"]):
        for t in ("click", "like"):
            assert a["valid"][t]["auc"] == pytest.approx(b["valid"][t]["auc"], abs=1e-6)
    for t in ("click", "like"):
        assert whole["test"][t]["auc"] == pytest.approx(resumed["test"][t]["auc"], abs=1e-6)


def test_reset_changes_training_and_is_recorded(small_dataset, tmp_path):
    plain = train(_config(small_dataset, tmp_path / "plain", embedding_reset="none"))
    meda = train(_config(small_dataset, tmp_path / "meda", test_each_epoch=True))
    assert all(h["test"][t]["rows"] > 0 for h in meda["history"] for t in ("click", "like"))
    assert meda["history"][meda["best_epoch"] - 1]["test"]["click"]["auc"] == pytest.approx(meda["test"]["click"]["auc"])
    assert "test" not in plain["history"][0]
    assert plain["history"][0]["valid"]["click"]["auc"] == pytest.approx(meda["history"][0]["valid"]["click"]["auc"],
                                                                          abs=1e-6)  # epoch 1 is the same
    assert plain["history"][1]["valid"]["click"]["auc"] != meda["history"][1]["valid"]["click"]["auc"]
    run = json.loads((tmp_path / "meda" / "run.json").read_text())
    assert run["identity"]["embedding_reset"] == "epoch"
    assert "embedding_reset" not in json.loads((tmp_path / "plain" / "run.json").read_text())["identity"]
    with pytest.raises(ValueError, match="embedding_reset"):
        train(_config(small_dataset, tmp_path / "meda", embedding_reset="none"))


def _sparse_step(rule, lr=0.1, sparse_lr=None):
    table = keras.Variable(np.ones((6, 2), dtype="float32"))
    mark_row_sparse(table)
    opt = LazyAdam(lr, sparse_rule=rule, sparse_learning_rate=sparse_lr)
    opt.build([table])
    g = tf.IndexedSlices(tf.constant([[1.0, 2.0], [3.0, 4.0], [1.0, 1.0]]), tf.constant([1, 4, 1]),
                         tf.constant([6, 2]))
    opt.apply([g], [table])
    return table.numpy(), opt


@pytest.mark.parametrize("sparse_lr", [None, 0.5])
def test_embedding_sgd_and_adagrad_rules(sparse_lr):
    lr = sparse_lr or 0.1
    summed = {1: np.array([2.0, 3.0]), 4: np.array([3.0, 4.0])}  # duplicate rows are summed first
    table, _ = _sparse_step("sgd", 0.1, sparse_lr)
    for row in range(6):
        want = 1 - lr * summed[row] if row in summed else np.ones(2)
        np.testing.assert_allclose(table[row], want, rtol=1e-6)
    table, opt = _sparse_step("adagrad", 0.1, sparse_lr)
    for row in range(6):
        want = 1 - lr * summed[row] / np.sqrt(0.1 + summed[row] ** 2 + 1e-7) if row in summed else np.ones(2)
        np.testing.assert_allclose(table[row], want, rtol=1e-6)
    np.testing.assert_allclose(opt._velocities[0].numpy()[4], summed[4] ** 2)  # the accumulator
    assert LazyAdam.from_config(opt.get_config()).sparse_rule == "adagrad"


@pytest.mark.parametrize("graph", [False, True], ids=["eager", "tf.function"])
def test_lazy_adam_dense_steps_equal_keras_adam_bit_for_bit(graph):
    """LazyAdam builds Adam's step size once per apply; dense variables still
    get exactly Keras Adam's numbers, and a table next to them its row rule."""
    rng = np.random.default_rng(0)
    start = [rng.normal(size=s).astype("float32") for s in [(4, 3), (3,), (5, 2)]]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in start] for _ in range(3)]

    def run(opt):
        variables = [keras.Variable(w) for w in start]
        opt.build(variables)
        def apply(gs):
            opt.apply(gs, variables)

        apply = tf.function(apply, autograph=False) if graph else apply
        for step in grads:
            apply([tf.constant(g) for g in step])
        return [v.numpy() for v in variables]

    for ours, theirs in zip(run(LazyAdam(0.01)), run(keras.optimizers.Adam(0.01))):
        np.testing.assert_array_equal(ours, theirs)
    table = keras.Variable(np.ones((6, 2), dtype="float32"))
    mark_row_sparse(table)
    dense = keras.Variable(np.ones((2,), dtype="float32"))
    opt = LazyAdam(0.1)
    opt.build([table, dense])
    opt.apply([tf.IndexedSlices(tf.constant([[1.0, 2.0]]), tf.constant([3]), tf.constant([6, 2])),
               tf.constant([0.5, -0.5])], [table, dense])
    np.testing.assert_allclose(table.numpy()[3], 1 - 0.1 * np.sign([1.0, 2.0]), rtol=1e-5)  # Adam's first step
    np.testing.assert_array_equal(table.numpy()[[0, 1, 2, 4, 5]], 1.0)
    np.testing.assert_allclose(dense.numpy(), [0.9, 1.1], rtol=1e-5)


@pytest.mark.parametrize("graph", [False, True])
def test_lazy_adam_group_keeps_absent_variables_and_densifies_unmarked_rows(graph):
    """Dense variables share flat moments: a step that leaves some out
    (frozen tasks) changes neither them nor their moments, and the others
    still get Keras Adam's numbers bit for bit; an unmarked variable with a
    row-sparse gradient gets Keras Adam's (dense) update."""
    rng = np.random.default_rng(1)
    start = [rng.normal(size=s).astype("float32") for s in [(4, 3), (3,), (5, 2), (6, 2)]]
    grads = [[rng.normal(size=w.shape).astype("float32") for w in start] for _ in range(4)]
    rows = tf.IndexedSlices(tf.constant([[1.0, -2.0], [0.5, 0.5]]), tf.constant([2, 4]), tf.constant([6, 2]))

    def run(opt, subset_from=2):
        variables = [keras.Variable(w) for w in start]
        opt.build(variables)

        def apply(gs, keep):
            opt.apply(gs, [variables[i] for i in keep] + [variables[3]])

        apply = tf.function(apply, autograph=False) if graph else apply
        for k, step in enumerate(grads):
            keep = (0, 2) if k >= subset_from else (0, 1, 2)  # variable 1 "freezes" after step 2
            apply([tf.constant(step[i]) for i in keep] + [rows], keep)
        return opt, variables

    ours, ours_vars = run(LazyAdam(0.01))
    theirs, theirs_vars = run(keras.optimizers.Adam(0.01))
    for a, b in zip(ours_vars, theirs_vars):
        np.testing.assert_array_equal(a.numpy(), b.numpy())
    for v, w in zip(ours_vars, theirs_vars):
        i = theirs._get_variable_index(w)
        for got, want in zip(ours.slots(v), (theirs._momentums[i], theirs._velocities[i])):
            np.testing.assert_array_equal(got.numpy(), want.numpy())
    frozen = run(LazyAdam(0.01), subset_from=2)[1][1].numpy()
    never = run(LazyAdam(0.01), subset_from=99)[1][1].numpy()
    assert not np.array_equal(frozen, never)  # the freeze did stop its updates
    assert ours._momentums[0] is None and len(ours._groups) == 1  # one flat group, no per-variable moments


def test_embedding_settings_are_validated(small_dataset, tmp_path):
    with pytest.raises(ValueError, match="embedding_reset"):
        _config(small_dataset, tmp_path, embedding_reset="always")
    with pytest.raises(ValueError, match="embedding_optimizer"):
        _config(small_dataset, tmp_path, embedding_optimizer="adam")
    with pytest.raises(ValueError, match="embedding_learning_rate"):
        _config(small_dataset, tmp_path, embedding_learning_rate=0.0)
    with pytest.raises(ValueError, match="sparse_rule"):
        LazyAdam(0.1, sparse_rule="ftrl")
    with pytest.raises(ValueError, match="embedding_decay"):
        _config(small_dataset, tmp_path, embedding_decay=1.0)
    with pytest.raises(ValueError, match="sparse_decay"):
        LazyAdam(0.1, sparse_decay=-0.1)


@pytest.mark.parametrize("rule", ["adam", "sgd", "adagrad"])
def test_lazy_table_decay_equals_decaying_every_row_at_every_step(rule):
    """With gradients that do not depend on the weights, the lazy decay and
    a decay of the whole table before every step give the same table once
    settled; rows never in a batch are decayed by settle_rows alone."""
    d = 0.05
    rng = np.random.default_rng(0)
    start = rng.normal(size=(8, 3)).astype("float32")
    lazy, ref = keras.Variable(start), keras.Variable(start)
    for v in (lazy, ref):
        mark_row_sparse(v)
    lazy_opt = LazyAdam(0.1, sparse_rule=rule, sparse_decay=d)
    ref_opt = LazyAdam(0.1, sparse_rule=rule)
    batches = [[0, 1], [1, 5], [5], [0, 0, 3], [1], [3, 5]]  # rows 2, 4, 6, 7 never looked up
    for rows in batches:
        g = tf.IndexedSlices(tf.constant(rng.normal(size=(len(rows), 3)), tf.float32), tf.constant(rows),
                             tf.constant([8, 3]))
        lazy_opt.apply([g], [lazy])
        ref.assign(ref.numpy() * (1 - d))
        ref_opt.apply([g], [ref])
    assert not np.allclose(lazy.numpy()[2], ref.numpy()[2])  # row 2 still owes its decay
    lazy_opt.settle_rows(lazy)
    np.testing.assert_allclose(lazy.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(lazy.numpy()[7], start[7] * (1 - d) ** len(batches), rtol=1e-6)
    lazy_opt.settle_rows(lazy)  # nothing more is owed
    np.testing.assert_allclose(lazy.numpy(), ref.numpy(), rtol=1e-5, atol=1e-6)
    before = lazy.numpy()
    lazy_opt.reset_slots(lazy)  # a reset table owes nothing from before the reset
    lazy_opt.settle_rows(lazy)
    np.testing.assert_array_equal(lazy.numpy(), before)
    assert LazyAdam.from_config(lazy_opt.get_config()).sparse_decay == d
    assert all(last is None for last in ref_opt._last)  # no decay: the checkpoint layout of before
    assert len(ref_opt.variables) == len(lazy_opt.variables) - 1


def test_embedding_decay_trains_and_is_recorded(small_dataset, tmp_path):
    plain = train(_config(small_dataset, tmp_path / "plain", epochs=2, train_steps=16))
    decayed = train(_config(small_dataset, tmp_path / "decay", epochs=2, train_steps=16, embedding_decay=0.02))
    assert plain["history"][0]["valid"]["click"]["auc"] != decayed["history"][0]["valid"]["click"]["auc"]
    assert json.loads((tmp_path / "decay" / "run.json").read_text())["identity"]["embedding_decay"] == 0.02
    assert "embedding_decay" not in json.loads((tmp_path / "plain" / "run.json").read_text())["identity"]


def test_reset_under_mirrored_strategy_matches_one_device(small_dataset, tmp_path):
    """Two replicas (2 logical CPUs) reset the mirrored tables like one device does."""
    # Id dropout off: its per-row draws depend on how a batch is split over the replicas.
    # With the lazy table decay: its per-row steps and the settling are mirrored too.
    one = train(_config(small_dataset, tmp_path / "one", epochs=2, train_steps=16, oov_dropout=0.0,
                        embedding_decay=0.01))
    two = train(_config(small_dataset, tmp_path / "two", epochs=2, train_steps=16, devices=("/cpu:0", "/cpu:1"),
                        oov_dropout=0.0, embedding_decay=0.01))
    assert two["replicas"] == 2 and one["replicas"] == 1
    for a, b in zip(one["history"], two["history"]):
        for t in ("click", "like"):
            assert a["valid"][t]["auc"] == pytest.approx(b["valid"][t]["auc"], abs=1e-4)


def test_sparse_ids_overlay_flagfile_turns_meda_on():
    code = ("import sys; from absl import flags; from mtlrec.cli import train; flags.FLAGS(sys.argv); "
            "c = train.config_from_flags(); print(c.model, c.embedding_reset, c.epochs, c.patience, c.train_order, "
            "c.embedding_learning_rate, c.embedding_decay, c.model_config.expert_units)")
    import subprocess
    import sys

    out = subprocess.run([sys.executable, "-c", code, "--flagfile=experiments/mmoe.flags",
                          "--flagfile=experiments/sparse_ids.flags", "--data=unused"], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["mmoe", "epoch", "10", "10", "stored", "0.02", "0.003", "(256,", "128)"]


def test_train_order_stored_trains_and_is_recorded(small_dataset, tmp_path):
    shuffled = train(_config(small_dataset, tmp_path / "shuffled", epochs=2, train_steps=16, seed=1))
    stored = train(_config(small_dataset, tmp_path / "stored", epochs=2, train_steps=16, seed=1,
                           train_order="stored"))
    assert stored["history"][0]["valid"]["click"]["auc"] != shuffled["history"][0]["valid"]["click"]["auc"]
    assert json.loads((tmp_path / "stored" / "run.json").read_text())["identity"]["train_order"] == "stored"
    with pytest.raises(ValueError, match="train_order"):
        _config(small_dataset, tmp_path, train_order="time")
