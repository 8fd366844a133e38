"""``kiln key`` end to end through the installed command, with KILN_HOME in a temp dir."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sysconfig
from pathlib import Path

import pytest
from fmtkit import nix

from kiln.store.keyfiles import load_public_key, load_secret_key
from kiln.store.signing import SecretKey

#: the console script pip installed for the interpreter running the tests (a venv's bin/
#: need not be on PATH); else the one on PATH
_SCRIPT = Path(sysconfig.get_path("scripts")) / "kiln"
KILN = str(_SCRIPT) if _SCRIPT.exists() else shutil.which("kiln") or "kiln"


def kiln(home: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "KILN_HOME": str(home)}
    env.pop("KILN_DEBUG", None)
    return subprocess.run([KILN, "key", *args], capture_output=True, text=True, env=env)


def test_generate_default_location(tmp_path: Path) -> None:
    home = tmp_path / "home"
    r = kiln(home, "generate", "cache.test-1")
    assert r.returncode == 0, r.stderr
    sec = home / "keys" / "cache.test-1.sec"
    pub = home / "keys" / "cache.test-1.pub"
    sk = load_secret_key(sec)
    assert r.stdout == f"{sk.public().to_text()}\n"  # the public key alone: PUB=$(kiln key generate)
    assert r.stderr == f"secret key: {sec}\n"
    assert sk.to_text().split(":")[1] not in r.stdout + r.stderr  # secret never printed
    assert stat.S_IMODE(sec.stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "keys").stat().st_mode) == 0o700
    assert load_public_key(pub) == sk.public()
    # public: by name, by file (secret or public), and the only key without argument
    for arg in (["cache.test-1"], [str(sec)], [str(pub)], []):
        r = kiln(home, "public", *arg)
        assert (r.returncode, r.stdout) == (0, sk.public().to_text() + "\n"), (arg, r.stderr)


def test_generate_to_file_and_refuse_overwrite(tmp_path: Path) -> None:
    out = tmp_path / "my.key"
    r = kiln(tmp_path / "home", "generate", "k-1", "-o", str(out))
    assert r.returncode == 0, r.stderr
    first = load_secret_key(out)
    assert load_public_key(tmp_path / "my.key.pub") == first.public()
    r = kiln(tmp_path / "home", "generate", "k-1", "-o", str(out))
    assert r.returncode == 1 and "already exists" in r.stderr and "Traceback" not in r.stderr
    assert load_secret_key(out) == first
    r = kiln(tmp_path / "home", "generate", "k-1", "-o", str(out), "--force")
    assert r.returncode == 0 and load_secret_key(out) != first


@pytest.mark.parametrize(
    ("args", "code", "msg"),
    [
        (["generate", "bad:name"], 1, "key name 'bad:name' is not allowed (':')"),
        (["public", "missing"], 1, "no key file"),
        (["public"], 1, "name a key: 0 keys"),
        (["frobnicate"], 2, "invalid choice"),
        ([], 2, "required"),
    ],
)
def test_errors(tmp_path: Path, args: list[str], code: int, msg: str) -> None:
    r = kiln(tmp_path / "home", *args)
    assert r.returncode == code and msg in r.stderr, r.stderr
    assert "Traceback" not in r.stderr


def test_public_of_garbage_file(tmp_path: Path) -> None:
    (tmp_path / "junk").write_text("not a key")
    r = kiln(tmp_path / "home", "public", str(tmp_path / "junk"))
    assert r.returncode == 1 and "error:" in r.stderr


@pytest.mark.nix
def test_generated_key_works_with_nix(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert kiln(home, "generate", "interop-1").returncode == 0
    sec = (home / "keys" / "interop-1.sec").read_bytes()
    assert nix("key", "convert-secret-to-public", stdin=sec).strip() == kiln(home, "public").stdout.strip()
    # and a Nix-made key file is readable by `kiln key public`
    (tmp_path / "n.sec").write_text(nix("key", "generate-secret", "--key-name", "nix-1"))
    r = kiln(home, "public", str(tmp_path / "n.sec"))
    assert r.stdout.strip() == SecretKey.parse((tmp_path / "n.sec").read_text()).public().to_text()


def test_generate_force_never_half_replaces_a_key_pair(tmp_path):
    """With ``--force`` and a ``.pub`` that cannot be written, the old secret key was
    already replaced (and lost); now nothing is written."""
    import subprocess
    import sys

    from kiln.store.keyfiles import load_secret_key, write_secret_key

    old = SecretKey.generate("y-1")
    write_secret_key(tmp_path / "y.sec", old)
    (tmp_path / "y.pub").mkdir()
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "key", "generate", "y-2", "-o", str(tmp_path / "y.sec"), "--force"],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 1 and "y.pub is a directory" in r.stderr, r.stderr
    assert load_secret_key(tmp_path / "y.sec").key == old.key


def test_a_key_can_come_through_a_pipe_and_a_fifo_never_hangs(tmp_path):
    """``--key /dev/stdin`` or ``--key <(pass show k)`` keeps the key off the disk; a
    named FIFO nobody writes to is an error at once, not a hang."""
    import os
    import subprocess
    import sys

    from kiln.store.errors import FormatError
    from kiln.store.keyfiles import load_secret_key

    key = SecretKey.generate("piped-1")
    env = {**os.environ, "KILN_HOME": str(tmp_path / "home")}
    assert subprocess.run([sys.executable, "-m", "kiln", "store", "init"], env=env).returncode == 0
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "store", "sign", "--key", "/dev/stdin", "--all"],
        input=key.to_text().encode(),
        env=env,
        capture_output=True,
    )
    assert r.returncode == 0, r.stderr
    fifo = tmp_path / "ff"
    os.mkfifo(fifo, 0o600)
    with pytest.raises(FormatError):
        load_secret_key(fifo)  # (returns at once: no writer means an empty read)


def test_generate_force_writes_the_public_half_first(tmp_path, monkeypatch):
    """If the public key cannot be written (any reason, not only a directory there), the
    old secret key must still be in place: the public half is written first."""
    import argparse

    from kiln import cmd_key
    from kiln.store.keyfiles import load_secret_key, write_secret_key

    old = SecretKey.generate("z-1")
    write_secret_key(tmp_path / "z.sec", old)

    def fails(*a, **kw):  # noqa: ANN002, ANN003, ANN202
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(cmd_key, "write_public_key", fails)
    with pytest.raises(OSError):
        cmd_key._generate(argparse.Namespace(name="z-2", output=str(tmp_path / "z.sec"), force=True))
    assert load_secret_key(tmp_path / "z.sec").key == old.key
