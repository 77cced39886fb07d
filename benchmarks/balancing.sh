#!/usr/bin/env bash
# The loss-balancing table of docs/BENCHMARKS.md: MMoE and PLE under each
# --loss_balancing rule, 3 seeds each, on the generated default data
# (experiments/*.flags: click, like, share; 200k rows; up to 4 epochs), then
# one report into docs/reports/balancing. Run from the repository root;
# rerunning skips finished runs.
set -euo pipefail
OUT=${OUT:-bench/balancing}
# ple_schedule: the auxiliary tasks fade, 0.998 per step (about 0.53 after 4 epochs of 78 steps).
declare -A EXTRA=([ple_schedule]="--loss_weight_decay=like=0.998,share=0.998")
for method in fixed ple_schedule uncertainty dwa gradnorm pcgrad; do
  mtlrec-bench --models=mmoe,ple --seeds=3 --out="$OUT/$method" --loss_balancing="$method" ${EXTRA[$method]:-}
done
runs=()
for method in fixed ple_schedule uncertainty dwa gradnorm pcgrad; do
  runs+=("$OUT/$method/runs/mmoe" "$OUT/$method/runs/ple")
done
mtlrec-report "${runs[@]}" --out=docs/reports/balancing
