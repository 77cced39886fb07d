"""Property-based fuzzing of mtlrec-prepare's CSV input (hypothesis).

Each generated file mixes good Tenrec rows with broken ones: dropped and
extra fields, wrong types, huge numbers, NaN/inf, non-UTF-8 bytes, quoted
values, blank lines, CRLF, a BOM and a last line without its newline. A
reference judge written here, independently of `pipelines.parse`, says
which lines are good. The property: the run ends in exactly the good rows
(nothing bad accepted, nothing good lost), or fails naming the file and
the first bad line, or (with --on_bad_rows=skip) writes exactly the bad
lines to rejected.csv and every good row to the dataset.
"""

import os
import re
import struct
import tempfile

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from mtlrec.config import TENREC_HEADER, tenrec_schema
from mtlrec.pipelines.parse import BadInputError
from mtlrec.pipelines.prepare import PrepareConfig, prepare

pytestmark = pytest.mark.reliability

ID_COLUMNS = ["user_id", "item_id", "video_category", "gender", "age"] + [f"hist_{i}" for i in range(1, 11)]
LABELS = ["click", "follow", "like", "share"]
FLOAT32_MAX = float(np.finfo(np.float32).max)

BAD_ID = ["", "abc", "-3", "1.5", "0x1f", "+5", "99999999999999999999", " 5", "5 ", "-0", "1e3"]
BAD_BINARY = ["2", "", "-1", "1.0", " 1", "yes"]
BAD_FLOAT = ["nan", "inf", "-inf", "1e39", "-4e38", "abc", ""]


def judge(text: str) -> bool:
    """The reference: is this (unquoted, decoded) line a valid Tenrec row?"""
    fields = text.split(",")
    if len(fields) != len(TENREC_HEADER):
        return False
    for name, value in zip(TENREC_HEADER, fields):
        value = value[1:-1] if len(value) >= 2 and value[0] == value[-1] == '"' else value
        if name in LABELS:
            ok = value in ("0", "1")
        elif name == "watching_times":
            try:
                ok = abs(float(value)) <= FLOAT32_MAX and value.strip() == value and value.lower() not in ("nan", "inf")
            except ValueError:
                ok = False
        else:
            ok = re.fullmatch(r"\d{1,18}", value) is not None
        if not ok:
            return False
    return True


def row_values(text: str) -> tuple:
    fields = [f.strip('"') for f in text.split(",")]
    out = []
    for name, value in zip(TENREC_HEADER, fields):
        out.append(float(np.float32(float(value))) if name in LABELS or name == "watching_times" else int(value))
    return tuple(out)


@st.composite
def good_fields(draw):
    fields = []
    for name in TENREC_HEADER:
        if name in LABELS:
            fields.append(draw(st.sampled_from(["0", "1"])))
        elif name == "watching_times":
            fields.append(draw(st.sampled_from(["0", "12.5", "3e2", "1e-3", "7", "3.4e38"])))
        else:
            fields.append(str(draw(st.integers(0, 10**6))))
    return fields


@st.composite
def line(draw):
    """(bytes of the line without its newline, expected kind: good/bad/blank)."""
    kind = draw(st.sampled_from(["good"] * 6 + ["blank", "drop", "extra", "id", "binary", "float", "utf8", "quoted"]))
    if kind == "blank":
        return b"", "blank"
    fields = draw(good_fields())
    if kind == "drop":
        del fields[draw(st.integers(0, len(fields) - 1))]
    elif kind == "extra":
        fields.append(draw(st.sampled_from(["0", "x", ""])))
    elif kind == "id":
        fields[TENREC_HEADER.index(draw(st.sampled_from(ID_COLUMNS)))] = draw(st.sampled_from(BAD_ID))
    elif kind == "binary":
        fields[TENREC_HEADER.index(draw(st.sampled_from(LABELS)))] = draw(st.sampled_from(BAD_BINARY))
    elif kind == "float":
        fields[TENREC_HEADER.index("watching_times")] = draw(st.sampled_from(BAD_FLOAT))
    elif kind == "quoted":  # a quoted number is still that number
        j = draw(st.integers(0, len(fields) - 1))
        fields[j] = f'"{fields[j]}"'
    data = ",".join(fields).encode()
    if kind == "utf8":
        cut = draw(st.integers(0, len(data)))
        data = data[:cut] + b"\xff" + data[cut:]
        return data, "bad"
    return data, "good" if judge(data.decode()) else "bad"


