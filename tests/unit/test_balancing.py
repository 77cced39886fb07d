"""Loss balancing: each rule on hand-made values, MirroredStrategy parity, the CLI."""

import json
import math

import keras
import numpy as np
import pytest
import tensorflow as tf

from mtlrec.config import ModelConfig, TaskSpec
from mtlrec.data import load_manifest, make_dataset
from mtlrec.models import build_model
from mtlrec.optimizers import LazyAdam
from mtlrec.training import MultiTaskTrainer, balancing, make_strategy, make_train_step
from mtlrec.training.balancing import Balancing
from tests.helpers import run_cli


def _dense(g, rows=4):
    return tf.convert_to_tensor(g).numpy() if not isinstance(g, tf.IndexedSlices) else \
        tf.math.unsorted_segment_sum(g.values, g.indices, rows).numpy()


def _numpy_pcgrad(grads, order):
    """The published algorithm, sequentially on flat vectors."""
    out = []
    for i, g in enumerate(grads):
        g = g.copy()
        for j in order:
            if j != i and g @ grads[j] < 0:
                g -= (g @ grads[j]) / (grads[j] @ grads[j]) * grads[j]
        out.append(g)
    return sum(out)


def test_pcgrad_two_conflicting_gradients_dense():
    # g1 = (1, 0), g2 = (-1, 1): g1.g2 = -1, so g1' = g1 + g2/2 = (0.5, 0.5), g2' = g2 + g1 = (0, 1).
    g1, g2 = tf.constant([1.0, 0.0]), tf.constant([-1.0, 1.0])
    total, conflicts = balancing.pcgrad([[g1], [g2]])
    np.testing.assert_allclose(total[0].numpy(), [0.5, 1.5], atol=1e-7)
    assert float(conflicts) == 1
    coefficients = balancing.pcgrad_coefficients(balancing.gram_matrix([[g1], [g2]]), tf.range(2)).numpy()
    np.testing.assert_allclose(coefficients, [[1.0, 0.5], [1.0, 1.0]], atol=1e-7)  # g1' = g1 + g2/2, g2' = g1 + g2
    # Agreeing gradients are summed as they are.
    total, conflicts = balancing.pcgrad([[g1], [tf.constant([1.0, 1.0])]])
    np.testing.assert_allclose(total[0].numpy(), [2.0, 1.0])
    assert float(conflicts) == 0


def test_pcgrad_two_conflicting_gradients_row_sparse():
    # The same vectors as rows of a 4 x 1 table; g2 has a duplicated row (summed: 0.5 + 0.5).
    shape = tf.constant([4, 1], tf.int64)
    g1 = tf.IndexedSlices(tf.constant([[1.0]]), tf.constant([0], tf.int64), shape)
    g2 = tf.IndexedSlices(tf.constant([[-1.0], [0.5], [0.5]]), tf.constant([0, 1, 1], tf.int64), shape)
    total, conflicts = balancing.pcgrad([[g1], [g2]])
    assert isinstance(total[0], tf.IndexedSlices)  # never the whole table
    np.testing.assert_allclose(_dense(total[0])[:, 0], [0.5, 1.5, 0.0, 0.0], atol=1e-7)
    assert float(conflicts) == 1
    # A task that does not reach the table (None) and a dense gradient of it mix in.
    g3 = tf.constant([[0.0], [0.0], [0.0], [-2.0]])
    total, _ = balancing.pcgrad([[g1], [g2], [None]])
    np.testing.assert_allclose(_dense(total[0])[:, 0], [0.5, 1.5, 0.0, 0.0], atol=1e-7)
    total, _ = balancing.pcgrad([[g1], [g3]])  # orthogonal: plain sum
    np.testing.assert_allclose(_dense(total[0])[:, 0], [1.0, 0.0, 0.0, -2.0], atol=1e-7)


def test_pcgrad_three_tasks_matches_the_sequential_algorithm_in_any_order():
    rng = np.random.default_rng(3)
    for _ in range(5):
        grads = [rng.normal(size=7).astype(np.float32) for _ in range(3)]
        order = rng.permutation(3)
        # Split each flat gradient over a dense variable and a row-sparse one.
        shape = tf.constant([4, 1], tf.int64)
        per_task = [[tf.constant(g[:3]), tf.IndexedSlices(tf.constant(g[3:, None]), tf.range(4, dtype=tf.int64), shape)]
                    for g in grads]
        total, _ = balancing.pcgrad(per_task, tf.constant(order))
        got = np.concatenate([total[0].numpy(), _dense(total[1])[:, 0]])
        np.testing.assert_allclose(got, _numpy_pcgrad(grads, order), rtol=1e-5, atol=1e-6)


