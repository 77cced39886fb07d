"""The label-leak check of prepare (issue 27)."""

import numpy as np
import pandas as pd

from mtlrec.config import Schema, tenrec_schema
from mtlrec.pipelines.prepare import PrepareConfig, prepare
from tests.helpers import run_cli


def test_a_history_holding_the_rows_own_clicked_item_is_named(tenrec_csv, tmp_path):
    df = pd.read_csv(tenrec_csv)
    clicked = df.click == 1
    df.loc[clicked, "hist_3"] = df.loc[clicked, "item_id"]  # the log's history includes the row's own click
    path = tmp_path / "leak.csv"
    df.to_csv(path, index=False)
    res = run_cli("mtlrec.cli.prepare", f"--input={path}", f"--output={tmp_path / 'ds'}")
    assert res.returncode == 0, res.stderr[-2000:]
    assert "possible label leak: sequence 'hist' holds the row's own id on 100% of the rows with label 'click'" \
        in res.stderr
    import json

    warnings = json.loads((tmp_path / "ds" / "manifest.json").read_text())["leak_warnings"]
    assert len(warnings) == 1 and "'hist'" in warnings[0] and "'click'" in warnings[0]


def test_a_numeric_feature_that_is_the_outcome_is_named(tmp_path):
    rng = np.random.default_rng(0)
    n = 5000
    click = rng.random(n) < 0.3
    frame = pd.DataFrame({"user_id": rng.integers(1, 100, n), "click": click.astype(int),
                          "seconds": np.where(click, rng.exponential(30, n) + 1, 0.0),  # watch time: after the click
                          "price": rng.normal(10, 2, n)})
    path = tmp_path / "log.csv"
    frame.to_csv(path, index=False)
    schema = Schema.from_json({"features": [{"name": "user_id", "kind": "id"}, {"name": "seconds", "kind": "numeric"},
                                            {"name": "price", "kind": "numeric"}],
                               "labels": [{"name": "click", "kind": "binary"}]})
    m = prepare(PrepareConfig(output=str(tmp_path / "ds"), schema=schema, inputs=(str(path),)))
    assert len(m["leak_warnings"]) == 1
    assert m["leak_warnings"][0].startswith("feature 'seconds' alone ranks label 'click' with AUC 1.0000")


def test_silent_on_the_generated_default_and_the_tenrec_preset(tenrec_csv, tmp_path):
    m = prepare(PrepareConfig(output=str(tmp_path / "ds"), schema=tenrec_schema(), inputs=(tenrec_csv,)))
    assert m["leak_warnings"] == []
    m = prepare(PrepareConfig(output=str(tmp_path / "gen"), schema=tenrec_schema(), synthetic_rows=30_000, seed=4))
    assert m["leak_warnings"] == []


def test_silent_on_the_time_ordered_generated_default(tmp_path):
    m = prepare(PrepareConfig(output=str(tmp_path / "ds"), schema=tenrec_schema(), synthetic_rows=30_000, seed=4,
                              order_by="input"))
    assert m["split"]["kind"] == "ordered" and m["leak_warnings"] == []
