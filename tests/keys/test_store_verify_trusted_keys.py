"""``kiln store verify --trusted-key X`` trusts X alone: ``$KILN_TRUSTED_KEYS`` (a
substituter setting) is ignored once keys are given on the command line, so a key that
the environment happens to trust cannot satisfy a check meant for another."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey, sign_info


def _kiln(root: Path, *args: str, trusted_env: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "KILN_TRUSTED_KEYS": trusted_env}
    return subprocess.run(
        [sys.executable, "-m", "kiln", "store", "verify", "--store", str(root), *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_an_explicit_trusted_key_ignores_the_environment(tmp_path: Path) -> None:
    signer, other = SecretKey.generate("env-trusted-1"), SecretKey.generate("asked-for-1")
    store = LocalStore.open(tmp_path / "store")
    try:
        tree = tmp_path / "tree"
        tree.mkdir()
        (tree / "f").write_text("input-addressed: only a signature vouches for it\n")
        info = store.register_built(f"{store.store_dir}/{'7' * 32}-thing", tree, [], None)
        store.add_signatures(info.path, [sign_info(info, signer)])
    finally:
        store.close()
    root, env = tmp_path / "store", str(signer.public())
    # the key asked for did not sign: a problem, although the environment trusts the signer
    r = _kiln(root, "--trusted-key", str(other.public()), trusted_env=env)
    assert r.returncode == 1, r.stdout + r.stderr
    assert (
        "signatures: 0 valid trusted signature(s), 1 needed; present: env-trusted-1 (not a trusted key)"
        in r.stderr
    )
    assert _kiln(root, "--trusted-key", str(signer.public()), trusted_env=str(other.public())).returncode == 0
    # without --trusted-key the environment's keys are the trusted ones (as before)
    assert _kiln(root, "--sigs-needed", "1", trusted_env=env).returncode == 0
    assert _kiln(root, "--sigs-needed", "1", trusted_env=str(other.public())).returncode == 1
