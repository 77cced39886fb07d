"""Daily training: a day's dataset continuing the day before's vocabularies
(`--vocab_from`), a run continuing the day before's model (`--warm_start`),
and exports into one serving base (`--export_base`)."""

import json
import os

import numpy as np
import pandas as pd
import pytest

from mtlrec.config import FeatureSpec, ModelConfig, Schema, parse_tasks, tenrec_schema
from mtlrec.data import load_manifest, make_dataset
from mtlrec.pipelines import synthetic
from mtlrec.pipelines.prepare import PrepareConfig, prepare
from tests.helpers import run_cli

# The Tenrec columns plus a string category and a number: every kind a table or a normalisation carries.
SCHEMA = Schema(
    features=(*tenrec_schema().features, FeatureSpec("city", "categorical", min_count=2),
              FeatureSpec("price", "numeric")),
    labels=tenrec_schema().labels,
)


def _day_csvs(tmp, days=2, rows=4000):
    """`days` consecutive slices of one time-ordered generated log (users and
    items keep arriving), each with a city and a price."""
    log = pd.concat(synthetic.generate(days * rows, seed=5, ordered=True), ignore_index=True)
    rng = np.random.default_rng(0)
    # cities of the later days include new ones: day d draws from the first 6 + 3 d names
    paths = []
    for d in range(days):
        part = log.iloc[d * rows:(d + 1) * rows].copy()
        part["city"] = [f"c{k}" for k in rng.integers(0, 6 + 3 * d, len(part))]
        part["price"] = rng.lognormal(d * 0.3, 1.0, len(part)).round(3)
        paths.append(str(tmp / f"day{d + 1}.csv"))
        part.to_csv(paths[-1], index=False)
    return paths


@pytest.fixture(scope="module")
def days(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("days")
    csvs = _day_csvs(tmp)
    out = [str(tmp / "data1"), str(tmp / "data2")]
    prepare(PrepareConfig(output=out[0], schema=SCHEMA, inputs=(csvs[0],), order_by="input"))
    prepare(PrepareConfig(output=out[1], schema=SCHEMA, inputs=(csvs[1],), order_by="input", vocab_from=out[0]))
    return tmp, csvs, out


def test_vocab_from_keeps_every_old_index_and_appends_new_values(days):
    tmp, csvs, (d1, d2) = days
    m1, m2 = load_manifest(d1), load_manifest(d2)
    old, new = m1.vocabulary("city"), m2.vocabulary("city")
    assert len(old) == 6 and new[:6] == old  # every old value at its index
    day2_train = pd.read_csv(csvs[1]).iloc[:3200]
    counts = day2_train["city"].value_counts()
    appended = sorted((c for c in counts.index if c not in old and counts[c] >= 2), key=lambda c: (-counts[c], c))
    assert new[6:] == appended and len(appended) == 3  # min_count applied, most frequent first
    for name in ("user_id", "item_id", "hist"):
        assert m2.vocab_size[name] >= m1.vocab_size[name]
    assert m2.vocab_size["item_id"] > m1.vocab_size["item_id"]  # new items arrived on day 2
    assert m2.numeric_stats == m1.numeric_stats  # the model keeps normalising as before
    assert m2.raw["train_numeric_stats"]["price"]["mean"] > m1.numeric_stats["price"]["mean"] + 0.1
    assert m2.raw["parent"] == {"path": m1.root, "created": m1.raw["created"], "fingerprint": m1.fingerprint()}
    assert "parent" not in m1.raw


def test_vocab_from_refuses_another_schema(days, tmp_path):
    tmp, csvs, (d1, _) = days
    with pytest.raises(ValueError, match=r"--vocab_from=.*data1: its schema differs"):
        prepare(PrepareConfig(output=str(tmp_path / "x"), schema=tenrec_schema(), synthetic_rows=2000,
                              vocab_from=d1))
    assert not os.path.exists(tmp_path / "x")


def _config(model_dir, data, **kw):
    from mtlrec.training import TrainConfig

    return TrainConfig(model="mmoe", model_dir=str(model_dir), data=data, epochs=1, train_steps=6, batch_size=256,
                       verbose=0, tensorboard=False, tasks=parse_tasks("click,like"),
                       model_config=ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,),
                                                tower_units=(4,), num_experts=2), **kw)


