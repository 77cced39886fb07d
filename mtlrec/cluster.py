"""Which worker this process is, from `TF_CONFIG` (or --worker_hosts/--task_index).

`TF_CONFIG` is how TensorFlow workers learn their cluster: Kubernetes
operators (TFJob), Vertex AI and `mtlrec-launch` set it, e.g.
`{"cluster": {"worker": ["h1:2222", "h2:2222"]}, "task": {"type": "worker", "index": 0}}`.
With more than one worker mtlrec-train runs under
`tf.distribute.MultiWorkerMirroredStrategy`; worker 0 (or a `chief` task,
when the cluster names one) is the chief, the only one that writes.
No TensorFlow import here: the launcher and help use it.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Sequence

# Set by `mtlrec-launch --devices_per_worker=G`: the GPUs each worker must see.
DEVICES_ENV = "MTLREC_DEVICES_PER_WORKER"


@dataclasses.dataclass(frozen=True)
class Worker:
    index: int = 0  # position among all workers (a chief task counts first)
    count: int = 1

    @property
    def is_chief(self) -> bool:
        return self.index == 0

    @property
    def multi(self) -> bool:
        return self.count > 1

    def __str__(self) -> str:
        return f"worker {self.index} of {self.count}"


def tf_config_from_hosts(hosts: Sequence[str], index: int) -> str:
    """The TF_CONFIG of worker `index` of `hosts` ("host:port" each)."""
    if not 0 <= index < len(hosts):
        raise ValueError(f"--task_index={index}: expected 0 .. {len(hosts) - 1} for {len(hosts)} --worker_hosts")
    for host in hosts:
        name, _, port = host.rpartition(":")
        if not name or not port.isdigit():
            raise ValueError(f"--worker_hosts: {host!r} is not host:port")
    return json.dumps({"cluster": {"worker": list(hosts)}, "task": {"type": "worker", "index": index}})


def current() -> Worker:
    """This process in its cluster (one worker alone when TF_CONFIG is unset)."""
    raw = os.environ.get("TF_CONFIG")
    if not raw:
        return Worker()
    try:
        config = json.loads(raw)
        cluster, task = config["cluster"], config.get("task", {})
        chiefs, workers = list(cluster.get("chief", [])), list(cluster.get("worker", []))
        kind, index = task["type"], int(task["index"])
    except (ValueError, KeyError, TypeError) as e:
        raise ValueError(f"TF_CONFIG: expected {{'cluster': {{'worker': [...]}}, 'task': {{'type', 'index'}}}}; "
                         f"{type(e).__name__}: {e}") from None
    other = set(cluster) - {"chief", "worker"}
    if other:
        raise ValueError(f"TF_CONFIG: mtlrec trains on workers (and a chief) only; the cluster also names "
                         f"{sorted(other)} (parameter servers are not supported: docs/DISTRIBUTED.md)")
    if kind not in ("chief", "worker") or not 0 <= index < len(cluster.get(kind, [])):
        raise ValueError(f"TF_CONFIG: task {kind} {index} is not in the cluster")
    position = index if kind == "chief" else len(chiefs) + index
    return Worker(position, len(chiefs) + len(workers))


def check_devices(worker: Worker, gpus_seen: int) -> None:
    """Stops a worker that sees fewer GPUs than the launcher gave it
    (`DEVICES_ENV`), instead of training on fewer replicas than asked."""
    raw = os.environ.get(DEVICES_ENV)
    if not raw:
        return
    wanted = int(raw)
    if gpus_seen < wanted:
        raise ValueError(f"--devices_per_worker={wanted}: {worker} sees {gpus_seen} GPU(s) "
                         f"(CUDA_VISIBLE_DEVICES={os.environ.get('CUDA_VISIBLE_DEVICES', '')!r}); expected {wanted}. "
                         "Lower --devices_per_worker, or run on a host with that many GPUs per worker")
