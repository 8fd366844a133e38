"""``kiln key rotate``/``generate``/``revoke`` check what they are given before writing
anything, and never make a key kiln cannot read back:

- a symbolic link ``default.sec`` (to the key being rotated) was found only after NAME-2.sec
  was written: a half rotation that a re-run then refused ("exists already");
- a key given as a pipe (``<(cat k.sec)``, ``/dev/stdin``) had its successor written beside
  the pipe's path: under ``/dev``;
- ``revoke NAME`` found only NAME.sec, not a NAME.pub whose secret half is gone;
- ``generate -o foo-1.pub`` wrote the *secret* key into a ``.pub`` file;
- ``generate 'clé-1'`` (or a name with '"', '\\', control characters) wrote a key kiln
  refuses to read, or one that breaks the TOML and terminals it is shown in.

Real ``kiln`` processes on real key directories.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.store.keyfiles import load_secret_key, write_public_key, write_secret_key
from kiln.store.signing import SecretKey


def kiln(home: Path, *args: str, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        env={**os.environ, "KILN_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def keys_of(home: Path) -> list[str]:
    return sorted(p.name for p in (home / "keys").iterdir())


def make_key(home: Path, name: str) -> SecretKey:
    key = SecretKey.generate(name)
    (home / "keys").mkdir(parents=True, exist_ok=True, mode=0o700)
    write_secret_key(home / "keys" / f"{name}.sec", key)
    write_public_key(home / "keys" / f"{name}.pub", key.public())
    return key


def test_a_symlinked_default_key_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    home = tmp_path / "home"
    key = make_key(home, "b-1")
    os.symlink("b-1.sec", home / "keys" / "default.sec")
    before = keys_of(home)
    for _ in range(2):  # the same answer again: nothing half done in between
        r = kiln(home, "key", "rotate", "b-1")
        assert r.returncode == 1, r.stderr
        assert "default.sec is a symbolic link (to b-1.sec)" in r.stderr and "nothing was written" in r.stderr
        assert keys_of(home) == before
    r = kiln(home, "key", "rotate", "default")  # the link itself, by name
    assert r.returncode == 1 and "is a symbolic link" in r.stderr and keys_of(home) == before
    # as the message says: a regular file, then the rotation goes through
    os.unlink(home / "keys" / "default.sec")
    write_secret_key(home / "keys" / "default.sec", key)
    r = kiln(home, "key", "rotate", "b-1")
    assert r.returncode == 0, r.stderr
    assert load_secret_key(home / "keys" / "default.sec").name == "b-2"
    # a link where the successor's public key goes: refused before its secret half is written
    make_key(home, "c-1")
    os.symlink("/nonexistent", home / "keys" / "c-2.pub")
    r = kiln(home, "key", "rotate", "c-1")
    assert r.returncode == 1 and "c-2.pub is a symbolic link" in r.stderr, r.stderr
    assert not (home / "keys" / "c-2.sec").exists()


def test_a_key_given_as_a_pipe_is_refused_never_written_under_dev(tmp_path: Path) -> None:
    home = tmp_path / "home"
    name = f"pipe{os.getpid()}"
    make_key(home, f"{name}-1")
    sec = home / "keys" / f"{name}-1.sec"
    leaked = [Path("/dev") / f"{name}-2.sec", Path("/dev/fd") / f"{name}-2.sec"]
    try:
        r = subprocess.run(
            ["bash", "-c", f'{sys.executable} -m kiln key rotate <(cat "{sec}")'],
            env={**os.environ, "KILN_HOME": str(home)},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert r.returncode == 1 and "is not a regular key file" in r.stderr, r.stderr
        with open(sec) as f:
            r = kiln(home, "key", "rotate", "/dev/stdin", stdin=f)
        assert r.returncode == 1 and "/dev/stdin is not a regular key file" in r.stderr, r.stderr
        assert not any(os.path.lexists(p) for p in leaked)
        assert keys_of(home) == [f"{name}-1.pub", f"{name}-1.sec"]
    finally:
        for p in leaked:  # (only ever there if the refusal is broken)
            if os.path.lexists(p):
                os.unlink(p)


def test_revoke_finds_a_key_by_its_public_file_alone(tmp_path: Path) -> None:
    home = tmp_path / "home"
    key = make_key(home, "gone-1")
    os.unlink(home / "keys" / "gone-1.sec")  # the secret half destroyed; its .pub kept
    policy = tmp_path / "policy.toml"
    r = kiln(home, "key", "revoke", "gone-1", "--policy", str(policy))
    assert r.returncode == 0, r.stderr
    assert f'key = "{key.public().to_text()}"' in policy.read_text()


def test_generate_refuses_a_secret_key_in_a_pub_file(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for out in ("foo-1.pub", "foo-1.PUB"):
        r = kiln(home, "key", "generate", "foo-1", "-o", str(tmp_path / out))
        assert r.returncode == 1 and "give NAME.sec" in r.stderr, r.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == []  # not even $KILN_HOME was made


@pytest.mark.parametrize("name", ["clé-1", 'a"b-1', "a\\b-1", "a\x1bb-1", "a\x7fb-1", "a b-1", "a:b-1"])
def test_generate_refuses_names_kiln_cannot_read_back_or_show(tmp_path: Path, name: str) -> None:
    home = tmp_path / "home"
    r = kiln(home, "key", "generate", name)
    assert r.returncode == 1 and "is not allowed" in r.stderr, r.stderr
    assert "\x1b" not in r.stderr and "\x7f" not in r.stderr  # shown escaped
    assert not (home / "keys").exists() or keys_of(home) == []


def test_every_name_generate_accepts_reads_back_and_rotates(tmp_path: Path) -> None:
    home = tmp_path / "home"
    for name in ("cache.example.org-1", "kiln-ci@host_1+x~y-1", "a'b-1", "plain"):
        r = kiln(home, "key", "generate", name)
        assert r.returncode == 0, r.stderr
        assert kiln(home, "key", "public", name).stdout == r.stdout
        assert kiln(home, "key", "rotate", name).returncode == 0


def test_rotating_a_key_whose_successor_name_is_refused_writes_nothing(tmp_path: Path) -> None:
    """A key an older kiln made with such a name: its successor would be as bad."""
    home = tmp_path / "home"
    make_key(home, 'old"name-1')
    before = keys_of(home)
    r = kiln(home, "key", "rotate", str(home / "keys" / 'old"name-1.sec'))
    assert r.returncode == 1 and "the successor of key" in r.stderr and "is not allowed" in r.stderr, r.stderr
    assert keys_of(home) == before
