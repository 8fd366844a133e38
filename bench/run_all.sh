#!/usr/bin/env bash
# Run every benchmark once, side by side with its anchor, and keep the output in
# bench/out/<name>.txt (what bench/RESULTS.md summarises). Needs what
# scripts/setup-debian.sh installs; takes about 15 minutes on 2 cores. Run it on a quiet
# machine: the figures are wall-clock and the anchors run in the same session.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh >/dev/null
mkdir -p bench/out
PY=${PYTHON:-python3}
unset PYTHONDONTWRITEBYTECODE
run() { local name=$1; shift; echo "== $name: $*"; "$PY" "$@" 2>&1 | tee "bench/out/$name.txt"; }
run nar      bench/bench_nar.py
run ingest   bench/bench_ingest.py
run sandbox  bench/bench_sandbox.py
run builds   bench/bench_builds.py --n 200 --reps 7
run eval     bench/bench_eval.py
run registry bench/bench_registry.py
