#!/usr/bin/env bash
# The multi-epoch table of docs/BENCHMARKS.md: MMoE, PLE, APLE and AITM for
# up to 6 epochs under each setting of SETTINGS, SEEDS seeds each, on
# generated data with realistic id sparsity (benchmarks.model_bench's
# generator: 200k users, 400k items; ROWS=1.3M rows -> 1.04M training rows).
# Validation and test AUC per epoch (--test_each_epoch); the best epoch is
# chosen on validation; cold-start rows (test rows whose user or item never
# occurs in training) are scored by benchmarks.cold_start. Run from the
# repository root; rerunning skips finished runs and resumes interrupted ones.
#
# Settings: none (plain), epoch (MEDA's --embedding_reset=epoch), oov
# (--oov_dropout=0.1), task (--task_patience=1), adagrad (row-wise Adagrad
# on the tables, --embedding_learning_rate=0.5; SETTINGS=adagrad), recipe
# (experiments/sparse_ids.flags as it stands), and their combinations
# epoch_oov, epoch_task, epoch_oov_task. TASK_MODELS: the models the task*
# settings run on (per-task stopping is the AITM question).
set -euo pipefail
OUT=${OUT:-bench/multi_epoch}
ROWS=${ROWS:-1300000}
SEEDS=${SEEDS:-3}
MODELS=${MODELS:-mmoe,ple,aple,aitm}
TASK_MODELS=${TASK_MODELS:-aitm}
SETTINGS=${SETTINGS:-"none epoch epoch_oov epoch_task oov task"}
# DATA: a prepared dataset to run on instead (e.g. a time-ordered log prepared with --order_by=input).
if [ -z "${DATA:-}" ]; then
  mkdir -p bench/model_bench
  DATA=$(python -c "
from absl import flags; flags.FLAGS(['x'])
from benchmarks.model_bench import _dataset; print(_dataset('bench/model_bench', $ROWS))" 2>/dev/null | tail -1)
fi

setting_flags() {
  local flags=() part
  for part in ${1//_/ }; do
    case $part in
      none) flags+=(--embedding_reset=none) ;;
      epoch) flags+=(--embedding_reset=epoch) ;;
      oov) flags+=(--oov_dropout=0.1) ;;
      task) flags+=(--task_patience=1) ;;
      adagrad) flags+=(--embedding_optimizer=adagrad --embedding_learning_rate=0.5) ;;
      recipe) flags+=(--flagfile=experiments/sparse_ids.flags) ;;
      *) echo "unknown setting part: $part (in $1)" >&2; exit 2 ;;
    esac
  done
  echo "${flags[@]}"
}

# Seed by seed across the settings, so that a stopped run leaves whole seeds.
for seeds in $(seq 1 "$SEEDS"); do
  for setting in $SETTINGS; do
    models=$MODELS
    [[ $setting == *task* ]] && models=$TASK_MODELS
    # shellcheck disable=SC2046
    mtlrec-bench --models="$models" --seeds="$seeds" --out="$OUT/$setting" --data="$DATA" --epochs=6 --patience=6 \
      --test_each_epoch $(setting_flags "$setting") --noexport
  done
done
python -m benchmarks.cold_start "$OUT"
python -m benchmarks.multi_epoch_table "$OUT"
