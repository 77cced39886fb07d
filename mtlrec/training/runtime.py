"""Where training runs: TensorFlow's op threads, logical CPUs, and the
distribution strategy (one per device set and process)."""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import Any

import tensorflow as tf
from absl import logging

from mtlrec import cluster

# Keyed by (device type, index): "/cpu:0" and ".../device:CPU:0" are one device.
_STRATEGIES: dict[Any, tf.distribute.Strategy] = {}


def split_cpu(devices: Sequence[str]) -> None:
    """Makes `/cpu:0 .. /cpu:N-1` exist when `devices` names CPUs beyond the
    first (MirroredStrategy over logical CPUs, to try multi-device training
    on a machine without GPUs). Must run before TensorFlow starts its
    runtime; later it changes nothing and `make_strategy` names what exists."""
    specs = [tf.DeviceSpec.from_string(d) for d in devices]
    wanted = 1 + max([s.device_index or 0 for s in specs if (s.device_type or "CPU").upper() == "CPU"], default=0)
    cpu = tf.config.list_physical_devices("CPU")[0]
    if wanted > 1 and len(tf.config.get_logical_device_configuration(cpu) or [None]) < wanted:
        try:
            tf.config.set_logical_device_configuration(cpu, [tf.config.LogicalDeviceConfiguration()] * wanted)
        except RuntimeError:
            pass  # the runtime has started: make_strategy reports the missing devices


_CHOSEN = False  # set_op_threads has run (an explicit 0 is TensorFlow's choice, not "unset")
AUTO_SINGLE_THREAD_CORES = 8  # hosts up to this many cores run each op on one thread by default


def host_cores() -> int:
    """CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def set_op_threads(intra: int = -1, inter: int = 0) -> dict[str, int]:
    """TensorFlow's thread pools, set before its runtime starts.

    `intra`: threads one op may split its work over; -1 (auto) is 1 on a host
    of at most `AUTO_SINGLE_THREAD_CORES` cores and TensorFlow's own choice
    above; 0 is TensorFlow's choice (all cores). `inter`: ops run at once; 0
    is TensorFlow's choice (the cores). The models' ops are small (batch
    2048-4096, widths 16-256): on 2 cores, one thread per op and two ops at
    once trained APLE 1.45x, STEM 1.32x and MMoE 1.15-1.38x faster than
    TensorFlow's default, which splits every op over both cores (docs/BENCHMARKS.md, issue 12).

    Once the runtime has started (any TensorFlow op ran), the pools stay as
    they are and this only reports them. Returns `{"intra": .., "inter": ..}`
    as they are now (0: TensorFlow's choice)."""
    global _CHOSEN
    _CHOSEN = True
    if intra < -1 or inter < 0:
        raise ValueError(f"--intra_op_threads must be >= -1 and --inter_op_threads >= 0. "
                         f"Received: {intra}, {inter}")
    if intra == -1:
        intra = 1 if host_cores() <= AUTO_SINGLE_THREAD_CORES else 0
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        logging.info("TensorFlow has started: its op threads stay at %s", op_threads())
    return op_threads()


def threads_chosen() -> bool:
    """Whether `set_op_threads` ran in this process (mtlrec-train calls it
    with its flags; `train()` applies the default otherwise)."""
    return _CHOSEN


def op_threads() -> dict[str, int]:
    """TensorFlow's op thread settings (0: its own choice)."""
    return {"intra": tf.config.threading.get_intra_op_parallelism_threads(),
            "inter": tf.config.threading.get_inter_op_parallelism_threads()}


def make_strategy(devices: Sequence[str] = ()) -> tf.distribute.Strategy:
    """MultiWorkerMirroredStrategy when TF_CONFIG names several workers
    (create it before TensorFlow runs anything: mtlrec-train does so first);
    else MirroredStrategy over the given devices, or over all GPUs when
    there are several; the default (single-device) strategy otherwise.

    One strategy per device set and process: a second MirroredStrategy over
    the same devices reuses collective instance keys, and its all-reduces
    then meet the first one's (seen as "Shape mismatch in the collective
    instance" when a tuner trains several trials in one process).
    """
    if cluster.current().multi:
        if devices:
            raise ValueError("--devices: under multi-worker training (TF_CONFIG) each worker uses all its GPUs; "
                             "choose them with CUDA_VISIBLE_DEVICES instead")
        if "multi_worker" not in _STRATEGIES:
            cluster.check_devices(cluster.current(), len(tf.config.list_physical_devices("GPU")))
            _STRATEGIES["multi_worker"] = tf.distribute.MultiWorkerMirroredStrategy()
        return _STRATEGIES["multi_worker"]
    if not devices and len(tf.config.list_logical_devices("GPU")) > 1:
        devices = tuple(d.name for d in tf.config.list_logical_devices("GPU"))
    if not devices:
        return tf.distribute.get_strategy()
    specs = [tf.DeviceSpec.from_string(d) for d in devices]
    key = tuple(sorted(f"{(s.device_type or 'CPU').upper()}:{s.device_index or 0}" for s in specs))
    have = sorted(f"{(s.device_type).upper()}:{s.device_index}" for s in
                  (tf.DeviceSpec.from_string(d.name) for d in tf.config.list_logical_devices()))
    missing = [d for d, k in zip(devices, key) if k not in have]
    if missing:  # MirroredStrategy would wait for them forever
        raise ValueError(f"--devices={','.join(devices)}: no device {', '.join(missing)} here; this process has "
                         f"{', '.join(have)}")
    if key not in _STRATEGIES:
        _STRATEGIES[key] = tf.distribute.MirroredStrategy(list(devices))
    return _STRATEGIES[key]
