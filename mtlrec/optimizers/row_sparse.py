"""Which variables are row-sparse: embedding tables read by gathers, whose
gradients are `tf.IndexedSlices` and whose optimizer state LazyAdam keeps
per row (the rules those rows may get: `SPARSE_RULES`)."""

from __future__ import annotations

SPARSE_RULES = ("adam", "adagrad", "sgd")


def mark_row_sparse(variable) -> None:
    """Marks `variable` (an embedding table read by gathers) for LazyAdam's
    row-sparse update: its own moments, touched only at the gradient's rows.
    Unmarked variables share the flat dense group, where a `tf.IndexedSlices`
    gradient is applied as Keras Adam applies it (densified). Call before
    the optimizer is built."""
    variable.mtlrec_row_sparse = True


def is_row_sparse(variable) -> bool:
    return bool(getattr(variable, "mtlrec_row_sparse", False))
