"""split_ids merges as it reads: the same distinct ids at any merge size."""

import numpy as np

from mtlrec.data import read_columns
from mtlrec.data.dataset import split_ids


def test_split_ids_is_the_same_at_any_merge_size(small_dataset):
    every = {n: np.concatenate([b[n].numpy() for b in read_columns(small_dataset, "train", 1 << 16)])
             for n in ("user_id", "item_id")}
    for merge_at, batch_rows in ((1, 1000), (97, 1000), (5000, 777), (1 << 22, 1 << 16)):
        got = split_ids(small_dataset, "train", ["user_id", "item_id"], merge_at=merge_at, batch_rows=batch_rows)
        for name, ids in every.items():
            np.testing.assert_array_equal(got[name], np.unique(ids))
            assert len(got[name]) > 100
    assert split_ids(small_dataset, "train", []) == {}
