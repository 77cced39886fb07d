"""Time-ordered splits (issue 27): `--order_by=input|COLUMN` in prepare."""

import json

import numpy as np
import pytest

from mtlrec.config import Schema
from mtlrec.pipelines.parse import BadInputError
from mtlrec.pipelines.prepare import PrepareConfig, prepare
from tests.helpers import run_cli, split_frame

SCHEMA = Schema.from_json({"features": [{"name": "rid", "kind": "id"}], "labels": [{"name": "click", "kind": "binary"}],
                           "ignore": ["ts"]})


def _write(path, rids, ts=None):
    ts = ts if ts is not None else np.zeros(len(rids), int)
    path.write_text("rid,click,ts\n" + "".join(f"{r},{r % 2},{t}\n" for r, t in zip(rids, ts)))
    return str(path)


def _rids(data, split):
    return split_frame(data, split, SCHEMA)["rid"].tolist()


def _prepare(tmp_path, inputs, **kw):
    out = str(tmp_path / "ds")
    manifest = prepare(PrepareConfig(output=out, schema=SCHEMA, inputs=tuple(inputs), chunk_bytes=1024, workers=2,
                                     **kw))
    return out, manifest


def test_input_order_gives_exact_row_ranges_for_one_file(tmp_path):
    rids = np.random.default_rng(0).permutation(np.arange(1, 1001))  # not sorted: the order is the file's
    data, m = _prepare(tmp_path, [_write(tmp_path / "a.csv", rids)], order_by="input", splits=(0.7, 0.2, 0.1))
    assert sorted(_rids(data, "train")) == sorted(rids[:700].tolist())
    assert sorted(_rids(data, "valid")) == sorted(rids[700:900].tolist())
    assert sorted(_rids(data, "test")) == sorted(rids[900:].tolist())
    assert m["split"] == {"kind": "ordered", "by": "input", "fractions": [0.7, 0.2, 0.1], "rows_in_order": 1000,
                          "valid_from_row": 700, "test_from_row": 900,
                          "files": [{"path": str(tmp_path / "a.csv"), "first_row": 0}]}
    assert json.loads((tmp_path / "ds" / "manifest.json").read_text())["split"]["kind"] == "ordered"


def test_input_order_runs_across_files_in_the_order_given(tmp_path):
    first = _write(tmp_path / "day2.csv", np.arange(1, 301))
    second = _write(tmp_path / "day1.csv", np.arange(301, 401))  # given second: it comes later, whatever its name
    data, m = _prepare(tmp_path, [first, second], order_by="input", splits=(0.5, 0.25, 0.25))
    assert sorted(_rids(data, "train")) == list(range(1, 201))
    assert sorted(_rids(data, "valid")) == list(range(201, 301))
    assert sorted(_rids(data, "test")) == list(range(301, 401))
    assert [f["first_row"] for f in m["split"]["files"]] == [0, 300]


def test_the_stored_order_reads_the_train_rows_as_the_input_gave_them(tmp_path):
    from mtlrec.data.dataset import read_columns

    rids = np.random.default_rng(3).permutation(np.arange(1, 12_001))
    data = str(tmp_path / "ds")
    m = prepare(PrepareConfig(output=data, schema=SCHEMA, inputs=(_write(tmp_path / "a.csv", rids),),
                              chunk_bytes=25_000, workers=2, order_by="input", splits=(0.8, 0.1, 0.1)))
    # Several files of several 1024-row blocks: the default reader takes four files in turn, block by block.
    assert len(m["splits"]["train"]["files"]) >= 3 and m["splits"]["train"]["rows"] == 9600

    def read(**kw):
        return np.concatenate([b["rid"].numpy().ravel() for b in read_columns(data, "train", 256, **kw)]).tolist()

    assert read(in_order=True) == rids[:9600].tolist()  # --train_order=stored: one file after another
    assert read() != rids[:9600].tolist() and sorted(read()) == sorted(rids[:9600].tolist())
    with pytest.raises(ValueError, match="in_order"):
        read_columns(data, "train", 256, in_order=True, shuffle=True)


def test_a_timestamp_column_splits_by_value_and_ties_stay_together(tmp_path):
    # 10 rows per second, shuffled: 100 distinct times. The 75% cut falls on the first row of second
    # 75, so train is seconds 0..74; the rows of one second never straddle a cut.
    rng = np.random.default_rng(1)
    seconds = rng.permutation(np.repeat(np.arange(100), 10))
    times = [f"2026-01-01T00:{s // 60:02d}:{s % 60:02d}Z" for s in seconds]
    rids = np.arange(1, 1001)
    data, m = _prepare(tmp_path, [_write(tmp_path / "t.csv", rids, times)], order_by="ts", splits=(0.75, 0.15, 0.1))
    by_rid = dict(zip(rids.tolist(), seconds.tolist()))
    train, valid, test = (sorted(by_rid[r] for r in _rids(data, s)) for s in ("train", "valid", "test"))
    assert set(train) == set(range(75)) and set(valid) == set(range(75, 90)) and set(test) == set(range(90, 100))
    assert (len(train), len(valid), len(test)) == (750, 150, 100)
    assert m["split"]["valid_from"] == "2026-01-01T00:01:15+00:00" and m["split"]["value_kind"] == "time"
    # A cut inside a run of ties: the tied rows all go to the later split.
    data, m = _prepare(tmp_path, [_write(tmp_path / "t.csv", rids, times)], order_by="ts", splits=(0.755, 0.145, 0.1),
                       overwrite=True)
    assert len(_rids(data, "train")) == 750 and len(_rids(data, "valid")) == 150  # second 75 is all in valid


