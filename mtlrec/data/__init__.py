"""Data: the record format, manifests and the tf.data input pipeline.

`make_dataset` and friends import TensorFlow; they load lazily so that
`mtlrec.data.records` stays importable in TF-free worker processes.
"""

from typing import Any

_LAZY = {
    "make_dataset": "mtlrec.data.dataset",
    "read_columns": "mtlrec.data.dataset",
    "Manifest": "mtlrec.data.manifest",
    "load_manifest": "mtlrec.data.manifest",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mtlrec.data' has no attribute {name!r}")
