#!/usr/bin/env bash
# Set up (scripts/setup-debian.sh) and run the whole test suite: lint, type check, then pytest,
# including the slow group that builds the real packages in recipes/ from source.
# Extra arguments go to pytest (e.g. `-m "not slow"` to skip the package builds).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh
PY=${PYTHON:-python3}
# A hashed source mirror with the toolchain's .debs and the sample packages' sources
# (idempotent; a few seconds when it is already filled). The slow tests then build
# from it; without it they fetch from the machine's Debian archive.
export KILN_MIRROR=${KILN_MIRROR:-/var/cache/kiln-mirror}
echo "== source mirror $KILN_MIRROR"
"$PY" tests/fixtures/fill-mirror.py "$KILN_MIRROR" >/dev/null
export KILN_SOURCE_MIRRORS=${KILN_SOURCE_MIRRORS:-$KILN_MIRROR}
echo "== ruff"
"$PY" -m ruff check .
echo "== mypy"
PYTHON="$PY" bash scripts/typecheck.sh
echo "== pytest"
# The tests start thousands of `python -m kiln` processes. Where PYTHONDONTWRITEBYTECODE is
# set (as on the machine this was measured on), none keeps the byte code it compiles, so
# each compiled kiln's modules again (~0.13 s of a ~0.33 s start): compile them once here.
# (compileall writes whatever that variable says; a stale .pyc is ignored by its mtime.)
"$PY" -m compileall -q -j 0 cli store lang sandbox registry
# -n: one pytest worker per CPU, 2 to 8 (at least 2: most tests wait on the processes
# they start; at most 8: each builds packages and holds a few hundred MB), whole files to
# a worker (--dist loadfile) so a module's fixture (a built package, a served registry)
# is made once; KILN_TEST_WORKERS=N chooses, `-n 0` after the command runs in one process.
workers=${KILN_TEST_WORKERS:-}
if [ -z "$workers" ]; then
  workers=$(nproc)
  [ "$workers" -ge 2 ] || workers=2
  [ "$workers" -le 8 ] || workers=8
fi
# -rs: every skip is listed with its reason (CI installs what the tests need: a skip there
# means a check did not run)
# --durations: the slowest tests, to keep the suite inside CI's 30 minutes
exec "$PY" -m pytest -q -rs -p no:cacheprovider --durations=25 -n "$workers" --dist loadfile "$@"
