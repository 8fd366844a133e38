#!/usr/bin/env bash
# The main job, from a fresh Debian 12 machine: set up, build GNU hello from source in
# the sandbox on the hermetic toolchain, sign it, verify it (content, signature,
# provenance, policy), check that a rebuild is bit-for-bit identical, and run it.
#
# KILN_HOME (default ~/.local/share/kiln) is the store; KILN_SOURCE_MIRRORS may name a
# hashed source mirror (see docs/toolchain.md); without one, sources and the toolchain's
# .debs come from the machine's Debian archive.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-debian.sh --demo
PY=${PYTHON:-python3}
kiln() { "$PY" -m kiln "$@"; }
export KILN_HOME=${KILN_HOME:-$HOME/.local/share/kiln}
KEY="$KILN_HOME/keys/demo.sec"

step() { printf '\n== %s\n' "$*"; }

step "signing key"
[ -f "$KEY" ] || kiln key generate demo >/dev/null
PUB=$(kiln key public demo)
echo "public key: $PUB"

step "build hello from source (toolchain: $(grep -c 'name = ' recipes/toolchain.lock.recipe) pinned Debian packages)"
OUT=$(kiln build -j2 --sign-key "$KEY" recipes/hello.recipe hello)
echo "built: $OUT"

step "verify: contents, signature, provenance"
POLICY=$(mktemp --suffix=.toml)
trap 'rm -f "$POLICY"' EXIT
cat >"$POLICY" <<TOML
[keys]
signing = ["$PUB"]
provenance = ["$PUB"]

[require]
signatures = 1
provenance = true
TOML
kiln store verify --trusted-key "$PUB" --sigs-needed 1
kiln verify "$OUT" --policy "$POLICY"

step "rebuild and compare bit for bit"
kiln build --check --sign-key "$KEY" recipes/hello.recipe hello >/dev/null

step "run it"
kiln run hello -- hello
