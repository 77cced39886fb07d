#!/usr/bin/env bash
# Measures README's two install commands: packages added, virtualenv size,
# wall time, each in a fresh virtualenv and a fresh clone of this checkout.
#   bash benchmarks/install_size.sh            # both
#   KINDS=user bash benchmarks/install_size.sh # one
set -u
repo=$(cd "$(dirname "$0")/.." && pwd)
for kind in ${KINDS:-user contributor}; do
  d=$(mktemp -d)
  git clone -q "$repo" "$d/mtlrec"
  python3 -m venv "$d/venv"
  # shellcheck disable=SC1091
  . "$d/venv/bin/activate"
  pip install -q --upgrade pip > /dev/null 2>&1
  before=$(pip list 2>/dev/null | tail -n +3 | wc -l)
  spec="."
  [ "$kind" = contributor ] && spec=".[test]"
  start=$(date +%s)
  (cd "$d/mtlrec" && pip install -q --no-cache-dir -e "$spec" > /dev/null 2>&1)
  rc=$?
  end=$(date +%s)
  after=$(pip list 2>/dev/null | tail -n +3 | wc -l)
  echo "$kind: pip install -e '$spec' rc=$rc seconds=$((end - start)) packages_added=$((after - before)) venv_MB=$(du -sm "$d/venv" | cut -f1)"
  deactivate
  rm -rf "$d"
done
