"""mtlrec-launch: run mtlrec-train (or mtlrec-tune) on N local workers (MultiWorkerMirroredStrategy).

  mtlrec-launch --workers=2 -- --flagfile=experiments/ple.flags --model_dir=runs/ple2
  mtlrec-launch --workers=2 --max_restarts=3 -- --model=mmoe --data=data/tenrec --epochs=4
  mtlrec-launch --workers=2 --command=tune -- --flagfile=experiments/mmoe_tune.flags --tuner_dir=runs/tune2

Starts N `mtlrec-train` (`--command=tune`: `mtlrec-tune`, every trial
trained by all workers) processes on this machine, each with the TF_CONFIG
of its place in a cluster of loopback ports (worker 0 is the chief: it
alone writes MODEL_DIR). Their output comes back line by line, prefixed
with "[worker i]". When a worker exits non-zero, the others are stopped;
with --max_restarts left, all workers start again and resume from the
chief's last checkpoint, else the launcher exits with that status. Ctrl-C
stops every worker. On a real cluster each host runs the worker command
that this launcher prints, with its own TF_CONFIG (docs/DISTRIBUTED.md).
"""

from __future__ import annotations

import collections
import json
import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time

from absl import flags, logging

from mtlrec import cluster
from mtlrec.cli.common import run

_WORKERS = flags.DEFINE_integer("workers", 2, "Worker processes.", lower_bound=1)
_COMMAND = flags.DEFINE_enum("command", "train", ["train", "tune"], "What each worker runs: mtlrec-train, or "
                              "mtlrec-tune (the chief runs the search, every trial trains on all workers).")
_DEVICES = flags.DEFINE_integer("devices_per_worker", 0, "GPUs per worker: worker i sees GPUs i*G .. i*G+G-1 "
                                "(CUDA_VISIBLE_DEVICES) and stops with an error if it finds fewer; 0: TensorFlow's "
                                "default (all GPUs, or the CPU). Under MultiWorkerMirroredStrategy a CPU-only "
                                "worker is one replica.", lower_bound=0)
flags.DEFINE_alias("gpus_per_worker", "devices_per_worker")
_RESTARTS = flags.DEFINE_integer("max_restarts", 0, "Times to restart all workers after one fails "
                                 "(they resume from the last checkpoint).", lower_bound=0)
_GRACE = flags.DEFINE_float("stop_grace_seconds", 10.0, "After SIGTERM, seconds before SIGKILL.", lower_bound=0)


def free_ports(n: int) -> list[int]:
    """n distinct loopback ports free right now."""
    sockets = [socket.socket() for _ in range(n)]
    try:
        for s in sockets:
            s.bind(("localhost", 0))
        return [s.getsockname()[1] for s in sockets]
    finally:
        for s in sockets:
            s.close()


# A native log line: absl/gRPC's "E0000 00:00:1733.. 123 file.cc:45] ..." or TensorFlow's
# "2026-12-07 05:30:47.237212: E external/...".
NATIVE_LOG_LINE = re.compile(r"^[IWEF]\d{4} \d\d:\d\d:\d+\.\d+\s+\d+ \S+\.(?:cc|cpp|c|h):\d+\] "
                             r"|^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d\.\d+: [IWEF] ")
HELD_LINES = 20


