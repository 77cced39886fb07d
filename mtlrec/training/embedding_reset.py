"""MEDA's embedding reset, for multi-epoch training of sparse-id models.

Deep CTR models overfit after one epoch, and the overfitting sits in the
embedding tables (Zhang et al., CIKM 2022; Fan et al., "Multi-Epoch
learning with Data Augmentation for Deep Click-Through Rate Prediction",
2024). MEDA re-initializes the embedding tables at the start of every epoch
after the first while the dense layers keep training, so the dense layers
see each example with embeddings that have not memorised it yet. The
tables' optimizer state goes with them: in the measurement that proposed
this option (DeepCTR's MMoE), re-drawn tables that kept their old Adam
moments lost the gain. Figures on mtlrec's models: docs/BENCHMARKS.md.
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
from absl import logging

from mtlrec.layers.embedding import EmbeddingTable
from mtlrec.optimizers import reset_rows_state

RESETS = ("none", "epoch")


def embedding_tables(network: keras.Model) -> list[EmbeddingTable]:
    """Every vocabulary-sized table of the model (shared, AME task and shared
    sets, STEM's per-task sets, the low-rank variant's shared tables), in a
    fixed order. The low-rank variant's small per-task maps are dense layers
    and are not tables."""
    tables = [layer for layer in network._flatten_layers(include_self=False, recursive=True)
              if isinstance(layer, EmbeddingTable)]
    return sorted(tables, key=lambda t: t.embeddings.path)


def reset_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of table `index`'s draw at the start of `epoch`: the same on a
    resumed run, different per table and epoch."""
    return (seed * 1_000_003 + epoch * 10_007 + index * 101) % (2**31 - 1)


def reset_embeddings(network: keras.Model, optimizer, seed: int, epoch: int, keep: Sequence = ()) -> int:
    """Re-initializes every embedding table and zeroes its optimizer slots,
    but those whose variable is in `keep` (frozen tasks' own tables);
    returns the number of tables reset."""
    tables = embedding_tables(network)
    kept = {id(v) for v in keep}
    reset = 0
    for i, table in enumerate(tables):
        if id(table.embeddings) in kept:
            continue
        reset += 1
        table.reinitialize(reset_seed(seed, epoch, i))
        if optimizer is not None and optimizer.built:
            reset_rows_state(optimizer, table.embeddings)
    return reset


def settle_decay(run) -> int:
    """Under `--embedding_decay`, applies to every row of every trained
    table the decay it still owes (`LazyAdam.settle_rows`), so validation,
    the best weights and the checkpoint see each row as decayed at every
    step; returns the number of tables settled. Frozen tasks' own tables
    stay as they were frozen."""
    from mtlrec.training.task_stopping import frozen_variables

    if not run.config.embedding_decay:
        return 0
    kept = {id(v) for v in frozen_variables(run)}
    settled = 0
    for table in embedding_tables(run.network):
        if id(table.embeddings) not in kept:
            run.trainer.optimizer.settle_rows(table.embeddings)
            settled += 1
    return settled


def before_epoch(run, epoch: int) -> None:
    """Before epoch `epoch` (from 1) of `run` (a `mtlrec.training.run.Run`):
    under `--embedding_reset=epoch`, from the second epoch, the reset,
    seeded by the run seed and the epoch (a resumed run draws the same
    tables); frozen tasks' own tables stay."""
    from mtlrec.training.task_stopping import frozen_variables

    if run.config.embedding_reset == "epoch" and epoch >= 2:
        n = reset_embeddings(run.network, run.trainer.optimizer, run.config.seed, epoch, keep=frozen_variables(run))
        logging.info("epoch %d: re-initialized %d embedding tables and their optimizer slots", epoch, n)
