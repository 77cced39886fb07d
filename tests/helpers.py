"""Small helpers shared by the tests."""

import subprocess
import sys

import numpy as np
import pandas as pd

from mtlrec.config import Schema
from mtlrec.data import read_columns


def split_frame(data: str, split: str, schema: Schema) -> pd.DataFrame:
    """A whole split read back through the tf.data reader, as CSV columns."""
    cols: dict[str, list] = {}
    for batch in read_columns(data, split, 4096).as_numpy_iterator():
        for f in schema.features:
            if f.kind == "sequence":
                for j, c in enumerate(f.columns):
                    cols.setdefault(c, []).append(batch[f.name][:, j])
            elif f.kind == "categorical":
                cols.setdefault(f.name, []).append(np.char.decode(batch[f.name].astype(bytes), "utf-8"))
            else:
                cols.setdefault(f.name, []).append(batch[f.name])
        for label in schema.labels:
            cols.setdefault(label.name, []).append(batch[label.name])
    return pd.DataFrame({k: np.concatenate(v) for k, v in cols.items()})


def canonical(df: pd.DataFrame, schema: Schema) -> pd.DataFrame:
    """Rows as stored: ints int64, numbers float32, strings str; sorted."""
    out = {}
    for f in schema.features:
        for c in f.columns:
            if f.kind in ("id", "sequence"):
                out[c] = df[c].astype(np.int64).to_numpy()
            elif f.kind == "numeric":
                out[c] = df[c].astype(np.float32).to_numpy()
            else:
                out[c] = df[c].astype(str).to_numpy()
    for label in schema.labels:
        out[label.name] = df[label.name].astype(np.float32).to_numpy()
    frame = pd.DataFrame(out)
    return frame.sort_values(list(frame.columns)).reset_index(drop=True)


def run_cli(module: str, *args: str, env=None, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", module, *args],
        capture_output=True, text=True, env=env, timeout=timeout,
    )


def valid_features(data: str, rows: int = 16):
    """A batch of input features from the valid split."""
    from mtlrec.config import TaskSpec
    from mtlrec.data import make_dataset

    return next(iter(make_dataset(data, "valid", rows, (TaskSpec("click"),), shuffle=False)))[0]


def assert_keras_round_trip(net, features, path: str) -> None:
    """`.keras` save and load give equal outputs on `features`."""
    import keras

    net.save(path)
    loaded = keras.saving.load_model(path)
    a, b = net(features), loaded(features)
    assert set(a) == set(b)
    for k in a:
        np.testing.assert_allclose(a[k].numpy(), b[k].numpy(), rtol=1e-6, atol=1e-7)


def interrupt_once_at_epoch(monkeypatch, epoch: int) -> list[int]:
    """Makes training raise KeyboardInterrupt once, at the start of `epoch`
    (after its epoch actions, before its first step: where a kill lands);
    returns the list of epochs started, filled as training runs."""
    from mtlrec.training import loop

    original, calls = loop.start_epoch, []

    def start_epoch(run, e):
        original(run, e)
        calls.append(e)
        if e == epoch and calls.count(epoch) == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(loop, "start_epoch", start_epoch)
    return calls
