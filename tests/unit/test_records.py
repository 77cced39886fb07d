import numpy as np
import tensorflow as tf

from mtlrec.config import FeatureSpec, LabelSpec, Schema
from mtlrec.data import records
from mtlrec.data.dataset import decode_block, decode_blocks


def _schema():
    return Schema(
        features=(
            FeatureSpec("uid", "id"),
            FeatureSpec("city", "categorical"),
            FeatureSpec("price", "numeric"),
            FeatureSpec("seq", "sequence", columns=("s1", "s2", "s3"), vocab_from="uid"),
        ),
        labels=(LabelSpec("click"), LabelSpec("dwell", "regression")),
    )


def _columns(n, seed=0):
    rng = np.random.default_rng(seed)
    return {
        "uid": rng.integers(0, 2**62, n),
        "city": [f"c,ity \"{seed}-{i}\" é".encode() for i in range(n)],
        "price": rng.normal(size=n).astype(np.float32),
        "seq": rng.integers(0, 1000, (n, 3)),
        "click": rng.integers(0, 2, n).astype(np.float32),
        "dwell": rng.exponential(size=n).astype(np.float32),
    }


def test_block_round_trip_through_tensorflow(tmp_path):
    schema, n = _schema(), 7
    cols = _columns(n)
    path = str(tmp_path / "x.tfrecord")
    with open(path, "wb") as f:
        f.write(records.frame(records.encode_block(cols, n)))
        f.write(records.frame(records.encode_block({k: v[:2] for k, v in cols.items()}, 2)))
    blocks = list(tf.data.TFRecordDataset(path).map(lambda s: decode_block(s, schema)))
    assert len(blocks) == 2
    got = {k: v.numpy() for k, v in blocks[0].items()}
    np.testing.assert_array_equal(got["uid"], cols["uid"])
    assert list(got["city"]) == cols["city"]
    np.testing.assert_array_equal(got["price"], cols["price"])
    np.testing.assert_array_equal(got["seq"], cols["seq"])
    np.testing.assert_array_equal(got["click"], cols["click"])
    np.testing.assert_array_equal(got["dwell"], cols["dwell"])
    assert blocks[1]["seq"].shape == (2, 3)


def test_blocks_decode_together_equal_or_not_in_size():
    schema = _schema()
    parts = [_columns(5, seed=1), _columns(5, seed=2), _columns(3, seed=3)]
    serialized = [records.encode_block(c, len(c["uid"])) for c in parts]

    def expect(chosen):
        return {k: np.concatenate([np.asarray(c[k]) for c in chosen]) for k in parts[0]}

    for chosen, blobs in (  # equal sizes decode directly; a short block joins bytes first
        (parts[:2], serialized[:2]),
        (parts, serialized),
        (parts[2:], serialized[2:]),
    ):
        got = {k: v.numpy() for k, v in tf.function(lambda s: decode_blocks(s, schema))(tf.constant(blobs)).items()}
        want = expect(chosen)
        assert set(got) == set(want)
        for k in want:
            np.testing.assert_array_equal(got[k], want[k], err_msg=k)
