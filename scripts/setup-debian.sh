#!/usr/bin/env bash
# Install what kiln and its tests need on a fresh Debian 12 machine (run as root, or
# with sudo available). Idempotent. Used by scripts/test.sh, scripts/demo.sh and CI.
# `--demo`: only what the main job (scripts/demo.sh) needs, so that a user without
# root or sudo can run it where bubblewrap is installed.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
# (nginx and friends live in /usr/sbin, which is not on a normal user's PATH)
PATH=$PATH:/usr/sbin:/sbin

tools="bwrap:bubblewrap nix-store:nix-bin zstd:zstd nginx:nginx-light wrk:wrk busybox:busybox-static
       git:git /usr/bin/time:time curl:curl disorderfs:disorderfs diffoscope:diffoscope-minimal faketime:faketime
       gpg:gpg gpgv:gpgv"
[ "${1:-}" = --demo ] && tools="bwrap:bubblewrap"

as_root() {
  if [ "$(id -u)" = 0 ]; then "$@"
  elif command -v sudo >/dev/null 2>&1; then sudo "$@"
  else
    echo "setup: needs root to run: $*" >&2
    echo "setup: run this script as root (or install sudo), or run that command as root first" >&2
    exit 1
  fi
}

need=()
for cmd in $tools; do
  bin=${cmd%%:*} pkg=${cmd##*:}
  command -v "$bin" >/dev/null 2>&1 || [ -x "$bin" ] || need+=("$pkg")
done
if [ ${#need[@]} -gt 0 ]; then
  echo "setup: installing ${need[*]}"
  as_root apt-get update -qq
  as_root apt-get install -y -qq "${need[@]}" >/dev/null
fi
# apt indexes are read by `kiln lock debian` and name the Debian archive that
# `debian:` source URLs resolve against.
ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1 || as_root apt-get update -qq

PY=${PYTHON:-python3}
# (Re)install when kiln is missing, when the installed kiln is another checkout's (an
# editable install elsewhere would make the tests run that code), or on request.
here=$(pwd -P)
installed=$("$PY" -c 'import kiln, os; print(os.path.dirname(os.path.dirname(os.path.realpath(kiln.__file__))))' 2>/dev/null || true)
if [ "$installed" != "$here" ] || ! "$PY" -c 'import kiln.store, lark, nacl, zstandard, pytest, xdist' >/dev/null 2>&1 \
   || [ "${KILN_REINSTALL:-}" = 1 ]; then
  # (-c: the versions the tests last passed with, scripts/constraints.txt)
  echo "setup: pip install -c scripts/constraints.txt -e '.[test]'"
  rc=0
  "$PY" -m pip install -q --disable-pip-version-check -c scripts/constraints.txt -e '.[test]' 2>&1 \
    | { grep -v 'Running pip as the' || true; } || rc=$?
  if [ "$rc" != 0 ]; then
    echo "setup: pip install failed (exit $rc): see its messages above" >&2
    exit 1
  fi
fi