def test_a_numeric_order_column_that_is_not_monotonic_in_the_file(tmp_path):
    ts = np.random.default_rng(2).permutation(np.arange(500)) * 7 + 1_700_000_000
    data, m = _prepare(tmp_path, [_write(tmp_path / "n.csv", np.arange(1, 501), ts)], order_by="ts",
                       splits=(0.8, 0.1, 0.1))
    order = np.argsort(ts)
    assert sorted(_rids(data, "test")) == sorted((order[450:] + 1).tolist())
    assert m["split"]["valid_from"] == float(np.sort(ts)[400]) and m["split"]["value_kind"] == "number"


def test_a_non_numeric_order_value_is_an_error_naming_file_line_and_column(tmp_path):
    path = tmp_path / "bad.csv"
    lines = ["rid,click,ts"] + [f"{i},0,{1000 + i}" for i in range(1, 50)]
    lines[30] = "30,0,yesterday"
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(BadInputError, match=rf"{path}:31: column 'ts': received 'yesterday', expected a number"):
        _prepare(tmp_path, [str(path)], order_by="ts")
    assert not (tmp_path / "ds").exists()
    res = run_cli("mtlrec.cli.prepare", f"--input={path}", f"--output={tmp_path / 'ds'}", "--order_by=ts",
                  f"--schema={_schema_file(tmp_path)}")
    assert res.returncode == 1 and f"error: {path}:31: column 'ts'" in res.stderr, res.stderr[-2000:]


def _schema_file(tmp_path):
    path = tmp_path / "schema.json"
    path.write_text(json.dumps(SCHEMA.to_json()))
    return str(path)


def test_order_by_refuses_split_by_and_unknown_columns(tmp_path):
    with pytest.raises(ValueError, match="choose one"):
        PrepareConfig(output="x", schema=SCHEMA, inputs=("a",), order_by="input", split_by="rid")
    with pytest.raises(ValueError, match="--order_by=when: expected 'input' or a column"):
        PrepareConfig(output="x", schema=SCHEMA, inputs=("a",), order_by="when")


def test_a_hash_split_is_recorded_as_such(tmp_path):
    _, m = _prepare(tmp_path, [_write(tmp_path / "a.csv", np.arange(1, 101))])
    assert m["split"] == {"kind": "hash", "by": "row", "fractions": [0.8, 0.1, 0.1], "seed": 0}


def test_a_run_records_its_split_and_the_report_prints_it(tmp_path):
    from mtlrec.config import ModelConfig, parse_tasks, tenrec_schema
    from mtlrec.pipelines import synthetic
    from mtlrec.report import write_report
    from mtlrec.training import TrainConfig, train

    csv_path = synthetic.write_csv(str(tmp_path / "log.csv"), 3000, seed=2)
    data = str(tmp_path / "ds")
    prepare(PrepareConfig(output=data, schema=tenrec_schema(), inputs=(csv_path,), order_by="input"))
    metrics = train(TrainConfig(model="mmoe", model_dir=str(tmp_path / "run"), data=data, epochs=1, train_steps=3,
                                batch_size=256, verbose=0, tensorboard=False, tasks=parse_tasks("click,like"),
                                model_config=ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,),
                                                         tower_units=(4,), num_experts=2)))
    assert metrics["split"]["kind"] == "ordered" and metrics["split"]["test_from_row"] == 2700
    write_report([str(tmp_path / "run")], str(tmp_path / "report"))
    report = (tmp_path / "report" / "report.md").read_text()
    assert "Split: time-ordered by input row (0.8/0.1/0.1): train rows 0-2399, valid from row 2400, test from " \
           "row 2700 of 3000." in report


def test_the_generated_log_is_time_ordered_with_in_log_history_and_a_cold_tail():
    import pandas as pd

    from mtlrec.pipelines import synthetic

    frame = pd.concat(synthetic.generate(30_000, seed=3, ordered=True, chunk_rows=7_000), ignore_index=True)
    hist = frame[[f"hist_{i}" for i in range(1, 11)]].to_numpy()
    recent: dict[int, list[int]] = {}
    for row, (user, item, click) in enumerate(zip(frame.user_id, frame.item_id, frame.click)):
        expected = recent.get(user, [])
        assert hist[row].tolist() == (expected + [0] * 10)[:10], row  # the user's last clicks before the row
        if click:
            recent[user] = [item, *expected][:10]
    # Users and items arrive over time: the last tenth holds ids the first 90% never saw.
    cut = int(0.9 * len(frame))
    past, future = frame[:cut], frame[cut:]
    new_users = (~future.user_id.isin(past.user_id)).mean()
    new_items = (~future.item_id.isin(past.item_id)).mean()
    assert 0.005 < new_users < 0.2 and 0.01 < new_items < 0.3, (new_users, new_items)
    first = frame[: len(frame) // 10]
    assert (first[[f"hist_{i}" for i in range(1, 11)]].to_numpy() > 0).mean() < \
        (future[[f"hist_{i}" for i in range(1, 11)]].to_numpy() > 0).mean()  # histories fill as the log goes on
    assert 0.2 < frame.click.mean() < 0.28
    # The independent-rows generator is unchanged (the Tenrec paper's protocol, --synthetic_split=hash).
    rows = next(synthetic.generate(2000, seed=3))
    assert (rows[[f"hist_{i}" for i in range(1, 11)]].to_numpy() > 0).any(axis=1).mean() > 0.9
