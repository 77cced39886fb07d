#!/usr/bin/env bash
# mtlrec against DeepCTR 0.9.4 at DeepCTR's default sizes, runs alternated.
#
#   bash benchmarks/peers/run.sh                       # 3 rounds, 2M generated rows
#   ROUNDS=1 MODELS="ple" bash benchmarks/peers/run.sh
#   VARIANTS="float32 mixed_bfloat16" bash benchmarks/peers/run.sh   # mtlrec also with --mixed_precision
#
# VARIANTS: how mtlrec's side computes, each against the same DeepCTR run
# (float32): float32, mixed_bfloat16 or mixed_float16, with an optional
# +jit (--jit_compile), e.g. "float32 float32+jit mixed_bfloat16".
# DeepCTR goes into its own virtualenv (OUT/deepctr-venv: tensorflow-cpu
# 2.15.1, deepctr 0.9.4, scikit-learn; 0.9.3 does not install on Python 3.11),
# never into mtlrec's. Both train one epoch on the same generated rows
# (benchmarks.model_bench's generator: 200k users, 400k items), tasks
# click+like, batch 4096, Adam 1e-3, embedding 16, embedding L2 1e-5, no
# dropout. DeepCTR reads numpy arrays in memory; mtlrec reads its TFRecords
# (mtlrec-train, whole-epoch rate including the first step). Not part of CI.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROUNDS=${ROUNDS:-3}
ROWS=${ROWS:-2000000}
MODELS=${MODELS:-"shared_bottom esmm mmoe ple"}
VARIANTS=${VARIANTS:-float32}
OUT=${OUT:-bench/peers}
PY=${PYTHON:-python}
mkdir -p "$OUT"
if ! DATA=$($PY -c "
from absl import flags; flags.FLAGS(['x'])
from benchmarks.model_bench import _dataset; print(_dataset('$OUT', $ROWS))" 2>"$OUT/data.log" | tail -1); then
  echo "benchmarks/peers/run.sh: generating the rows with $PY failed (is mtlrec's environment active?):" >&2
  tail -5 "$OUT/data.log" >&2
  exit 1
fi
VENV="$OUT/deepctr-venv"
if [ ! -x "$VENV/bin/python" ]; then
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q "deepctr==0.9.4" "tensorflow-cpu==2.15.1" "scikit-learn" "numpy<2"
fi
ROWS_NPZ="$OUT/rows-$ROWS.npz"
[ -f "$ROWS_NPZ" ] || TF_CPP_MIN_LOG_LEVEL=3 $PY -m benchmarks.peers.export_rows --data="$DATA" --out="$ROWS_NPZ"

sizes() {
  case "$1" in
    shared_bottom) echo "--bottom_units=256,128 --tower_units=64" ;;
    esmm) echo "--tower_units=256,128,64" ;;
    mmoe) echo "--num_experts=3 --expert_units=256,128 --tower_units=64" ;;
    ple) echo "--num_task_experts=1 --num_shared_experts=1 --num_levels=2 --expert_units=256 --tower_units=64" ;;
  esac
}
RESULTS="$OUT/results.jsonl"
: > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for m in $MODELS; do
    TF_CPP_MIN_LOG_LEVEL=3 "$VENV/bin/python" benchmarks/peers/deepctr_run.py --rows="$ROWS_NPZ" --model="$m" \
      --seed="$round" 2>/dev/null | tail -1 | tee -a "$RESULTS"
    for v in $VARIANTS; do
      policy=${v%+jit}
      jit=--nojit_compile
      [ "$policy" != "$v" ] && jit=--jit_compile
      dir="$OUT/mtlrec/$m-$v-$round"
      # shellcheck disable=SC2046
      TF_CPP_MIN_LOG_LEVEL=3 $PY -m mtlrec.cli.train --data="$DATA" --model="$m" --model_dir="$dir" --overwrite \
        --tasks=click,like --epochs=1 --batch_size=4096 --learning_rate=0.001 --embedding_dim=16 \
        --embedding_l2=0.00001 --dropout=0 --seed="$round" --noexport --notensorboard --verbose=2 $(sizes "$m") \
        --mixed_precision="$policy" $jit > "$OUT/mtlrec-$m-$v-$round.log" 2>&1
      $PY - "$dir/metrics.json" "$m" "$v" <<'PY' | tee -a "$RESULTS"
import json, sys
m = json.load(open(sys.argv[1]))
print(json.dumps({"library": "mtlrec", "model": sys.argv[2], "variant": sys.argv[3],
                  "epoch_examples_per_sec": m["train_examples_per_sec"],
                  "test_auc": {t: v["auc"] for t, v in m["test"].items() if isinstance(v, dict)}}))
PY
    done
  done
done
$PY -m benchmarks.peers.table "$RESULTS"
