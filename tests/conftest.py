"""Shared test setup: quiet TensorFlow, 2 logical CPU devices, small datasets."""

import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")  # not even the CUDA factories' E lines

import numpy as np
import pytest

from mtlrec.config import tenrec_schema
from mtlrec.pipelines import synthetic
from mtlrec.pipelines.prepare import PrepareConfig, prepare


def pytest_configure(config):
    # MirroredStrategy tests need 2 logical CPU devices, set before TF starts.
    import tensorflow as tf

    cpus = tf.config.list_physical_devices("CPU")
    try:
        tf.config.set_logical_device_configuration(
            cpus[0], [tf.config.LogicalDeviceConfiguration()] * 2
        )
    except RuntimeError:
        pass  # already initialised


# Test files by their time on 2 cores, longest first (measured with
# `python -m pytest --durations=0`, 2026-12-02). xdist hands each of its
# two workers whole files (`--dist loadfile`); by default it orders them by
# how many tests they hold, which sent test_kill.py (5 tests, ~6 min) out
# last and left one worker idle for minutes: 14:49 against 13:17 in this order. Longest
# first (`--no-loadscope-reorder` keeps this order) lets the short files
# fill in at the end. Files not listed keep their place after these.
LONGEST_FIRST = ("test_kill.py", "test_distributed.py", "test_training.py", "test_readme_walk.py", "test_task_stopping.py",
                 "test_report.py", "test_export.py", "test_tuning.py", "test_first_hour.py", "test_daily.py",
                 "test_multi_epoch.py", "test_fusion.py", "test_reliability.py", "test_trust2.py",
                 "test_balancing.py", "test_packaging.py", "test_parquet.py")


def pytest_collection_modifyitems(session, config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: a file's own order stays


@pytest.fixture(autouse=True)
def _seed():
    import keras

    keras.utils.set_random_seed(1234)
    np.random.seed(1234)


@pytest.fixture(scope="session")
def tenrec_csv(tmp_path_factory):
    """A 6,000-row generated Tenrec CSV."""
    path = tmp_path_factory.mktemp("csv") / "tenrec.csv"
    return synthetic.write_csv(str(path), 6000, seed=3)


@pytest.fixture(scope="session")
def small_dataset(tmp_path_factory):
    """20k generated rows, prepared (the learning tests use larger data)."""
    out = str(tmp_path_factory.mktemp("data") / "ds")
    prepare(PrepareConfig(output=out, schema=tenrec_schema(), synthetic_rows=20_000, seed=1))
    return out


@pytest.fixture(scope="session")
def learn_dataset(tmp_path_factory):
    """100k generated rows for the learning tests."""
    out = str(tmp_path_factory.mktemp("learn") / "ds")
    prepare(PrepareConfig(output=out, schema=tenrec_schema(), synthetic_rows=100_000, seed=7))
    return out
