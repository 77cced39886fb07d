"""Parquet input to prepare: the same rows as CSV give the same dataset, and
bad Parquet values are named like bad CSV values."""

import json
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from mtlrec.config import FeatureSpec, Schema, tenrec_schema
from mtlrec.data import load_manifest
from mtlrec.pipelines import synthetic
from mtlrec.pipelines.parse import BadInputError
from mtlrec.pipelines.prepare import PrepareConfig, prepare
from tests.helpers import canonical, run_cli, split_frame

SCHEMA = Schema(features=(*tenrec_schema().features, FeatureSpec("city", "categorical"),
                          FeatureSpec("price", "numeric")), labels=tenrec_schema().labels)


@pytest.fixture(scope="module")
def rows(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("pq")
    frame = pd.concat(synthetic.generate(6000, seed=2, ordered=True), ignore_index=True)
    rng = np.random.default_rng(1)
    frame["city"] = rng.integers(0, 20, len(frame))  # ints where a string category is expected: fine
    frame["price"] = rng.normal(10, 3, len(frame)).round(2)
    pq_dir = tmp / "log"
    pq_dir.mkdir()
    # Two files (the same two as CSV) of several row groups each, columns in another order than the CSV's.
    columns, csvs = list(reversed(frame.columns)), []
    for i, part in enumerate((frame.iloc[:3500], frame.iloc[3500:])):
        pq.write_table(pa.Table.from_pandas(part[columns], preserve_index=False),
                       str(pq_dir / f"part-{i:05d}.snappy.parquet"), row_group_size=1000)
        csvs.append(str(tmp / f"log-{i}.csv"))
        part.to_csv(csvs[-1], index=False)
    return tmp, frame, tuple(csvs), sorted(str(p) for p in pq_dir.iterdir())


@pytest.mark.parametrize("order_by", [None, "input"])
def test_parquet_and_csv_of_the_same_rows_give_the_same_dataset(rows, tmp_path, order_by):
    _, frame, csvs, parquets = rows
    a, b = str(tmp_path / "csv"), str(tmp_path / "parquet")
    prepare(PrepareConfig(output=a, schema=SCHEMA, inputs=csvs, order_by=order_by, seed=3))
    prepare(PrepareConfig(output=b, schema=SCHEMA, inputs=tuple(parquets), order_by=order_by, seed=3))
    ma, mb = load_manifest(a), load_manifest(b)
    assert ma.vocab_size == mb.vocab_size and ma.vocabulary("city") == mb.vocabulary("city")
    # (summed per chunk: CSV chunks and row groups differ, so the last bits may)
    assert ma.numeric_stats["price"] == pytest.approx(mb.numeric_stats["price"], rel=1e-12)
    for split in ("train", "valid", "test"):
        assert ma.rows(split) == mb.rows(split) > 0
        assert ma.splits[split]["positive_rate"] == mb.splits[split]["positive_rate"]
        pd.testing.assert_frame_equal(canonical(split_frame(a, split, SCHEMA), SCHEMA),
                                      canonical(split_frame(b, split, SCHEMA), SCHEMA))
    assert sum(ma.rows(s) for s in ("train", "valid", "test")) == len(frame)
    if order_by == "input":
        assert ma.raw["split"]["test_from_row"] == mb.raw["split"]["test_from_row"] == 5400


def _bad(tmp_path, frame, name, column, values, type_=None):
    bad = frame.copy()
    table = pa.Table.from_pandas(bad, preserve_index=False)
    table = table.set_column(table.schema.get_field_index(column), column,
                             pa.array(values, type=type_) if type_ else pa.array(values))
    path = str(tmp_path / name)
    pq.write_table(table, path, row_group_size=700)
    return path


def test_bad_parquet_values_are_named_by_file_row_and_column(rows, tmp_path):
    _, frame, _, _ = rows
    frame = frame.iloc[:2000].reset_index(drop=True)
    ids = frame["user_id"].to_numpy().copy()
    ids[1234] = -7
    path = _bad(tmp_path, frame, "neg.parquet", "user_id", ids)
    with pytest.raises(BadInputError, match=r"neg\.parquet: row 1235: column 'user_id': received '-7', expected a "
                                            r"non-negative integer \(ids cannot be negative\)"):
        prepare(PrepareConfig(output=str(tmp_path / "x"), schema=SCHEMA, inputs=(path,)))
    path = _bad(tmp_path, frame, "float_id.parquet", "item_id", frame["item_id"].to_numpy() + 0.5)
    with pytest.raises(BadInputError, match=r"float_id\.parquet: column 'item_id' is Parquet type double, expected "
                                            r"an integer type .*ids are not fractions"):
        prepare(PrepareConfig(output=str(tmp_path / "x"), schema=SCHEMA, inputs=(path,)))
    clicks = [None if i == 10 else int(v) for i, v in enumerate(frame["click"])]
    path = _bad(tmp_path, frame, "null.parquet", "click", clicks, pa.int64())
    with pytest.raises(BadInputError, match=r"null\.parquet: row 11: column 'click': received a null, expected 0 or 1"):
        prepare(PrepareConfig(output=str(tmp_path / "x"), schema=SCHEMA, inputs=(path,)))
    assert not os.path.exists(tmp_path / "x")
    # --on_bad_rows=skip: the row goes to rejected.csv, the others are kept.
    out = str(tmp_path / "skipped")
    m = prepare(PrepareConfig(output=out, schema=SCHEMA, inputs=(path,), on_bad_rows="skip"))
    assert m["rows_rejected"] == 1 and m["rows_read"] == 2000
    assert sum(m["splits"][s]["rows"] for s in ("train", "valid", "test")) == 1999
    rejected = pd.read_csv(os.path.join(out, "rejected.csv"))
    assert len(rejected) == 1 and rejected["user_id"][0] == frame["user_id"][10]
    assert m["rejected_examples"][0].endswith("row 11: column 'click': received a null, expected 0 or 1")


def test_prepare_cli_reads_a_folder_of_parquet_files(rows, tmp_path):
    tmp, frame, _, parquets = rows
    out = tmp_path / "ds"
    res = run_cli("mtlrec.cli.prepare", f"--input={os.path.dirname(parquets[0])}", f"--output={out}",
                  "--order_by=input", "--schema=" + _schema_file(tmp_path))
    assert res.returncode == 0, res.stderr[-3000:]
    assert json.loads(res.stdout)["rows_read"] == len(frame)
    assert load_manifest(str(out)).raw["inputs"] == parquets
    empty = tmp_path / "empty"
    empty.mkdir()
    res = run_cli("mtlrec.cli.prepare", f"--input={empty}", f"--output={tmp_path / 'y'}")
    assert res.returncode != 0 and "is a folder without .parquet files" in res.stderr


def _schema_file(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA.to_json()))
    return str(path)
