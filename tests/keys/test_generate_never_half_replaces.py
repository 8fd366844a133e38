"""``kiln key generate`` leaves a matching key pair or the pair it found, never half of
each. Before, ``--force`` over a symlinked ``.sec`` replaced the ``.pub`` and then
refused the ``.sec`` ("not a regular file"), so the ``.pub`` belonged to a discarded
key; without ``--force`` a symlinked ``.pub`` left a fresh ``.sec`` without its public
half; a ``.sec`` write cut short by a file size limit linked half a secret key into
place; and "pass --force" was suggested for what ``--force`` cannot fix."""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
from pathlib import Path

import pytest
from clikit import kiln_at

from kiln import cmd_key
from kiln.store.errors import KilnError
from kiln.store.keyfiles import load_public_key, load_secret_key, write_public_key, write_secret_key
from kiln.store.signing import SecretKey


def _vault_key_linked_in(tmp_path: Path) -> tuple[Path, Path]:
    """The audit's set-up: a key kept in ``vault/``, its ``.sec`` linked into the keys
    directory and its ``.pub`` copied there. Returns (keys dir, vault dir)."""
    vault, keys = tmp_path / "vault", tmp_path / "home" / "keys"
    vault.mkdir()
    r = kiln_at(tmp_path, "key", "generate", "ci-1", "-o", str(vault / "ci-1.sec"))
    assert r.returncode == 0, r.stderr
    keys.mkdir(parents=True, mode=0o700)
    (keys / "ci-1.sec").symlink_to(vault / "ci-1.sec")
    (keys / "ci-1.pub").write_bytes((vault / "ci-1.pub").read_bytes())
    return keys, vault


def _snapshot(*dirs: Path) -> dict[str, bytes | str]:
    return {
        str(p): os.readlink(p) if p.is_symlink() else p.read_bytes()
        for d in dirs
        for p in sorted(d.iterdir())
    }


@pytest.mark.parametrize("force", [True, False])
def test_a_linked_sec_is_refused_before_anything_is_written(tmp_path: Path, force: bool) -> None:
    keys, vault = _vault_key_linked_in(tmp_path)
    before = _snapshot(keys, vault)
    r = kiln_at(tmp_path, "key", "generate", "ci-1", *(["--force"] if force else []))
    assert (
        r.returncode == 1 and "ci-1.sec is not a regular file" in r.stderr and "symbolic link" in r.stderr
    ), r.stderr
    assert "pass --force" not in r.stderr  # (it cannot fix this)
    assert _snapshot(keys, vault) == before
    shown = kiln_at(tmp_path, "key", "public", "ci-1")
    assert shown.stdout.strip() == (keys / "ci-1.pub").read_text().strip()


@pytest.mark.parametrize("dangling", [True, False])
def test_a_linked_pub_is_refused_before_the_sec_is_written(tmp_path: Path, dangling: bool) -> None:
    keys = tmp_path / "home" / "keys"
    keys.mkdir(parents=True, mode=0o700)
    target = tmp_path / "elsewhere.pub"
    if not dangling:
        write_public_key(target, SecretKey.generate("ci-1").public())
    (keys / "ci-1.pub").symlink_to(target)
    for force in ([], ["--force"]):
        r = kiln_at(tmp_path, "key", "generate", "ci-1", *force)
        assert (
            r.returncode == 1 and "ci-1.pub is not a regular file" in r.stderr and "symbolic link" in r.stderr
        ), r.stderr
        assert not (keys / "ci-1.sec").exists()
        assert target.exists() != dangling


def test_a_pub_linked_between_the_two_writes_removes_this_runs_sec(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A link put at the ``.pub`` after the check (another process): the run's ``.sec``
    goes, as on a full disk, instead of staying without its public half."""
    sec, pub = tmp_path / "k.sec", tmp_path / "k.pub"
    real = cmd_key.write_secret_key

    def then_link(path, key, **kw):  # noqa: ANN001, ANN003, ANN202
        real(path, key, **kw)
        pub.symlink_to(tmp_path / "nowhere")

    monkeypatch.setattr(cmd_key, "write_secret_key", then_link)
    with pytest.raises(KilnError, match=r"cannot write the public key .*no key was made"):
        cmd_key._generate(argparse.Namespace(name="k-1", output=str(sec), force=False))
    assert not sec.exists()


def _file_size_limit(limit: int) -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, limit))


def test_force_that_cannot_write_the_sec_leaves_a_matching_pair(tmp_path: Path) -> None:
    """Files of at most 64 bytes: the new ``.pub`` (48) is written, the new ``.sec`` (92)
    is cut short. The short write is an error, not half a key linked into place, and the
    ``.pub`` is again the old secret key's."""
    old = SecretKey.generate("k-1")
    sec, pub = tmp_path / "k.sec", tmp_path / "k.pub"
    write_secret_key(sec, old)
    write_public_key(pub, old.public())
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "key", "generate", "k-2", "-o", str(sec), "--force"],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "KILN_HOME": str(tmp_path / "home"), "PYTHONDONTWRITEBYTECODE": "1"},
        preexec_fn=lambda: _file_size_limit(64),
    )
    assert r.returncode != 0 and "Traceback" not in r.stderr, r.stderr
    assert load_secret_key(sec) == old
    assert load_public_key(pub) == old.public()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["k.pub", "k.sec"]  # no temp file left
