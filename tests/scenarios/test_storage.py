"""Object storage through tensorflow-io, and atomic output under a kill."""

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time

import pytest

from mtlrec.pipelines import synthetic
from tests.helpers import run_cli

READ_BACK = """
import json, os, sys
from mtlrec.config import TaskSpec
from mtlrec.data import make_dataset, load_manifest
m = load_manifest(sys.argv[1])
rows = {s: sum(int(f["user_id"].shape[0]) for f, _, _ in make_dataset(m, s, 256, (TaskSpec("click"),), shuffle=False))
        for s in ("train", "valid", "test")}
print(json.dumps({"rows": rows, "manifest_rows": {s: m.rows(s) for s in rows}}))
sys.stdout.flush()
os._exit(0)  # tensorflow-io's S3 filesystem aborts at interpreter exit
"""


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def s3_server():
    boto3 = pytest.importorskip("boto3")
    server = shutil.which("moto_server") or os.path.join(os.path.dirname(sys.executable), "moto_server")
    port = _free_port()
    proc = subprocess.Popen([server, "-p", str(port)], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    endpoint = f"http://127.0.0.1:{port}"
    client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="test",
                          aws_secret_access_key="test", region_name="us-east-1")
    for _ in range(100):
        try:
            client.create_bucket(Bucket="mtlrec")
            break
        except Exception:
            time.sleep(0.1)
    env = dict(os.environ, S3_ENDPOINT=endpoint, AWS_ACCESS_KEY_ID="test", AWS_SECRET_ACCESS_KEY="test",
               AWS_REGION="us-east-1", S3_USE_HTTPS="0", S3_VERIFY_SSL="0", TF_CPP_MIN_LOG_LEVEL="2")
    yield client, env
    proc.terminate()
    proc.wait(10)


def test_prepare_into_s3_and_read_back(s3_server):
    client, env = s3_server
    res = run_cli("mtlrec.cli.prepare", "--synthetic_rows=3000", "--output=s3://mtlrec/ds", env=env)
    assert res.returncode == 0, res.stderr[-2000:]
    keys = {o["Key"] for o in client.list_objects_v2(Bucket="mtlrec")["Contents"]}
    assert "ds/manifest.json" in keys
    assert not any(k.startswith("ds.incomplete") for k in keys)
    manifest = json.loads(client.get_object(Bucket="mtlrec", Key="ds/manifest.json")["Body"].read())
    assert manifest["rows_read"] == 3000
    read = subprocess.run([sys.executable, "-c", READ_BACK, "s3://mtlrec/ds"], capture_output=True, text=True, env=env)
    assert read.returncode == 0, read.stderr[-2000:]
    out = json.loads(read.stdout.strip().splitlines()[-1])
    assert out["rows"] == out["manifest_rows"]
    assert sum(out["rows"].values()) == 3000


def test_killed_prepare_leaves_no_manifest_and_rerun_succeeds(tmp_path):
    csv = synthetic.write_csv(str(tmp_path / "big.csv"), 150_000, seed=2)
    out = tmp_path / "ds"
    args = [sys.executable, "-m", "mtlrec.cli.prepare", f"--input={csv}", f"--output={out}",
            "--chunk_bytes=16384", "--workers=1"]
    proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    staging = tmp_path / "ds.incomplete" / "train"
    deadline = time.time() + 120
    while time.time() < deadline and not (staging.exists() and len(os.listdir(staging)) >= 5):
        time.sleep(0.05)
    assert proc.poll() is None, "prepare finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert not (out / "manifest.json").exists()
    assert not out.exists()
    res = run_cli("mtlrec.cli.prepare", f"--input={csv}", f"--output={out}")
    assert res.returncode == 0, res.stderr[-2000:]
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["rows_read"] == 150_000
    assert not (tmp_path / "ds.incomplete").exists()
