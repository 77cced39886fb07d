"""Each kind of bad input: a clear error naming the place and the problem."""

import gzip
import os
import re

import pytest

from mtlrec.config import TENREC_HEADER, tenrec_schema
from mtlrec.pipelines.parse import BadInputError
from mtlrec.pipelines.prepare import PrepareConfig, prepare
from tests.helpers import run_cli

HEADER = ",".join(TENREC_HEADER)
GOOD = "1,5,1,0,1,0,3,40,1,2,5,6,0,0,0,0,0,0,0,0"
GOOD2 = "2,6,0,0,0,0,3,0,2,3,7,0,0,0,0,0,0,0,0,0"


def _write(tmp_path, text, name="in.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _run(path, out, **kw):
    return prepare(PrepareConfig(output=str(out), schema=tenrec_schema(), inputs=(path,), **kw))


def _fails(tmp_path, text, pattern):
    path = _write(tmp_path, text)
    with pytest.raises(BadInputError, match=pattern):
        _run(path, tmp_path / "ds")
    assert not os.path.exists(tmp_path / "ds" / "manifest.json")


def test_missing_column(tmp_path):
    header = HEADER.replace(",like", "")
    _fails(tmp_path, header + "\n", r"in\.csv:1: header lacks column\(s\) \['like'\]")


def test_extra_column(tmp_path):
    _fails(tmp_path, HEADER + ",rating\n" + GOOD + ",5\n", r"in\.csv:1: header has column\(s\) \['rating'\] that the schema does not know")


def test_header_mismatch_between_inputs(tmp_path):
    a = _write(tmp_path, HEADER + "\n" + GOOD + "\n", "a.csv")
    cols = TENREC_HEADER[:]
    cols[2], cols[3] = cols[3], cols[2]
    b = _write(tmp_path, ",".join(cols) + "\n" + GOOD + "\n", "b.csv")
    with pytest.raises(BadInputError, match=r"b\.csv:1: header mismatch: received .*a\.csv has"):
        prepare(PrepareConfig(output=str(tmp_path / "ds"), schema=tenrec_schema(), inputs=(a, b)))


def test_duplicate_header_column(tmp_path):
    _fails(tmp_path, HEADER + ",click\n", r"in\.csv:1: header names column\(s\) \['click'\] more than once")


def test_non_integer_id(tmp_path):
    _fails(tmp_path, f"{HEADER}\n{GOOD}\n{GOOD2}\nabc{GOOD[1:]}\n",
           r"in\.csv:4: column 'user_id': received 'abc', expected a non-negative integer")


@pytest.mark.parametrize("value", ["0x1f", "1.0", "1e3", "+5"])
def test_id_spellings_the_reader_could_accept(tmp_path, value):
    # Arrow's C reader reads "0x1f" as 31 and pandas' reads "1.0" as 1: each
    # must still be rejected, wherever in a chunk it appears.
    bad = GOOD.replace("1,5,", f"1,{value},", 1)
    _fails(tmp_path, f"{HEADER}\n{GOOD}\n{bad}\n{GOOD2}\n",
           rf"in\.csv:3: column 'item_id': received '{re.escape(value)}', expected a non-negative integer")


def test_negative_id(tmp_path):
    bad = GOOD.replace("1,5,", "1,-5,", 1)
    _fails(tmp_path, f"{HEADER}\n{GOOD}\n{bad}\n",
           r"in\.csv:3: column 'item_id': received '-5', expected a non-negative integer \(ids cannot be negative\)")


def test_label_not_binary(tmp_path):
    bad = "1,5,2," + GOOD.split(",", 3)[3]
    _fails(tmp_path, f"{HEADER}\n{bad}\n", r"in\.csv:2: column 'click': received '2', expected 0 or 1")


def test_wrong_number_of_fields(tmp_path):
    _fails(tmp_path, f"{HEADER}\n{GOOD}\n{GOOD},7\n",
           r"in\.csv:3: wrong number of fields: received 21, expected 20")
    _fails(tmp_path, f"{HEADER}\n{GOOD.rsplit(',', 1)[0]}\n{GOOD}\n",
           r"in\.csv:2: wrong number of fields: received 19, expected 20")


def test_empty_file(tmp_path):
    _fails(tmp_path, "", r"in\.csv: file is empty: expected a header line")


def test_header_only(tmp_path):
    _fails(tmp_path, HEADER + "\n", r"in\.csv: no data rows after the header")


def test_truncated_gzip(tmp_path):
    data = gzip.compress((HEADER + "\n" + (GOOD + "\n") * 20000).encode())
    path = tmp_path / "t.csv.gz"
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(BadInputError, match=r"t\.csv\.gz: truncated or corrupt gzip stream after line \d+"):
        _run(str(path), tmp_path / "ds")
    assert not os.path.exists(tmp_path / "ds")


def test_skip_writes_rejected_and_counts(tmp_path):
    bad_id = GOOD.replace("1,5,", "1,x,", 1)
    text = f"{HEADER}\n{GOOD}\n{bad_id}\n{GOOD2}\n{GOOD},9\n\n{GOOD}\n"
    path = _write(tmp_path, text)
    m = _run(path, tmp_path / "ds", on_bad_rows="skip")
    assert m["rows_read"] == 5 and m["rows_rejected"] == 2
    assert sum(s["rows"] for s in m["splits"].values()) == 3
    assert m["rejected_examples"][0].endswith("in.csv:3: column 'item_id': received 'x', expected a non-negative integer")
    assert "in.csv:5: wrong number of fields" in m["rejected_examples"][1]
    rejected = (tmp_path / "ds" / "rejected.csv").read_text().splitlines()
    assert rejected == [HEADER, bad_id, GOOD + ",9"]


def test_cli_one_line_error_and_status(tmp_path):
    path = _write(tmp_path, f"{HEADER}\n{GOOD}\n-1{GOOD[1:]}\n")
    res = run_cli("mtlrec.cli.prepare", f"--input={path}", f"--output={tmp_path / 'ds'}")
    assert res.returncode == 1
    last = res.stderr.strip().splitlines()[-1]
    assert last.startswith("error: ") and "in.csv:3: column 'user_id': received '-1'" in last
    res = run_cli("mtlrec.cli.prepare", f"--input={tmp_path / 'nope.csv'}", f"--output={tmp_path / 'ds'}")
    assert res.returncode == 1 and "nope.csv: no such file" in res.stderr


def test_cli_with_schema_json_file_and_malformed_schema(tmp_path):
    import json

    from mtlrec.config import tenrec_schema

    (tmp_path / "schema.json").write_text(json.dumps(tenrec_schema().to_json()))
    path = _write(tmp_path, f"{HEADER}\n{GOOD}\n{GOOD2}\n")
    res = run_cli("mtlrec.cli.prepare", f"--input={path}", f"--output={tmp_path / 'ds'}",
                  f"--schema={tmp_path / 'schema.json'}")
    assert res.returncode == 0, res.stderr[-2000:]
    summary = json.loads(res.stdout)
    assert summary["rows_read"] == 2
    (tmp_path / "bad.json").write_text('{"features": [\n  {"name": "x", "kind": "idd"}], "labels": []}')
    res = run_cli("mtlrec.cli.prepare", f"--input={path}", f"--output={tmp_path / 'ds2'}",
                  f"--schema={tmp_path / 'bad.json'}")
    assert res.returncode == 1 and "Feature 'x': kind must be one of" in res.stderr
    (tmp_path / "broken.json").write_text('{"features": [\n  {"name": "x",,}]}')
    res = run_cli("mtlrec.cli.prepare", f"--input={path}", f"--output={tmp_path / 'ds3'}",
                  f"--schema={tmp_path / 'broken.json'}")
    assert res.returncode == 1 and "broken.json:2:" in res.stderr and "invalid schema JSON" in res.stderr
