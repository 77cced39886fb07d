"""Export for serving: fresh-process loads without mtlrec, unseen input, errors."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from mtlrec.config import FeatureSpec, LabelSpec, ModelConfig, Schema
from mtlrec.data import load_manifest
from mtlrec.data.dataset import csv_rows
from mtlrec.export import WARMUP, _features, export, read_warmup_signatures
from mtlrec.models import MODELS, build_model
from mtlrec.pipelines.prepare import PrepareConfig, prepare
from tests.helpers import run_cli

TASKS = ("click", "like", "share")

LOAD_WITHOUT_MTLREC = """
import json, sys
sys.modules["mtlrec"] = None      # importing mtlrec now raises ImportError
sys.modules["pipelines"] = None
import numpy as np, tensorflow as tf
rows = dict(np.load(sys.argv[2]))
out = {}
for name, path in json.loads(sys.argv[1]).items():
    fn = tf.saved_model.load(path).signatures["serving_default"]
    out[name] = {k: v.numpy().tolist() for k, v in fn(**{k: tf.constant(v) for k, v in rows.items()}).items()}
print(json.dumps(out))
"""


def _small(tasks=TASKS):
    return ModelConfig(tasks=tasks, embedding_dim=4, expert_units=(8,), tower_units=(4,), bottom_units=(8,),
                       num_experts=2, ame_task_dims=(4, 8), ame_shared_dim=4, ame_rank=2)


def test_every_model_exports_and_loads_without_mtlrec(small_dataset, tmp_path):
    manifest = load_manifest(small_dataset)
    rows = csv_rows(manifest, "valid", 64)
    np.savez(tmp_path / "rows.npz", **rows)
    expected, paths = {}, {}
    for name in sorted(MODELS):
        net = build_model(name, manifest, _small())
        out = net(_features(manifest.schema, {k: tf.constant(v) for k, v in rows.items()}))
        expected[name] = {k: v.numpy() for k, v in out.items()}
        paths[name] = export(net, manifest.schema, TASKS, str(tmp_path / name), version=1,
                             fusion_weights={"click": 1.0, "like": 0.5})
        data = [f for f in os.listdir(os.path.join(paths[name], "variables")) if f.startswith("variables.data")]
        stored = sum(os.path.getsize(os.path.join(paths[name], "variables", f)) for f in data)
        assert stored < net.count_params() * 4 * 1.1 + 65536, f"{name}: weights stored more than once"
    res = subprocess.run([sys.executable, "-c", LOAD_WITHOUT_MTLREC, json.dumps(paths), str(tmp_path / "rows.npz")],
                         capture_output=True, text=True, timeout=600)
    assert res.returncode == 0, res.stderr[-3000:]
    served = json.loads(res.stdout.strip().splitlines()[-1])
    for name in MODELS:
        for k, v in expected[name].items():
            # Same graph, same float32 kernels: equal to 1e-6.
            np.testing.assert_allclose(served[name][k], v, rtol=1e-5, atol=1e-6, err_msg=f"{name}/{k}")
        score = np.asarray(served[name]["score"])
        # share, left out of the weights, keeps weight 1.
        np.testing.assert_allclose(score, expected[name]["click"] * expected[name]["like"] ** 0.5
                                   * expected[name]["share"], rtol=1e-4)


@pytest.fixture(scope="module")
def custom_export(tmp_path_factory):
    """An exported MMoE over a schema with strings, numbers and a sequence."""
    tmp = tmp_path_factory.mktemp("custom")
    rng = np.random.default_rng(0)
    n = 2000
    df = pd.DataFrame({"uid": rng.integers(0, 50, n), "item": rng.integers(1, 100, n),
                       "city": rng.choice(["paris", "rome", "oslo"], n), "price": rng.normal(10, 2, n).round(2),
                       "r1": rng.integers(0, 100, n), "r2": rng.integers(0, 100, n),
                       "click": rng.integers(0, 2, n), "like": rng.integers(0, 2, n)})
    df.to_csv(tmp / "c.csv", index=False)
    schema = Schema(
        features=(FeatureSpec("uid", "id"), FeatureSpec("item", "id"), FeatureSpec("city", "categorical"),
                  FeatureSpec("price", "numeric"),
                  FeatureSpec("recent", "sequence", columns=("r1", "r2"), vocab_from="item")),
        labels=(LabelSpec("click"), LabelSpec("like")),
    )
    prepare(PrepareConfig(output=str(tmp / "ds"), schema=schema, inputs=(str(tmp / "c.csv"),)))
    manifest = load_manifest(str(tmp / "ds"))
    net = build_model("mmoe", manifest, _small(("click", "like")))
    path = export(net, schema, ("click", "like"), str(tmp / "export"), version=3,
                  warmup_rows=csv_rows(manifest, "valid", 4))
    return tf.saved_model.load(path), path, manifest


def _row(**overrides):
    base = {"uid": 3, "item": 5, "city": "rome", "price": 10.0, "r1": 7, "r2": 9}
    base.update(overrides)
    return base


def _call(model, rows):
    fn = model.signatures["serving_default"]
    dtypes = {k: v.dtype for k, v in fn.structured_input_signature[1].items()}
    cols = {k: tf.constant([r[k] for r in rows], dtype=dtypes[k]) for k in dtypes}
    return {k: v.numpy() for k, v in fn(**cols).items()}


def test_unseen_negative_huge_ids_unseen_strings_empty_history(custom_export):
    model, _, manifest = custom_export
    vocab_uid = manifest.vocab_size["uid"]
    rows = [_row(), _row(uid=vocab_uid + 5), _row(uid=-1), _row(uid=2**62), _row(city="atlantis"), _row(city=""),
            _row(r1=0, r2=0), _row(r1=-3, r2=10**12), _row(item=10**15)]
    out = _call(model, rows)
    for k, v in out.items():
        assert np.isfinite(v).all() and ((v >= 0) & (v <= 1)).all(), k
    click = out["click"]
    # Unseen, negative and huge user ids all land on the one OOV row.
    assert click[1] == pytest.approx(click[2], abs=1e-7) == pytest.approx(click[3], abs=1e-7)
    assert click[4] == pytest.approx(click[5], abs=1e-7)  # unseen strings: the OOV row
    assert click[1] != pytest.approx(click[0], abs=1e-7)
    # An empty history pools to zeros: a defined output, unlike any item's.
    assert click[6] != pytest.approx(click[0], abs=1e-7)


def test_missing_or_misspelled_feature_is_named(custom_export):
    model, _, _ = custom_export
    fn = model.signatures["serving_default"]
    cols = {k: tf.constant([v]) for k, v in _row().items()}
    cols["price"] = tf.constant([10.0])
    del cols["city"]
    with pytest.raises(TypeError, match="city"):
        fn(**cols)
    cols["cty"] = tf.constant(["rome"])
    with pytest.raises(TypeError, match="cty|city"):
        fn(**cols)
    row = _row()
    del row["item"]
    example = _example(row)
    with pytest.raises(tf.errors.InvalidArgumentError, match="Feature: item .* is required but could not be found"):
        model.signatures["predict_examples"](examples=tf.constant([example]))


def _example(row):
    feats = {}
    for k, v in row.items():
        if isinstance(v, str):
            feats[k] = tf.train.Feature(bytes_list=tf.train.BytesList(value=[v.encode()]))
        elif isinstance(v, float):
            feats[k] = tf.train.Feature(float_list=tf.train.FloatList(value=[v]))
        else:
            feats[k] = tf.train.Feature(int64_list=tf.train.Int64List(value=[v]))
    return tf.train.Example(features=tf.train.Features(feature=feats)).SerializeToString()


def test_examples_signature_matches_raw_signature(custom_export):
    model, _, _ = custom_export
    row = _row()
    a = model.signatures["predict_examples"](examples=tf.constant([_example(row)]))
    b = _call(model, [row])
    for k in b:
        np.testing.assert_allclose(a[k].numpy(), b[k], rtol=1e-6)


def test_warmup_requests_name_the_serving_inputs(custom_export):
    model, path, _ = custom_export
    records = read_warmup_signatures(f"{path}/{WARMUP}")
    inputs = set(model.signatures["serving_default"].structured_input_signature[1])
    assert len(records) == 10
    assert all(sig == "serving_default" and set(names) == inputs for sig, names in records)


def test_predict_cli_scores_a_csv(custom_export, tmp_path):
    model, path, _ = custom_export
    rows = [_row(uid=i, price=float(i)) for i in range(7)]
    pd.DataFrame(rows).assign(extra="x").to_csv(tmp_path / "in.csv", index=False)
    export_base = path.rsplit("/", 1)[0]  # the versions directory: the highest is used
    res = run_cli("mtlrec.cli.predict", f"--export_dir={export_base}", f"--input={tmp_path / 'in.csv'}",
                  f"--output={tmp_path / 'out.csv'}", "--keep_columns=uid", "--chunk_rows=3")
    assert res.returncode == 0, res.stderr[-2000:]
    out = pd.read_csv(tmp_path / "out.csv")
    assert list(out.columns) == ["uid", "click", "like", "score"] and len(out) == 7
    np.testing.assert_allclose(out["click"], _call(model, rows)["click"], rtol=1e-5)
    pd.DataFrame([_row(), _row(uid="x1")]).to_csv(tmp_path / "bad.csv", index=False)
    res = run_cli("mtlrec.cli.predict", f"--export_dir={export_base}", f"--input={tmp_path / 'bad.csv'}",
                  f"--output={tmp_path / 'bad_out.csv'}")
    assert res.returncode == 1 and "bad.csv:3: column 'uid': received 'x1', expected a non-negative integer" in res.stderr
    assert not (tmp_path / "bad_out.csv").exists()