@pytest.fixture(scope="module")
def day1_run(days):
    from mtlrec.training import train

    tmp, _, (d1, _) = days
    train(_config(tmp / "run1", d1))
    return str(tmp / "run1")


def test_warm_start_carries_the_weights_bit_for_bit_and_draws_new_rows_fresh(days, day1_run, tmp_path):
    import keras
    import tensorflow as tf

    from mtlrec.training import warm_start
    from mtlrec.training.run import Run

    _, _, (d1, d2) = days
    config = _config(tmp_path / "run2", d2, warm_start=day1_run)
    assert config.warm_start_optimizer == "carry"
    m2 = load_manifest(d2)
    parent = warm_start.check(config, m2)
    run = Run(config, m2, tf.distribute.get_strategy())
    fresh = {w.path: w.numpy().copy() for w in run.network.weights}
    carried = warm_start.apply(run, parent)
    day1 = keras.saving.load_model(os.path.join(day1_run, "model.keras"))
    # Day 1's training rows: every id and city there has its day-1 row.
    features, _, _ = next(iter(make_dataset(d1, "train", 3200, config.tasks, shuffle=False)))
    before, after = day1(features, training=False), run.network(features, training=False)
    for task in ("click", "like"):
        np.testing.assert_array_equal(before[task].numpy(), after[task].numpy())
    grown = {w.path.split("/")[-2] for w in run.network.weights if w.path in carried["new_rows"]}
    assert {"item_id_embedding", "city_embedding"} <= grown  # new items and cities arrived on day 2
    old_rows = {w.path: w.shape[0] for w in day1.weights}
    for w in run.network.weights:
        if w.path in carried["new_rows"] and w.path.endswith("embeddings"):
            n = old_rows[w.path]
            np.testing.assert_array_equal(w.numpy()[n:], fresh[w.path][n:])  # new ids: their fresh draw
            assert carried["new_rows"][w.path] == w.shape[0] - n > 0
    seen = {w.path: w.numpy() for w in run.network.weights if w.path.endswith("_seen")}
    old_seen = {w.path: w.numpy() for w in day1.weights if w.path.endswith("_seen")}
    for path, mask in seen.items():  # the union of both days' training ids
        assert (mask[:len(old_seen[path])] >= old_seen[path]).all() and mask.sum() > old_seen[path].sum()
    assert carried["optimizer"] == "carry" and carried["optimizer_state"]["step"] == 6  # the default


def test_warm_start_carries_the_optimizer_state_row_for_row_when_asked(days, day1_run, tmp_path):
    import tensorflow as tf

    from mtlrec.training import warm_start
    from mtlrec.training.run import Run

    _, _, (_, d2) = days
    config = _config(tmp_path / "run2", d2, warm_start=day1_run)  # carry: the default
    m2 = load_manifest(d2)
    run = Run(config, m2, tf.distribute.get_strategy())
    carried = warm_start.apply(run, warm_start.check(config, m2))["optimizer_state"]
    reader = tf.train.load_checkpoint(carried["checkpoint"])
    optimizer = run.trainer.optimizer
    assert int(optimizer.iterations.numpy()) == carried["step"] == 6  # the parent's 6 steps: bias correction goes on
    grown = 0
    for i, var in enumerate(optimizer.variables):
        key = f"optimizer/_variables/{i}/.ATTRIBUTES/VARIABLE_VALUE"
        if not reader.has_tensor(key):
            continue
        old, now = reader.get_tensor(key), var.numpy()
        np.testing.assert_array_equal(now[:len(old)], old)  # bit for bit
        if len(now) > len(old):
            grown += 1
            assert not now[len(old):].any()  # rows of new ids: zero moments
    assert carried["variables"] >= 10 and grown >= 4  # item and city tables, both moments each
    assert np.abs(optimizer.variables[2].numpy()).sum() > 0  # trained moments, not fresh zeros
    with pytest.raises(ValueError, match="warm_start_optimizer must be one of"):
        _config(tmp_path / "x", d2, warm_start=day1_run, warm_start_optimizer="keep")


