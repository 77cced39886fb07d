#!/usr/bin/env bash
# The embedding-optimizer rows of docs/BENCHMARKS.md's multi-epoch section:
# MMoE on benchmarks/multi_epoch.sh's data (ROWS=1.3M generated rows, 1.04M
# training rows), 6 epochs, one seed, with the row-sparse rule of the tables
# and its learning rate taken from CONFIGS (rule:learning_rate[:reset]).
# Run from the repository root after multi_epoch.sh (it makes the data);
# rerunning skips finished runs.
set -euo pipefail
OUT=${OUT:-bench/embedding_optimizer}
ROWS=${ROWS:-1300000}
MODELS=${MODELS:-mmoe}
CONFIGS=${CONFIGS:-"adagrad:0.05 adagrad:0.5 sgd:1.0 sgd:10.0 adagrad:0.5:epoch"}
DATA=$(python -c "
from absl import flags; flags.FLAGS(['x'])
from benchmarks.model_bench import _dataset; print(_dataset('bench/model_bench', $ROWS))" 2>/dev/null | tail -1)
for cfg in $CONFIGS; do
  IFS=: read -r rule lr reset <<<"$cfg"
  name="${rule}_${lr}${reset:+_$reset}"
  mtlrec-bench --models="$MODELS" --seeds=1 --out="$OUT/$name" --data="$DATA" --epochs=6 --patience=6 \
    --test_each_epoch --embedding_optimizer="$rule" --embedding_learning_rate="$lr" \
    ${reset:+--embedding_reset=$reset} --noexport
done