class Cluster:
    """N worker processes, their output pumped to ours, stopped together."""

    def __init__(self, train_args: list[str], workers: int, gpus_per_worker: int, command: str = "train"):
        self.train_args, self.workers, self.gpus, self.command = train_args, workers, gpus_per_worker, command
        self.procs: list[subprocess.Popen] = []
        self.pumps: list[threading.Thread] = []

    def start(self) -> None:
        hosts = [f"localhost:{p}" for p in free_ports(self.workers)]
        for i in range(self.workers):
            env = dict(os.environ, TF_CONFIG=json.dumps(
                {"cluster": {"worker": hosts}, "task": {"type": "worker", "index": i}}))
            if self.gpus:
                env["CUDA_VISIBLE_DEVICES"] = ",".join(str(i * self.gpus + g) for g in range(self.gpus))
                env[cluster.DEVICES_ENV] = str(self.gpus)  # the worker checks it sees them all
            command = [sys.executable, "-m", f"mtlrec.cli.{self.command}", *self.train_args]
            logging.info("worker %d: TF_CONFIG=%s %s", i, env["TF_CONFIG"], " ".join(command))
            proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                    start_new_session=True, text=True, bufsize=1)
            self.procs.append(proc)
            pump = threading.Thread(target=self._pump, args=(i, proc), daemon=True)
            pump.start()
            self.pumps.append(pump)

    @staticmethod
    def _pump(index: int, proc: subprocess.Popen) -> None:
        # gRPC's and TensorFlow's native log lines (a successful run ends with a worker's "E0000 ... Coordination
        # agent is set to ERROR: UNAVAILABLE" as its peer goes away) are held back unless -v 1; a worker that
        # fails shows its last ones, which may say why.
        shown = flags.FLAGS.verbosity >= 1
        held: collections.deque[str] = collections.deque(maxlen=HELD_LINES)
        for line in proc.stdout:
            if not shown and NATIVE_LOG_LINE.match(line):
                held.append(line)
                continue
            sys.stdout.write(f"[worker {index}] {line}")
            sys.stdout.flush()
        if proc.wait() != 0 and held:
            sys.stdout.write(f"[worker {index}] (its last {len(held)} native log lines, held back while it ran)\n")
            sys.stdout.writelines(f"[worker {index}] {line}" for line in held)
            sys.stdout.flush()

    def wait(self) -> dict[int, int]:
        """Until all exit 0 ({}) or some fail: {worker: status} of every worker that has failed by then.

        All of them, not the first: when one worker dies, its peers' collectives fail within
        moments, and the poll may find them all gone; the one killed by a signal is the cause.
        """
        while True:
            codes = [p.poll() for p in self.procs]
            failed = {i: code for i, code in enumerate(codes) if code not in (None, 0)}
            if failed:
                return failed
            if all(code == 0 for code in codes):
                return {}
            time.sleep(0.2)

    def stop(self, grace: float, sig: int = signal.SIGTERM) -> None:
        """Signals every worker's process group, then kills what is left."""
        for p in self.procs:
            if p.poll() is None:
                _signal_group(p, sig)
        deadline = time.time() + grace
        for p in self.procs:
            try:
                p.wait(timeout=max(0.0, deadline - time.time()))
            except subprocess.TimeoutExpired:
                _signal_group(p, signal.SIGKILL)
                p.wait()
        for p in self.procs:  # a worker's own children (prepare's processes), if any
            _signal_group(p, signal.SIGKILL)
        for pump in self.pumps:
            pump.join(timeout=5)


def failure_status(failed: dict[int, int]) -> int:
    """The status the launcher reports for failed workers {worker: status}.

    A death by signal (negative status) before an error exit: a peer's error follows from it.
    """
    return min(failed.values(), key=lambda status: (status > 0, status))


def _signal_group(proc: subprocess.Popen, sig: int) -> None:
    try:
        os.killpg(proc.pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def launch(train_args: list[str], workers: int, gpus_per_worker: int = 0, max_restarts: int = 0,
           grace: float = 10.0, command: str = "train") -> int:
    """Runs the workers (restarting them all up to `max_restarts` times); the exit status.
    `command`: "train" (mtlrec-train) or "tune" (mtlrec-tune) on every worker."""
    attempt = 0
    while True:
        group = Cluster(train_args, workers, gpus_per_worker, command)
        interrupted: list[int] = []

        def on_signal(signum, frame, group=group, interrupted=interrupted):
            interrupted.append(signum)
            group.stop(grace, signal.SIGINT if signum == signal.SIGINT else signal.SIGTERM)

        previous = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            group.start()
            failed = group.wait()
        finally:
            for s, handler in previous.items():
                signal.signal(s, handler)
        if interrupted:
            logging.warning("interrupted: stopped every worker")
            return 130 if interrupted[0] == signal.SIGINT else 143
        if not failed:
            logging.info("all %d workers finished", workers)
            return 0
        for worker, status in failed.items():
            logging.warning("worker %d exited with status %d: stopping the others", worker, status)
        code = failure_status(failed)
        group.stop(grace)
        if attempt >= max_restarts:
            return code if code > 0 else 1
        attempt += 1
        logging.warning("restart %d of %d: all workers start again from the last checkpoint", attempt, max_restarts)


def main(argv):
    train_args = argv[1:]
    if not train_args:
        raise ValueError(f"no mtlrec-{_COMMAND.value} flags: mtlrec-launch --workers=N -- <mtlrec-{_COMMAND.value} "
                         "flags>")
    for arg in train_args:
        if arg.split("=", 1)[0] in ("--worker_hosts", "--task_index", "--devices"):
            raise ValueError(f"{arg}: the launcher sets each worker's place in the cluster (TF_CONFIG); "
                             "use --devices_per_worker for devices")
    return launch(train_args, _WORKERS.value, _DEVICES.value, _RESTARTS.value, _GRACE.value, _COMMAND.value)


def entry_point() -> None:
    run(main)


if __name__ == "__main__":
    entry_point()
