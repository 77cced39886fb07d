"""mtlrec.provenance: what metrics.json records about where a result came from."""

import datetime
import subprocess
import sys

from mtlrec import provenance


def test_provenance_names_versions_commit_command_and_times():
    started = provenance.now()
    out = provenance.provenance(started, {"model": "mmoe"})
    assert out["started_at"] == started and out["flags"] == {"model": "mmoe"}
    assert datetime.datetime.fromisoformat(out["finished_at"]) >= datetime.datetime.fromisoformat(started)
    assert out["mtlrec_version"] == "0.1.0"
    assert out["tensorflow_version"].startswith("2.17.") and out["keras_version"].startswith("3.")
    assert out["python_version"] == ".".join(map(str, sys.version_info[:3]))
    assert out["command_line"] == sys.argv


def test_the_commit_is_the_checkout_s_head():
    commit = provenance.git_commit()
    root = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True).stdout.strip()
    if not root:  # not run from a git checkout
        assert commit is None
        return
    assert commit.removesuffix("-dirty") == root


def test_the_host_is_named_with_its_vector_extensions_and_onednn():
    out = provenance.provenance(provenance.now())["host"]
    assert set(out) == {"cpu_model", "vector_extensions", "logical_cpus", "usable_cpus", "onednn_opts",
                        "onednn_version"}
    assert set(out["vector_extensions"]) <= set(provenance.VECTOR_FLAGS)
    assert 1 <= out["usable_cpus"] <= out["logical_cpus"]
    assert out["onednn_version"].startswith("3.")  # TF 2.17's wheel ships oneDNN 3.x headers
    import platform

    if sys.platform == "linux" and platform.machine() == "x86_64":
        assert out["cpu_model"] and "avx2" in out["vector_extensions"]  # every x86-64 host CI has run on
    res = subprocess.run([sys.executable, "-m", "mtlrec.provenance"], capture_output=True, text=True, timeout=120)
    import json

    assert json.loads(res.stdout.strip().splitlines()[-1])["cpu_model"] == out["cpu_model"]
