#!/usr/bin/env bash
# Set up (scripts/setup-debian.sh) and run the whole test suite: lint, then pytest,
# including the slow group that builds the real packages in recipes/ from source.
# Extra arguments go to pytest (e.g. `-m "not slow"` to skip the package builds).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
PY=${PYTHON:-python3}
echo "== ruff"
"$PY" -m ruff check .
echo "== pytest"
exec "$PY" -m pytest -q -p no:cacheprovider "$@"