def test_uncertainty_optimum_is_the_closed_form():
    # d/ds [exp(-s) L + s] = 0 at s = log L: effective weight exp(-s) = 1 / L.
    losses = tf.constant([0.5, 2.0])
    w0 = tf.constant([1.0, 1.0])
    s = tf.Variable([0.0, 0.0])
    opt = keras.optimizers.SGD(0.1)
    for _ in range(400):
        with tf.GradientTape() as tape:
            loss = balancing.uncertainty_loss(losses, s, w0)
        opt.apply([tape.gradient(loss, s)], [s])
    np.testing.assert_allclose(s.numpy(), np.log([0.5, 2.0]), atol=1e-4)
    np.testing.assert_allclose(np.exp(-s.numpy()), [2.0, 0.5], rtol=1e-4)


def test_dwa_and_ple_schedule_and_gradnorm_by_hand():
    assert balancing.dwa_weights([[1.0, 1.0]], 2.0, 2).tolist() == [1.0, 1.0]  # before two epochs
    w = balancing.dwa_weights([[1.0, 1.0], [0.5, 0.9]], 2.0, 2)
    e1, e2 = math.exp(0.5 / 2), math.exp(0.9 / 2)
    np.testing.assert_allclose(w, [2 * e1 / (e1 + e2), 2 * e2 / (e1 + e2)])
    np.testing.assert_allclose(balancing.ple_schedule_weights(tf.constant([1.0, 2.0]), tf.constant([1.0, 0.9]), 10),
                               [1.0, 2.0 * 0.9 ** 10], rtol=1e-6)
    # G = (2, 1), mean 1.5; loss ratios (0.5, 0.8) / mean 0.65; target 1.5 * (0.769, 1.231) = (1.154, 1.846):
    # signs (+, -), w = (1 - 0.1 * 2, 1 + 0.1 * 1) = (0.8, 1.1), renormalised to sum 2.
    new = balancing.gradnorm_update(tf.constant([1.0, 1.0]), tf.constant([2.0, 1.0]), tf.constant([0.5, 0.8]),
                                    tf.constant([1.0, 1.0]), alpha=1.0, learning_rate=0.1)
    np.testing.assert_allclose(new.numpy(), [0.8 * 2 / 1.9, 1.1 * 2 / 1.9], rtol=1e-6)


def test_bad_balancing_settings_are_named():
    with pytest.raises(ValueError, match="--loss_balancing=magic"):
        Balancing("magic")
    with pytest.raises(ValueError, match=r"--loss_weight_decay=like=1.5"):
        Balancing("ple_schedule", {"like": 1.5})
    with pytest.raises(ValueError, match="would ignore it"):
        Balancing("dwa", {"like": 0.9})


def _two_steps(strategy, manifest, batch, init, method, model="mmoe"):
    config = ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,), num_experts=2)
    with strategy.scope():
        keras.utils.set_random_seed(0)
        net = build_model(model, manifest, config)
        trainer = MultiTaskTrainer(net, ["click", "like"], {"like": 0.5},
                                   balancing=Balancing(method, {"like": 0.9} if method == "ple_schedule" else {}))
        trainer.compile(optimizer=LazyAdam(0.01))
        trainer(batch[0])
        net.set_weights(init)
        step = make_train_step(trainer, strategy)
        data = iter(strategy.experimental_distribute_dataset(tf.data.Dataset.from_tensors(batch).repeat(2)))
        out = [step(data) for _ in range(2)]
    extra = [v.numpy() for v in trainer.non_trainable_weights + trainer.trainable_weights if "task_" in v.path]
    return [float(o[0]) for o in out], {k: float(v) for k, v in out[1][1].items()}, net.get_weights(), extra


