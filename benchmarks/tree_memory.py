"""Peak memory of a command's process tree, sampled from outside while it runs."""

from __future__ import annotations

import time

import psutil


def watch(proc: psutil.Popen, every: float = 0.2, timeline_every: float = 10.0) -> dict:
    """Waits for `proc`, sampling it and its children every `every` s:
    `wall_s`, `tree_peak_pss` (summed PSS: forked workers' shared pages
    counted once), `single_peak_rss` (bytes) and `timeline` ([seconds, tree
    PSS MB] every `timeline_every` s)."""
    tree_peak = single_peak = 0
    timeline: list[list[float]] = []
    start = time.perf_counter()
    while proc.poll() is None:
        try:
            info = [p.memory_full_info() for p in (proc, *proc.children(recursive=True))]
            tree = sum(i.pss for i in info)
            tree_peak = max(tree_peak, tree)
            single_peak = max(single_peak, max(i.rss for i in info))
            now = time.perf_counter() - start
            if not timeline or now - timeline[-1][0] >= timeline_every:
                timeline.append([round(now), round(tree / 2**20)])
        except psutil.Error:
            pass
        time.sleep(every)
    return {"wall_s": time.perf_counter() - start, "tree_peak_pss": tree_peak, "single_peak_rss": single_peak,
            "timeline": timeline}
