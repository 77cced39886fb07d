"""Ids the train split never holds (issue 27): which row they read, and the
cold rows' own figures on the test split."""

import numpy as np
import pytest

from mtlrec.config import ModelConfig, parse_tasks, tenrec_schema
from mtlrec.data.dataset import split_ids
from mtlrec.pipelines.prepare import PrepareConfig, prepare
from mtlrec.training import TrainConfig, train


@pytest.fixture(scope="module")
def ordered_data(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("cold") / "ds")
    prepare(PrepareConfig(output=out, schema=tenrec_schema(), synthetic_rows=20_000, seed=2, order_by="input"))
    return out


def _config(data, model_dir, **kw):
    return TrainConfig(model="mmoe", model_dir=str(model_dir), data=data, epochs=1, train_steps=20, batch_size=256,
                       verbose=0, tensorboard=False, tasks=parse_tasks("click,like"),
                       model_config=ModelConfig(tasks=("click", "like"), embedding_dim=4, expert_units=(8,),
                                                tower_units=(4,), num_experts=2), **kw)


def _score(model_dir, rows):
    import keras

    import mtlrec.models  # noqa: F401  (registers the layers)

    network = keras.saving.load_model(f"{model_dir}/model.keras")
    return {k: np.asarray(v) for k, v in network(rows).items()}


def _rows(data, item_ids):
    from tests.helpers import valid_features

    features = valid_features(data, rows=1)
    n = len(item_ids)
    out = {k: np.repeat(v, n, axis=0) for k, v in features.items()}
    out["item_id"] = np.asarray(item_ids, out["item_id"].dtype)
    return out


def test_the_defaults_send_unseen_ids_to_a_trained_out_of_vocabulary_row():
    config = _config("d", "m")
    assert config.unseen_ids == "oov" and config.oov_dropout == 0.02
    assert {"unseen_ids", "oov_dropout"} <= set(config.identity())  # recorded: older runs do not resume silently


@pytest.mark.parametrize("unseen_ids", ["oov", "own_row"])
def test_an_unseen_item_reads_the_out_of_vocabulary_row_or_its_own(ordered_data, tmp_path, unseen_ids):
    from mtlrec.data import load_manifest

    # The defaults: "oov" with the row trained by 2% id dropout; "own_row" needs the dropout off.
    metrics = train(_config(ordered_data, tmp_path / "run", unseen_ids=unseen_ids,
                            oov_dropout=0.02 if unseen_ids == "oov" else 0.0))
    seen = set(split_ids(ordered_data, "train", ["item_id"])["item_id"].tolist())
    vocab = load_manifest(ordered_data).vocab_size["item_id"]
    unseen = [i for i in range(vocab) if i not in seen][:3]
    assert len(unseen) == 3  # the later periods bring items the train split never holds
    outside = vocab + 1000  # past the table: always the out-of-vocabulary row
    scores = _score(tmp_path / "run", _rows(ordered_data, [*unseen, outside]))
    for task in ("click", "like"):
        p = scores[task].ravel()
        if unseen_ids == "oov":
            np.testing.assert_allclose(p[:3], p[3], rtol=0, atol=1e-7)  # each scores as the OOV row
        else:
            assert len(set(np.round(p, 7))) == 4  # each its own (never trained) row
    cold, warm = metrics["test_cold"], metrics["test_warm"]
    assert cold["test_rows"] + warm["test_rows"] == load_manifest(ordered_data).rows("test")
    assert 0 < cold["fraction_of_test_rows"] < 0.5 and cold["ids_unseen_in_train"] == ["user_id", "item_id"]
    assert {"auc", "logloss", "calibration"} <= set(cold["click"]) and 0 < cold["click"]["calibration"] < 10