@pytest.mark.parametrize("method", balancing.METHODS)
def test_mirrored_step_equals_single_device_step(method, small_dataset):
    manifest = load_manifest(small_dataset)
    tasks = (TaskSpec("click"), TaskSpec("like", given="click"))
    batch = next(iter(make_dataset(manifest, "train", 256, tasks, shuffle=False, drop_remainder=True)))
    with tf.distribute.get_strategy().scope():
        keras.utils.set_random_seed(0)
        init = build_model("mmoe", manifest, ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,),
                                                          num_experts=2)).get_weights()
    single = _two_steps(tf.distribute.get_strategy(), manifest, batch, init, method)
    mirrored = _two_steps(make_strategy([d.name for d in tf.config.list_logical_devices("CPU")[:2]]), manifest,
                          batch, init, method)
    np.testing.assert_allclose(single[0], mirrored[0], rtol=1e-5)
    assert single[1].keys() == mirrored[1].keys()
    for k in single[1]:
        assert single[1][k] == pytest.approx(mirrored[1][k], rel=1e-4, abs=1e-6), k
    for a, b in zip(single[2], mirrored[2]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    for a, b in zip(single[3], mirrored[3]):
        np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)
    assert any(not np.allclose(a, b) for a, b in zip(init, single[2])), "the steps changed nothing"
    weights = [single[1]["click_weight"], single[1]["like_weight"]]
    if method in ("fixed", "pcgrad"):
        assert weights == [1.0, 0.5]
    elif method == "ple_schedule":  # the second step's weights: w0 * gamma ** 1
        assert weights == pytest.approx([1.0, 0.5 * 0.9])
    elif method == "gradnorm":  # moved by the first step, still summing to K
        assert weights != [1.0, 0.5] and sum(w / w0 for w, w0 in zip(weights, [1.0, 0.5])) == pytest.approx(2)
    elif method == "uncertainty":
        assert weights != [1.0, 0.5]
    if method == "pcgrad":
        assert 0 <= single[1]["pcgrad_conflicts"] <= 1


def test_cli_dwa_weights_follow_the_recorded_losses(small_dataset, tmp_path):
    res = run_cli("mtlrec.cli.train", "--model=mmoe", f"--data={small_dataset}", f"--model_dir={tmp_path / 'run'}",
                  "--tasks=click,like", "--epochs=3", "--patience=3", "--batch_size=1024", "--embedding_dim=4",
                  "--expert_units=8", "--noexport", "--loss_balancing=dwa", "--dwa_temperature=2")
    assert res.returncode == 0, res.stderr[-3000:]
    history = json.loads((tmp_path / "run" / "metrics.json").read_text())["history"]
    losses = [[h["train"]["click_loss"], h["train"]["like_loss"]] for h in history]
    assert [h["train"]["click_weight"] for h in history[:2]] == [1.0, 1.0]
    expected = balancing.dwa_weights(losses[:2], 2.0, 2)
    np.testing.assert_allclose([history[2]["train"]["click_weight"], history[2]["train"]["like_weight"]], expected,
                               rtol=1e-5)
    assert abs(expected[0] - 1) > 1e-3  # the rule did something
    # Another rule in the same model_dir is another run: refused, naming the setting.
    other = run_cli("mtlrec.cli.train", "--model=mmoe", f"--data={small_dataset}", f"--model_dir={tmp_path / 'run'}",
                    "--tasks=click,like", "--epochs=3", "--patience=3", "--batch_size=1024", "--embedding_dim=4",
                    "--expert_units=8", "--noexport", "--loss_balancing=pcgrad")
    assert other.returncode != 0 and "loss_balancing: 'dwa' recorded, 'pcgrad' now" in other.stderr, other.stderr[-2000:]
    bad = run_cli("mtlrec.cli.train", "--model=mmoe", f"--data={small_dataset}", f"--model_dir={tmp_path / 'bad'}",
                  "--loss_balancing=gradnorm", "--loss_weight_decay=click=0.9")
    assert bad.returncode != 0 and "--loss_weight_decay" in bad.stderr


def test_tuner_space_can_choose_the_rule(tmp_path):
    from mtlrec import tuning
    from mtlrec.config import parse_tasks
    from mtlrec.training import TrainConfig

    space_file = tmp_path / "space.json"
    space_file.write_text(json.dumps({"loss_balancing": {"type": "choice", "values": ["fixed", "dwa", "pcgrad"]}}))
    space = tuning.load_space("mmoe", ("click", "like"), str(space_file))
    assert space["loss_balancing"]["values"] == ["fixed", "dwa", "pcgrad"]
    base = TrainConfig(model="mmoe", model_dir="x", data="d", tasks=parse_tasks("click,like"),
                       model_config=ModelConfig(tasks=("click", "like")))
    cfg = tuning.apply(base, {"loss_balancing": "pcgrad"}, "trial")
    assert cfg.loss_balancing == "pcgrad" and cfg.balancing.per_task_gradients
    assert "--loss_balancing=pcgrad" in tuning.config_to_flags(cfg)