def test_warm_start_refuses_an_incompatible_parent_in_one_line(days, day1_run, tmp_path):
    from mtlrec.training import train

    tmp, csvs, (_, d2) = days
    wider = _config(tmp_path / "a", d2, warm_start=day1_run)
    wider = type(wider)(**{**wider.__dict__, "model_config": ModelConfig(
        tasks=("click", "like"), embedding_dim=4, expert_units=(16,), tower_units=(4,), num_experts=2)})
    with pytest.raises(ValueError) as e:
        train(wider)
    assert "\n" not in str(e.value) and "model_config.expert_units: [8] recorded, [16] now" in str(e.value)
    assert not os.path.exists(tmp_path / "a")  # refused before any work
    # Day 2 prepared on its own: the cities have other indices, the prices another normalisation.
    alone = str(tmp_path / "alone")
    prepare(PrepareConfig(output=alone, schema=SCHEMA, inputs=(csvs[1],), order_by="input"))
    with pytest.raises(ValueError) as e:
        train(_config(tmp_path / "b", alone, warm_start=day1_run))
    message = str(e.value)
    assert "\n" not in message and "city: the vocabulary does not begin with the parent's" in message
    assert "price: normalised by mean" in message and "--vocab_from" in message
    assert not os.path.exists(tmp_path / "b")
    with pytest.raises(ValueError, match="no run.json there"):
        train(_config(tmp_path / "c", d2, warm_start=str(tmp_path / "nothing")))


def test_a_day_by_the_command_line_warm_started_and_exported_into_one_serving_base(days, tmp_path):
    tmp, csvs, (d1, d2) = days
    base = str(tmp_path / "serving")
    common = ["--model=mmoe", "--tasks=click,like", "--train_steps=4", "--batch_size=256", "--embedding_dim=4",
              "--expert_units=8", "--tower_units=4", "--num_experts=2", "--verbose=0", "--notensorboard",
              f"--export_base={base}"]
    first = run_cli("mtlrec.cli.train", f"--data={d1}", f"--model_dir={tmp_path / 'r1'}", *common)
    assert first.returncode == 0, first.stderr[-3000:]
    second = run_cli("mtlrec.cli.train", f"--data={d2}", f"--model_dir={tmp_path / 'r2'}",
                     f"--warm_start={tmp_path / 'r1'}", *common)
    assert second.returncode == 0, second.stderr[-3000:]
    versions = sorted(int(v) for v in os.listdir(base))
    assert len(versions) == 2 and versions[1] > versions[0] and not os.path.exists(tmp_path / "r1" / "export")
    record = json.loads((tmp_path / "r2" / "run.json").read_text())
    assert record["parent"]["model_dir"] == str(tmp_path / "r1") and record["identity"]["warm_start"] == str(
        tmp_path / "r1")
    assert record["exported"] == os.path.join(base, str(versions[1]))
    metrics = json.loads((tmp_path / "r2" / "metrics.json").read_text())
    assert [e["model_dir"] for e in metrics["lineage"]] == [str(tmp_path / "r1")]
    assert metrics["parent"]["carried"]["tables_grown"] >= 3
    assert metrics["parent"]["carried"]["optimizer"] == "carry"
    # The day's check (README step 3): mtlrec-predict on the serving base scores with its newest version.
    scored = run_cli("mtlrec.cli.predict", f"--export_dir={base}", f"--input={csvs[1]}",
                     f"--output={tmp_path / 'sample.csv'}", "--keep_columns=user_id")
    assert scored.returncode == 0, scored.stderr[-3000:]
    scores = pd.read_csv(tmp_path / "sample.csv")
    assert len(scores) == 4000 and {"user_id", "click", "like"} <= set(scores.columns)
    assert scores["click"].between(0, 1).all() and scores["click"].std() > 0
    # Rerunning the finished day resumes nothing and exports nothing more.
    again = run_cli("mtlrec.cli.train", f"--data={d2}", f"--model_dir={tmp_path / 'r2'}",
                    f"--warm_start={tmp_path / 'r1'}", *common)
    assert again.returncode == 0, again.stderr[-3000:]
    assert sorted(int(v) for v in os.listdir(base)) == versions
