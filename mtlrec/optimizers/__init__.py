"""Optimizers: `LazyAdam` (row-sparse embedding updates, flat dense moments)."""

from mtlrec.optimizers.lazy_adam import LazyAdam, reset_rows_state
from mtlrec.optimizers.row_sparse import SPARSE_RULES, is_row_sparse, mark_row_sparse

__all__ = ["SPARSE_RULES", "LazyAdam", "is_row_sparse", "mark_row_sparse", "reset_rows_state"]
