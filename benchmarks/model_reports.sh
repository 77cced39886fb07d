#!/usr/bin/env bash
# The model comparisons of docs/BENCHMARKS.md: every model of the three
# comparison tables, 3 seeds each, on the generated default data
# (experiments/*.flags), then one report per table into docs/reports/.
# Run from the repository root; rerunning skips finished runs.
set -euo pipefail
OUT=${OUT:-bench/default}
mtlrec-bench --models=shared_bottom,omoe,mmoe,esmm,ple,aple,aitm,stem,mmoe_dlen,ple_dlen --seeds=3 --out="$OUT"
R="$OUT/runs"
mtlrec-report "$R/shared_bottom" "$R/mmoe" "$R/esmm" "$R/ple" "$R/aple" --out=docs/reports/aple
mtlrec-report "$R/aitm" "$R/ple" "$R/omoe" "$R/stem" --out=docs/reports/aitm
mtlrec-report "$R/mmoe" "$R/ple" "$R/mmoe_dlen" "$R/ple_dlen" --out=docs/reports/dlen
