"""CSV -> prepare -> make_dataset gives back exactly the rows of each split."""

import json
import os
import subprocess
import sys

import numpy as np
import pandas as pd
import pytest

from mtlrec.config import FeatureSpec, LabelSpec, Schema, TaskSpec, tenrec_schema
from mtlrec.data import load_manifest, make_dataset
from mtlrec.pipelines.prepare import PrepareConfig, prepare
from tests.helpers import canonical, split_frame


def _prepare(csv, out, schema=None, **kw):
    kw.setdefault("chunk_bytes", 64 << 10)  # many chunks even on small files
    return prepare(PrepareConfig(output=str(out), schema=schema or tenrec_schema(), inputs=(str(csv),), **kw))


def test_tenrec_round_trip_per_split(tenrec_csv, tmp_path):
    schema = tenrec_schema()
    m = _prepare(tenrec_csv, tmp_path / "ds", split_by="user_id", workers=2)
    src = pd.read_csv(tenrec_csv)
    assert m["rows_read"] == len(src) == sum(s["rows"] for s in m["splits"].values())
    seen_users: set = set()
    for split in ("train", "valid", "test"):
        got = split_frame(str(tmp_path / "ds"), split, schema)
        users = set(got["user_id"])
        assert not users & seen_users, "a user landed in two splits"
        seen_users |= users
        expected = src[src.user_id.isin(users)]
        pd.testing.assert_frame_equal(canonical(got, schema), canonical(expected, schema))
        for label in ("click", "like", "share", "follow"):
            assert m["splits"][split]["positive_rate"][label] == pytest.approx(expected[label].mean())
    assert m["vocab_size"]["item_id"] == m["vocab_size"]["hist"]
    train_users = split_frame(str(tmp_path / "ds"), "train", schema)
    assert m["vocab_size"]["user_id"] == train_users.user_id.max() + 1


def test_random_split_is_deterministic_and_near_fractions(tenrec_csv, tmp_path):
    schema = tenrec_schema()
    a = _prepare(tenrec_csv, tmp_path / "a", seed=5)
    _prepare(tenrec_csv, tmp_path / "b", seed=5, workers=1)
    _prepare(tenrec_csv, tmp_path / "c", seed=6)
    assert a["splits"]["train"]["rows"] == pytest.approx(4800, abs=150)
    assert a["splits"]["valid"]["rows"] == pytest.approx(600, abs=80)
    fa, fb, fc = (canonical(split_frame(str(tmp_path / d), "valid", schema), schema) for d in "abc")
    pd.testing.assert_frame_equal(fa, fb)
    assert not fa.equals(fc)
    union = pd.concat([split_frame(str(tmp_path / "a"), s, schema) for s in ("train", "valid", "test")])
    pd.testing.assert_frame_equal(canonical(union, schema), canonical(pd.read_csv(tenrec_csv), schema))


def _custom_schema():
    return Schema(
        features=(
            FeatureSpec("uid", "id"),
            FeatureSpec("item", "id"),
            FeatureSpec("city", "categorical", min_count=2),
            FeatureSpec("price", "numeric"),
            FeatureSpec("recent", "sequence", columns=("r1", "r2", "r3"), vocab_from="item"),
        ),
        labels=(LabelSpec("buy"), LabelSpec("spend", "regression")),
        ignore=("comment",),
    )


def _custom_frame(n=3000, seed=0, comment="x"):
    rng = np.random.default_rng(seed)
    cities = np.array(["paris", "new york, ny", 'say "hi"', "zürich", "rare-city", ""])
    p = [0.4, 0.3, 0.15, 0.1, 0.0, 0.05]
    df = pd.DataFrame({
        "uid": rng.integers(0, 500, n),
        "city": rng.choice(cities, n, p=p),
        "item": rng.integers(1, 900, n),
        "price": np.round(rng.normal(50, 10, n), 3),
        "r1": rng.integers(0, 900, n), "r2": rng.integers(0, 900, n), "r3": np.zeros(n, int),
        "buy": rng.integers(0, 2, n),
        "spend": np.round(rng.exponential(3, n), 2),
        "comment": comment,
    })
    df.loc[7, "city"] = "rare-city"  # seen once: below min_count
    return df


