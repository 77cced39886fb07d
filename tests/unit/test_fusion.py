"""Score fusion: the grid search on planted data, mtlrec-fuse end to end, multi-run exports."""

import json
import os

import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from mtlrec.data.dataset import csv_rows
from mtlrec.fusion import Objective, search, simplex_grid
from tests.helpers import run_cli


def test_grid_is_the_simplex_and_bad_objectives_are_named():
    grid = simplex_grid(3, 0.25)
    assert len(grid) == 15 and np.allclose(grid.sum(axis=1), 1) and (grid >= 0).all()
    assert [0.0, 0.0, 1.0] in grid.tolist() and [0.25, 0.5, 0.25] in grid.tolist()
    assert Objective.parse("click=1,share=0.5").weights == {"click": 1.0, "share": 0.5}
    assert Objective.parse("share").weights == {"share": 1.0}
    for bad in ("", "click=x", "click=-1", "click,click", "click=0"):
        with pytest.raises(ValueError, match="--objective"):
            Objective.parse(bad)
    with pytest.raises(ValueError, match="--grid_step=0.3"):
        simplex_grid(2, 0.3)


def test_search_finds_the_planted_weights():
    # The label is 1 exactly where prod_k p_k^w*_k is above its median: AUC 1 at w* only.
    rng = np.random.default_rng(0)
    probs = {t: rng.uniform(0.01, 0.99, 4000) for t in ("click", "like", "share")}
    planted = np.array([0.2, 0.5, 0.3])
    log_score = np.stack([np.log(p) for p in probs.values()], axis=1) @ planted
    labels = {"conversion": (log_score > np.median(log_score)).astype(np.float32)}
    best, table = search(probs, labels, Objective.parse("conversion"), step=0.1)
    np.testing.assert_allclose(best, planted, atol=1e-9)
    assert len(table) == 66 and max(r["objective"] for r in table) == 1.0
    # A coarser grid that misses w* still lands within one step of it.
    best, _ = search(probs, labels, Objective.parse("conversion"), step=0.25)
    assert np.abs(best - planted).max() <= 0.25
    # An objective on labels no data has is an error naming them.
    with pytest.raises(ValueError, match="purchase"):
        search(probs, labels, Objective.parse("purchase"), step=0.5)


def _serve(export_path, rows):
    fn = tf.saved_model.load(export_path).signatures["serving_default"]
    specs = fn.structured_input_signature[1]
    return {k: v.numpy().reshape(-1) for k, v in fn(**{c: tf.constant(rows[c]) for c in specs}).items()}


def _latest(base):
    return os.path.join(base, str(max(int(d) for d in os.listdir(base) if d.isdigit())))


def test_fuse_one_run_and_two_runs_end_to_end(small_dataset, tmp_path):
    common = [f"--data={small_dataset}", "--epochs=1", "--batch_size=1024", "--embedding_dim=4", "--expert_units=8",
              "--tower_units=8", "--bottom_units=16"]
    multi, single = tmp_path / "mmoe", tmp_path / "share"
    for args in (["--model=mmoe", "--tasks=click,like", f"--model_dir={multi}"],
                 ["--model=shared_bottom", "--tasks=share", f"--model_dir={single}"]):
        res = run_cli("mtlrec.cli.train", *args, *common)
        assert res.returncode == 0, res.stderr[-3000:]
    own = {"mmoe": _latest(multi / "export"), "share": _latest(single / "export")}
    rows = csv_rows(small_dataset, "valid", 64)

    # One run: a new version in MODEL_DIR/export whose score is the formula with the found weights.
    res = run_cli("mtlrec.cli.fuse", f"--model_dir={multi}", "--objective=click=1,like=1", "--grid_step=0.25")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((multi / "fusion" / "fusion.json").read_text())
    table = pd.read_csv(multi / "fusion" / "search.csv")
    assert len(table) == 5 and result["value"] == pytest.approx(table["objective"].max())
    assert result["value"] >= max(result["alone"].values()) - 1e-12
    assert result["export"] == _latest(multi / "export") != own["mmoe"]
    out = _serve(result["export"], rows)
    w = result["weights"]
    np.testing.assert_allclose(out["score"], out["click"] ** w["click"] * out["like"] ** w["like"], rtol=1e-5)
    np.testing.assert_allclose(out["click"], _serve(own["mmoe"], rows)["click"], rtol=1e-6)

    # Two runs behind one signature: each task's output equals its run's own export.
    res = run_cli("mtlrec.cli.fuse", f"--model_dir={multi}", f"--model_dir={single}",
                  "--objective=share", "--grid_step=0.5", f"--out={tmp_path / 'fused'}")
    assert res.returncode == 0, res.stderr[-3000:]
    result = json.loads((tmp_path / "fused" / "fusion.json").read_text())
    assert set(result["weights"]) == {"click", "like", "share"} and len(pd.read_csv(tmp_path / "fused" / "search.csv")) == 6
    assert result["export"].startswith(str(tmp_path / "fused" / "export"))
    out, a, b = _serve(result["export"], rows), _serve(own["mmoe"], rows), _serve(own["share"], rows)
    for task, ref in (("click", a), ("like", a), ("share", b)):
        np.testing.assert_allclose(out[task], ref[task], rtol=1e-6)
    w = result["weights"]
    np.testing.assert_allclose(out["score"], np.prod([out[t] ** w[t] for t in w], axis=0), rtol=1e-5)

    # A task from two runs is an error, before anything is written.
    res = run_cli("mtlrec.cli.fuse", f"--model_dir={multi}", f"--model_dir={multi}", "--objective=click",
                  f"--out={tmp_path / 'twice'}")
    assert res.returncode != 0 and "predicted by" in res.stderr and not (tmp_path / "twice").exists()
