#!/usr/bin/env bash
# The multi-epoch table of docs/BENCHMARKS.md: MMoE, PLE, APLE and AITM for
# up to 6 epochs, with and without MEDA's embedding reset, SEEDS seeds each,
# on generated data with realistic id sparsity (benchmarks.model_bench's
# generator: 200k users, 400k items; ROWS=2M rows -> 1.6M training rows,
# about 8 per user and 4 per item). Validation and test AUC per epoch
# (--test_each_epoch); the best epoch is chosen on validation. Run from the
# repository root; rerunning skips finished runs.
set -euo pipefail
OUT=${OUT:-bench/multi_epoch}
ROWS=${ROWS:-2000000}
SEEDS=${SEEDS:-3}
MODELS=${MODELS:-mmoe,ple,aple,aitm}
RESETS=${RESETS:-"none epoch"}
mkdir -p bench/model_bench
DATA=$(python -c "
from absl import flags; flags.FLAGS(['x'])
from benchmarks.model_bench import _dataset; print(_dataset('bench/model_bench', $ROWS))" 2>/dev/null | tail -1)
# Seed by seed across the settings, so that a stopped run leaves whole seeds
# (mtlrec-bench skips the runs finished before).
for seeds in $(seq 1 "$SEEDS"); do
  for reset in $RESETS; do
    mtlrec-bench --models="$MODELS" --seeds="$seeds" --out="$OUT/$reset" --data="$DATA" --epochs=6 --patience=6 \
      --test_each_epoch --embedding_reset="$reset" --noexport
  done
done
python -m benchmarks.multi_epoch_table "$OUT"
