"""``kiln key public FILE`` never prints a secret seed as a public key. A file holding a
32-byte seed alone (``name:<base64>``) is spelled exactly as a public key is; before,
one named ``.sec`` or readable by its owner alone was printed as "the public key". Such
a file is now refused unless it holds a whole secret key, whose public half is derived
as before; public key files (any ``.pub``, or a file others may read) print as before."""

from __future__ import annotations

import base64
import os
from pathlib import Path

import pytest
from clikit import kiln_at

from kiln.store.keyfiles import write_secret_key
from kiln.store.signing import SecretKey


def _seed_file(path: Path, mode: int) -> str:
    """Write ``ci-1:<base64 of a 32-byte seed>`` to ``path``; return the seed's base64."""
    seed = base64.b64encode(os.urandom(32)).decode()
    path.write_text(f"ci-1:{seed}\n")
    path.chmod(mode)
    return seed


@pytest.mark.parametrize(
    ("name", "mode", "why"),
    [
        ("ci-1.sec", 0o644, "by its name (.sec)"),
        ("ci-1.sec", 0o600, "by its name"),
        ("ci-1.key", 0o600, "by its mode (600"),
    ],
)
def test_a_secret_key_file_without_a_secret_key_is_not_printed(
    tmp_path: Path, name: str, mode: int, why: str
) -> None:
    seed = _seed_file(tmp_path / name, mode)
    (tmp_path / "link").symlink_to(tmp_path / name)  # (a link's name says nothing)
    for arg in (name, "link"):
        r = kiln_at(tmp_path, "key", "public", arg, cwd=tmp_path)
        assert r.returncode == 1 and why in r.stderr, r.stderr
        assert seed[:12] not in r.stdout + r.stderr


def test_a_named_key_holding_a_seed_is_not_printed(tmp_path: Path) -> None:
    keys = tmp_path / "home" / "keys"
    keys.mkdir(parents=True, mode=0o700)
    seed = _seed_file(keys / "ci-1.sec", 0o600)
    for args in (["key", "public", "ci-1"], ["key", "public"]):
        r = kiln_at(tmp_path, *args)
        assert r.returncode == 1 and "holds no secret key" in r.stderr, r.stderr
        assert seed[:12] not in r.stdout + r.stderr


def test_public_and_secret_key_files_still_print_their_public_key(tmp_path: Path) -> None:
    key = SecretKey.generate("ci-2")
    want = key.public().to_text()
    (tmp_path / "fetched.pub").write_text(want + "\n")
    (tmp_path / "fetched.pub").chmod(0o600)  # (fetched under umask 077: the name says public)
    (tmp_path / "plain").write_text(want + "\n")
    (tmp_path / "plain").chmod(0o644)
    write_secret_key(tmp_path / "s.sec", key)
    (tmp_path / "readable.sec").write_text(key.to_text())
    (tmp_path / "readable.sec").chmod(0o644)  # (a secret key: its public half is derived)
    for f in ("fetched.pub", "plain", "s.sec", "readable.sec"):
        r = kiln_at(tmp_path, "key", "public", f, cwd=tmp_path)
        assert r.returncode == 0 and r.stdout.strip() == want, (f, r.stderr)
