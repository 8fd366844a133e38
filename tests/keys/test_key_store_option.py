"""``kiln key generate|public|revoke --store DIR`` use that store's ``keys/``, as
``kiln key rotate --store`` and the signing commands (``--key NAME``) do, instead of
the default store root's."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def kiln(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILN_HOME=str(home))
    return subprocess.run([sys.executable, "-m", "kiln", *args], env=env, capture_output=True, text=True)


def test_key_commands_take_the_store_they_are_given(tmp_path: Path) -> None:
    home, other = tmp_path / "home", tmp_path / "other"
    r = kiln(home, "key", "generate", "ci-1", "--store", str(other))
    assert r.returncode == 0, r.stderr
    assert (other / "keys" / "ci-1.sec").is_file() and not (home / "keys").exists()
    pub = (other / "keys" / "ci-1.pub").read_text().strip()

    r = kiln(home, "key", "public", "ci-1", "--store", str(other))
    assert r.returncode == 0 and r.stdout.strip() == pub, r.stderr
    r = kiln(home, "key", "public", "--store", str(other))  # (its only key)
    assert r.returncode == 0 and r.stdout.strip() == pub, r.stderr
    r = kiln(home, "key", "public", "ci-1")  # not in the default store's keys/
    assert r.returncode != 0 and str(home / "keys") in r.stderr, r.stderr

    policy = tmp_path / "policy.toml"
    r = kiln(home, "key", "revoke", "ci-1", "--store", str(other), "--policy", str(policy), "--retired")
    assert r.returncode == 0, r.stderr
    assert f'key = "{pub}"' in policy.read_text()
