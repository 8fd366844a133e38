"""Secret key text given where a public key or a key file belongs is never echoed into an
error (it would end up in CI logs), even when it does not parse as a secret key: a key
that lost its padding or a few characters still holds the seed. And ``kiln key
revoke`` edits a policy the way it is loaded (key files relative to it) and keeps its
mode."""

from __future__ import annotations

import base64
import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.store import policy
from kiln.store.attestations import load_named_signer
from kiln.store.errors import KilnError
from kiln.store.signing import SecretKey, may_be_secret


def kiln(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILN_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], env=env, capture_output=True, text=True, cwd=cwd
    )


def _mangled(key: SecretKey) -> list[str]:
    text = key.to_text()
    return [text, text.rstrip("="), text[:-4], text[:-10], " " + text + "\n"]


def _seed_in(key: SecretKey, message: str) -> bool:
    seed = base64.b64encode(key.key[:32]).decode()
    return seed[:20] in message


def test_a_policy_never_echoes_secret_key_text() -> None:
    key = SecretKey.generate("cache-1")
    for text in _mangled(key):
        assert may_be_secret(text)
        with pytest.raises(policy.PolicyError) as e:
            policy.parse(f'[keys]\nsigning = ["{text.strip()}"]\n')
        assert not _seed_in(key, str(e.value)) and "not shown" in str(e.value)
    assert not may_be_secret(key.public().to_text())  # public keys are shown as they are


def test_a_signer_public_key_that_is_secret_text_is_not_echoed(tmp_path: Path) -> None:
    key = SecretKey.generate("hsm-1")
    for text in _mangled(key):
        with pytest.raises(KilnError) as e:
            load_named_signer(signer_cmd="cat", signer_public=text)
        assert not _seed_in(key, str(e.value)) and "not shown" in str(e.value)
    with pytest.raises(KilnError, match="expected a public key"):
        load_named_signer(signer_cmd="cat", signer_public=str(tmp_path / "missing.pub"))


def test_the_cli_never_echoes_secret_key_text(tmp_path: Path) -> None:
    key = SecretKey.generate("ci-1")
    for text in _mangled(key):
        for args in (("key", "public", text), ("key", "revoke", text, "--policy", str(tmp_path / "p.toml"))):
            r = kiln(tmp_path / "home", *args)
            assert r.returncode != 0
            assert not _seed_in(key, r.stdout + r.stderr), (args, r.stderr)


def test_revoke_resolves_key_files_beside_the_policy_and_keeps_its_mode(tmp_path: Path) -> None:
    etc = tmp_path / "etc"
    (etc / "keys").mkdir(parents=True)
    r = kiln(tmp_path / "home", "key", "generate", "cache-1", "-o", str(etc / "keys" / "cache-1.sec"))
    assert r.returncode == 0, r.stderr
    pol = etc / "policy.toml"
    pol.write_text('[keys]\nsigning = ["keys/cache-1.pub"]\n[require]\nsignatures = 1\n')
    pol.chmod(0o644)
    stolen = SecretKey.generate("stolen-0").public().to_text()
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = kiln(tmp_path / "home", "key", "revoke", stolen, "--policy", str(pol), cwd=elsewhere)
    assert r.returncode == 0, r.stderr
    assert "[[revoked]]" in pol.read_text() and oct(pol.stat().st_mode & 0o777) == "0o644"
    assert policy.load(pol).revoked[0].key.to_text() == stolen
