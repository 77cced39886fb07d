"""benchmarks.tenrec_scale --stages at a small size: the generated log is
the generator's own rows, and each stage reports its figures."""

import json
import os
import subprocess
import sys

import pandas as pd

from mtlrec.pipelines import synthetic

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def test_stages_generate_the_generators_rows_and_measure_each_stage(tmp_path):
    work = str(tmp_path / "tenrec")
    cmd = [sys.executable, "-m", "benchmarks.tenrec_scale", "--stages=generate,prepare,train", "--rows=30000",
           "--users=2000", "--items=5000", "--chunk_rows=10000", "--generate_workers=2", "--train_steps=3",
           "--train_flags=--tasks=click,like", f"--workdir={work}"]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True, timeout=600,
                          env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "3"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Two workers, three chunks: part-00 holds chunks 0 and 2, part-01 chunk 1.
    parts = [pd.read_csv(os.path.join(work, "csv", f"part-{i:02d}.csv")) for i in range(2)]
    assert [len(p) for p in parts] == [20000, 10000]
    expected = list(synthetic.generate(30000, 0, n_users=2000, n_items=5000, chunk_rows=10000))
    got = [parts[0].iloc[:10000], parts[1], parts[0].iloc[10000:]]
    for want, have in zip(expected, got):
        pd.testing.assert_frame_equal(have.reset_index(drop=True), want.reset_index(drop=True)[list(have.columns)],
                                      check_dtype=False)
    stages = json.load(open(os.path.join(work, "stages.json")))
    assert stages["rows"] == 30000 and stages["host"]["cpu_model"]
    assert stages["generate"]["csv_mb_per_1m_rows"] > 50 and stages["generate"]["rows_per_s"] > 0
    assert stages["prepare"]["tree_peak_pss_mb"] > 50 and stages["prepare"]["dataset_mb_per_1m_rows"] > 10
    train = stages["train"]
    assert train["train_rows"] > 20000 and train["examples_per_s"] > 0
    assert train["projected_epoch_min"] == round(train["train_rows"] / train["examples_per_s"] / 60, 1)
    assert set(train["test_auc"]) == {"click", "like"} and train["mixed_precision"] == "float32"
    lines = [json.loads(line) for line in proc.stdout.splitlines() if line.startswith("{")]
    assert [line["stage"] for line in lines] == ["generate", "prepare", "train"]