@st.composite
def csv_file(draw):
    lines = draw(st.lists(line(), min_size=1, max_size=40))
    crlf = draw(st.booleans())
    bom = draw(st.booleans())
    final_newline = draw(st.booleans())
    newline = b"\r\n" if crlf else b"\n"
    body = newline.join([",".join(TENREC_HEADER).encode()] + [data for data, _ in lines])
    if final_newline:
        body += newline
    return (b"\xef\xbb\xbf" if bom else b"") + body, lines


def _read_rows(out: str) -> list[tuple]:
    """Every row of a prepared dataset, decoded here with numpy (not the reader)."""
    import tensorflow as tf

    rows = []
    for split in ("train", "valid", "test"):
        folder = os.path.join(out, split)
        for name in sorted(os.listdir(folder)):
            raw = open(os.path.join(folder, name), "rb").read()
            i = 0
            while i < len(raw):
                (length,) = struct.unpack("<Q", raw[i : i + 8])
                example = tf.train.Example.FromString(raw[i + 12 : i + 12 + length])
                i += 16 + length
                feat = example.features.feature
                cols = {}
                for f in ("user_id", "item_id", "video_category", "gender", "age"):
                    cols[f] = np.frombuffer(feat[f].bytes_list.value[0], "<i8")
                hist = np.frombuffer(feat["hist"].bytes_list.value[0], "<i8").reshape(-1, 10)
                for j in range(10):
                    cols[f"hist_{j + 1}"] = hist[:, j]
                for f in [*LABELS, "watching_times"]:
                    cols[f] = np.frombuffer(feat[f].bytes_list.value[0], "<f4")
                for r in range(len(cols["user_id"])):
                    rows.append(tuple(float(cols[c][r]) if c in LABELS or c == "watching_times" else int(cols[c][r])
                                      for c in TENREC_HEADER))
    return rows


@settings(max_examples=int(os.environ.get("MTLREC_FUZZ_EXAMPLES", 200)), deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(csv_file(), st.sampled_from(["fail", "skip"]), st.sampled_from([1024, 4096, 1 << 20]))
def test_prepare_ends_in_good_data_or_a_clean_failure(file, on_bad, chunk_bytes):
    data, lines = file
    good = [row_values(d.decode()) for d, kind in lines if kind == "good"]
    bad = [(n + 2, d) for n, (d, kind) in enumerate(lines) if kind == "bad"]
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fuzz.csv")
        open(path, "wb").write(data)
        out = os.path.join(tmp, "ds")
        config = PrepareConfig(output=out, schema=tenrec_schema(), inputs=(path,), on_bad_rows=on_bad,
                               chunk_bytes=chunk_bytes, workers=1)
        if not good and not bad:
            with pytest.raises(BadInputError, match="no data rows after the header"):
                prepare(config)
            return
        if bad and on_bad == "fail":
            with pytest.raises(BadInputError) as e:
                prepare(config)
            assert str(e.value).startswith(f"{path}:{bad[0][0]}: "), (str(e.value), bad[0])
            assert not os.path.exists(out) and not os.path.exists(out + ".incomplete")
            return
        m = prepare(config)
        assert sorted(_read_rows(out)) == sorted(good)
        assert m["rows_read"] == len(good) + len(bad) and m["rows_rejected"] == len(bad)
        rejected = os.path.join(out, "rejected.csv")
        if bad:
            got = open(rejected, "rb").read().decode().splitlines()[1:]
            assert got == [d.decode("utf-8", "replace") for _, d in bad]
        else:
            assert not os.path.exists(rejected)
