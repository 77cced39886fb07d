#!/usr/bin/env bash
# Per-task early stopping on AITM, on the generated default data (200k rows,
# where AITM's tasks peak at different epochs): SEEDS seeds each of
#   plain6: 6 epochs, one best epoch on the validation AUC mean (--patience=6)
#   task6:  the same with --task_patience=1
#   base:   experiments/base.flags as it is (4 epochs, --patience=1)
#   task6p2: 6 epochs with --task_patience=2
# Run from the repository root; rerunning skips finished runs.
set -euo pipefail
OUT=${OUT:-bench/task_stopping}
SEEDS=${SEEDS:-3}
MODELS=${MODELS:-aitm}
for seeds in $(seq 1 "$SEEDS"); do
  mtlrec-bench --models="$MODELS" --seeds="$seeds" --out="$OUT/base" --test_each_epoch --noexport
  mtlrec-bench --models="$MODELS" --seeds="$seeds" --out="$OUT/plain6" --epochs=6 --patience=6 --test_each_epoch --noexport
  mtlrec-bench --models="$MODELS" --seeds="$seeds" --out="$OUT/task6" --epochs=6 --patience=6 --task_patience=1 \
    --test_each_epoch --noexport
  mtlrec-bench --models="$MODELS" --seeds="$seeds" --out="$OUT/task6p2" --epochs=6 --patience=6 --task_patience=2 \
    --test_each_epoch --noexport
done
python -m benchmarks.multi_epoch_table "$OUT" plain6
