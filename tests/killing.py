"""The kill harness of tests/scenarios/test_kill*.py: run a command, SIGKILL it
at a seeded moment, check its output, rerun (see test_kill.py's docstring)."""

import os
import shutil
import signal
import subprocess
import sys
import time

import numpy as np
import psutil

POINTS = int(os.environ.get("MTLREC_KILL_POINTS", 10))
ENV = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")


def run(args, timeout=300):
    return subprocess.run([sys.executable, "-m", *args], capture_output=True, text=True, env=ENV, timeout=timeout)


def kill_at(args, seconds: float) -> tuple[bool, subprocess.CompletedProcess | None]:
    """Starts the command, SIGKILLs it after `seconds`; returns (killed, result if it ended first)."""
    proc = subprocess.Popen([sys.executable, "-m", *args], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            text=True, env=ENV)
    parent = psutil.Process(proc.pid)
    deadline = time.monotonic() + seconds
    children: list = []
    while time.monotonic() < deadline and proc.poll() is None:
        try:
            children = parent.children(recursive=True) or children
        except psutil.NoSuchProcess:
            break
        time.sleep(0.02)
    if proc.poll() is not None:
        return False, subprocess.CompletedProcess(proc.args, proc.returncode, "", proc.stderr.read())
    try:
        children = parent.children(recursive=True) or children
    except psutil.NoSuchProcess:
        pass
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    proc.stderr.close()
    _, alive = psutil.wait_procs(children, timeout=10)
    assert not alive, f"left running after the kill: {[p.pid for p in alive]}"
    return True, None


def chain(args, check, output, seed: int, low: float = 0.1, timing_args=None):
    """A clean timing run (of `timing_args`, on an output of their own, or of
    `args`, whose output is then removed), POINTS killed runs into one output
    starting from nothing, then a final rerun."""
    t0 = time.monotonic()
    res = run(timing_args or args)
    duration = time.monotonic() - t0
    assert res.returncode == 0, res.stderr[-3000:]
    if timing_args is None:
        check(final=True)
        if output.is_dir():
            shutil.rmtree(output)
        else:
            output.unlink()
    rng = np.random.default_rng(seed)
    kills = 0
    for at in rng.uniform(low, 1.0, POINTS) * duration:
        killed, res = kill_at(args, at)
        kills += killed
        if not killed:
            assert res.returncode == 0, res.stderr[-3000:]
        check(final=not killed)
    res = run(args)
    assert res.returncode == 0, res.stderr[-3000:]
    check(final=True)
    assert kills >= POINTS // 2, f"only {kills} of {POINTS} runs were killed before they ended"
    return kills