# An "x" anywhere in a chunk sends it to pandas' reader (Arrow's reads "0x1f"
# as an integer): the round trip runs through each reader.
@pytest.mark.parametrize("comment", ["x", "ok"], ids=["pandas_reader", "arrow_reader"])
def test_custom_schema_round_trip_vocab_and_stats(tmp_path, comment):
    schema = _custom_schema()
    df = _custom_frame(comment=comment)
    csv = tmp_path / "custom.csv"
    df.to_csv(csv, index=False)
    (tmp_path / "schema.json").write_text(json.dumps(schema.to_json()))
    m = _prepare(csv, tmp_path / "ds", schema=schema, workers=2)
    manifest = load_manifest(str(tmp_path / "ds"))
    assert manifest.schema == schema
    parts = {s: split_frame(str(tmp_path / "ds"), s, schema) for s in ("train", "valid", "test")}
    got = pd.concat(parts.values())
    expect = df.fillna({"city": ""})
    pd.testing.assert_frame_equal(canonical(got, schema), canonical(expect, schema))
    train = parts["train"]
    counts = train.city.value_counts()
    vocab = manifest.vocabulary("city")
    assert vocab == sorted((c for c in counts.index if counts[c] >= 2), key=lambda c: (-counts[c], c))
    assert "rare-city" not in vocab
    assert m["vocab_size"]["city"] == len(vocab) + 1
    stats = m["numeric_stats"]["price"]
    assert stats["mean"] == pytest.approx(train.price.astype(np.float64).mean(), rel=1e-5)
    assert stats["std"] == pytest.approx(train.price.astype(np.float64).std(ddof=0), rel=1e-4)
    assert m["vocab_size"]["recent"] == m["vocab_size"]["item"] == max(train.item.max(), train.r1.max(), train.r2.max()) + 1


def test_label_maps_condition_and_weight(small_dataset):
    tasks = (TaskSpec("click"), TaskSpec("like", given="click"), TaskSpec("watch", label="watching_times"))
    feats, labels, weights = next(iter(make_dataset(small_dataset, "valid", 512, tasks)))
    assert "watching_times" not in feats and "click" not in feats
    assert set(feats) == {"user_id", "item_id", "video_category", "gender", "age", "hist"}
    assert feats["hist"].shape == (512, 10)
    click = labels["click"].numpy()
    np.testing.assert_array_equal(weights["like"].numpy(), click)
    np.testing.assert_array_equal(weights["click"].numpy(), np.ones(512))
    assert (labels["watch"].numpy()[click == 0] == 0).all()
    with pytest.raises(ValueError, match="given column 'clicks' is not a label of the dataset "
                                         r"\(did you mean 'click'\?\)\. Labels: click, "):
        make_dataset(small_dataset, "valid", 8, (TaskSpec("like", given="clicks"),))


def test_shuffle_is_seeded_and_drops_nothing(small_dataset):
    tasks = (TaskSpec("click"),)

    def ids(seed):
        ds = make_dataset(small_dataset, "train", 1000, tasks, shuffle=True, seed=seed)
        return np.concatenate([f["user_id"].numpy() * 10**7 + f["item_id"].numpy() for f, _, _ in ds])

    a, b, c = ids(1), ids(1), ids(2)
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    np.testing.assert_array_equal(np.sort(a), np.sort(c))


def test_negative_down_sampling_keeps_positives(tenrec_csv, tmp_path):
    m = _prepare(tenrec_csv, tmp_path / "ds", neg_ratio=2)
    src = pd.read_csv(tenrec_csv)
    pos = int(src.click.sum())
    kept_pos = sum(round(s["rows"] * s["positive_rate"]["click"]) for s in m["splits"].values())
    kept = sum(s["rows"] for s in m["splits"].values())
    assert kept_pos == pos
    assert (kept - pos) / pos == pytest.approx(2.0, rel=0.08)
    assert m["rows_dropped_by_sampling"] == len(src) - kept


def test_refuses_to_overwrite(tenrec_csv, tmp_path):
    _prepare(tenrec_csv, tmp_path / "ds")
    with pytest.raises(FileExistsError, match="--overwrite"):
        _prepare(tenrec_csv, tmp_path / "ds")
    m = _prepare(tenrec_csv, tmp_path / "ds", overwrite=True, seed=9)
    assert load_manifest(str(tmp_path / "ds")).raw["seed"] == 9 == m["seed"]
    assert not os.path.exists(str(tmp_path / "ds") + ".incomplete")


def test_gzip_input(tenrec_csv, tmp_path):
    import gzip

    gz = tmp_path / "t.csv.gz"
    with open(tenrec_csv, "rb") as f, gzip.open(gz, "wb") as g:
        g.write(f.read())
    m = _prepare(gz, tmp_path / "ds")
    assert m["rows_read"] == 6000


def test_clean_chunks_parse_without_pandas(tenrec_csv):
    # pandas costs each worker ~0.6 s of imports; Arrow's reader needs none.
    code = f"""
import sys
from mtlrec.config import tenrec_schema
from mtlrec.pipelines import parse, prepare
chunk, line = next(prepare.iter_chunks({str(tenrec_csv)!r}, 1 << 20))
ctx = parse.ParseContext(tenrec_schema(), tuple(prepare.read_header({str(tenrec_csv)!r})), (0.8, 0.1, 0.1), seed=0)
result = parse.process_chunk(ctx, chunk, "in.csv", 0, 0, line)
assert sum(result.rows.values()) == chunk.count(b"\\n") > 1000, result.rows
print("pandas" in sys.modules)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
