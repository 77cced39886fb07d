"""mtlrec.cluster: this process's place among the workers, from TF_CONFIG."""

import json

import pytest

from mtlrec import cluster


def test_alone_without_tf_config(monkeypatch):
    monkeypatch.delenv("TF_CONFIG", raising=False)
    worker = cluster.current()
    assert (worker.index, worker.count, worker.is_chief, worker.multi) == (0, 1, True, False)


def test_hosts_give_the_tf_config_that_reads_back(monkeypatch):
    raw = cluster.tf_config_from_hosts(["a:1", "b:2", "c:3"], 2)
    assert json.loads(raw) == {"cluster": {"worker": ["a:1", "b:2", "c:3"]}, "task": {"type": "worker", "index": 2}}
    monkeypatch.setenv("TF_CONFIG", raw)
    worker = cluster.current()
    assert (worker.index, worker.count, worker.is_chief, worker.multi) == (2, 3, False, True)
    assert str(worker) == "worker 2 of 3"
    with pytest.raises(ValueError, match="--task_index=3: expected 0 .. 2"):
        cluster.tf_config_from_hosts(["a:1", "b:2", "c:3"], 3)
    with pytest.raises(ValueError, match="'b' is not host:port"):
        cluster.tf_config_from_hosts(["a:1", "b"], 0)


def test_a_chief_task_counts_first(monkeypatch):
    config = {"cluster": {"chief": ["c:1"], "worker": ["w:1", "w:2"]}, "task": {"type": "worker", "index": 1}}
    monkeypatch.setenv("TF_CONFIG", json.dumps(config))
    assert cluster.current() == cluster.Worker(2, 3)


@pytest.mark.parametrize("raw, message", [
    ("not json", "TF_CONFIG: expected"),
    (json.dumps({"cluster": {"worker": ["a:1"], "ps": ["p:1"]}, "task": {"type": "worker", "index": 0}}),
     "parameter servers are not supported"),
    (json.dumps({"cluster": {"worker": ["a:1"]}, "task": {"type": "worker", "index": 4}}),
     "task worker 4 is not in the cluster"),
])
def test_a_bad_tf_config_is_named(monkeypatch, raw, message):
    monkeypatch.setenv("TF_CONFIG", raw)
    with pytest.raises(ValueError, match=message):
        cluster.current()


def test_a_worker_seeing_fewer_gpus_than_given_stops(monkeypatch):
    monkeypatch.setenv(cluster.DEVICES_ENV, "2")
    cluster.check_devices(cluster.Worker(), 2)
    with pytest.raises(ValueError, match="--devices_per_worker=2: worker 0 of 1 sees 1 GPU"):
        cluster.check_devices(cluster.Worker(), 1)
    monkeypatch.delenv(cluster.DEVICES_ENV)
    cluster.check_devices(cluster.Worker(), 0)
