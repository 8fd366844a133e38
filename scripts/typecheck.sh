#!/usr/bin/env bash
# Type-check kiln with mypy (settings: [tool.mypy] in pyproject.toml).
#
# The source folders are installed under other names (cli/ is `kiln`, store/ is
# `kiln.store`, ...: the package-dir mapping), which mypy cannot follow through an
# editable install. So this lays the package out as it is installed, with symlinks in
# a temporary directory, checks it there and names the checkout's files in what it
# prints. Extra arguments go to mypy. MYPY_CACHE_DIR picks the cache (default
# .mypy_cache in the checkout; give each concurrent run its own).
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
PY=${PYTHON:-python3}
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
mkdir "$work/kiln"
for f in "$repo"/cli/*.py; do ln -s "$f" "$work/kiln/"; done
for p in store lang sandbox registry; do ln -s "$repo/$p" "$work/kiln/$p"; done
cd "$work"
set +e
"$PY" -m mypy --config-file "$repo/pyproject.toml" --cache-dir "${MYPY_CACHE_DIR:-$repo/.mypy_cache}" \
  -p kiln "$@" > "$work/out" 2>&1
rc=$?
set -e
# kiln/store/x.py -> store/x.py, kiln/x.py -> cli/x.py
sed -E -e 's#^kiln/(store|lang|sandbox|registry)/#\1/#' -e 's#^kiln/([^/]+\.py)#cli/\1#' "$work/out"
exit $rc
