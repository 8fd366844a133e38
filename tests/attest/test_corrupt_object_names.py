"""A corrupt object is reported naming both the store path and the object, so an operator
can find the bad file: a store's object file (``objread.read_object``) through ``kiln
store cat``, ``kiln store verify`` and ``kiln verify``; a registry's object URL through
``kiln copy`` between registries (``registry.verify``) and into a store
(``importbatch``, small objects staged in memory and large ones streamed). Real stores,
real registry directories, bytes flipped in real objects."""

from __future__ import annotations

import base64
import hashlib
import re
from pathlib import Path

import pytest
from clikit import kiln

from kiln.store.hashes import Hash
from kiln.store.keyfiles import write_secret_key
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey


def _flip(f: Path, at: int | None = None) -> None:
    data = bytearray(f.read_bytes())
    data[len(data) // 2 if at is None else at] ^= 0x55
    f.chmod(0o644)
    f.write_bytes(bytes(data))


def _added(tmp_path: Path, home: Path, size: int) -> str:
    """A store path (a directory with one file of ``size`` base64 bytes of random data,
    which compress to about 3/4 of that) added to the store at ``home``."""
    d = tmp_path / f"tree-{size}"
    d.mkdir()
    raw = b"".join(hashlib.sha256(f"{size}-{i}".encode()).digest() for i in range(size // 43 + 1))
    (d / "data").write_bytes(base64.b64encode(raw)[:size])
    r = kiln("store", "add", str(d), "--store", str(home))
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_a_corrupt_store_object_is_named_with_its_path(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = _added(tmp_path, home, 100_000)
    store = LocalStore.open(home, create=False)
    obj = store.object_path(path)
    store.close()
    _flip(obj)
    named = f"{path} (object {obj})"
    r = kiln("store", "cat", path, "data", "--store", str(home))
    assert r.returncode == 1 and f"hash mismatch for compressed file of {named}:" in r.stderr, r.stderr
    r = kiln("store", "verify", "--store", str(home))
    assert r.returncode == 1 and f"compressed file of {named}:" in r.stdout + r.stderr, r.stdout + r.stderr
    r = kiln("verify", path, "--store", str(home))
    assert r.returncode == 1, r.stdout + r.stderr
    line = next(x for x in r.stdout.splitlines() if x.startswith("  FAIL content: "))
    assert f"hash mismatch for compressed file of {named}: expected: " in line, line


@pytest.fixture
def key(tmp_path: Path) -> tuple[Path, str]:
    k = SecretKey.generate("cache-1")
    write_secret_key(tmp_path / "k.sec", k)
    return tmp_path / "k.sec", k.public().to_text()


def _pushed(tmp_path: Path, key: tuple[Path, str], size: int) -> tuple[str, Path]:
    home = tmp_path / "home"
    path = _added(tmp_path, home, size)
    reg = tmp_path / "reg"
    r = kiln("push", "--to", f"file://{reg}", "--sign-key", str(key[0]), path, "--store", str(home))
    assert r.returncode == 0, r.stderr
    return path, reg


def _narinfo(reg: Path, path: str) -> Path:
    return reg / f"{path.rsplit('/', 1)[1][:32]}.narinfo"


def _object_key(reg: Path, path: str) -> str:
    return re.search(r"^URL: (.*)$", _narinfo(reg, path).read_text(), re.M).group(1)


def _corrupt_and_relabel(reg: Path, path: str) -> str:
    """Flip the zstd magic number of ``path``'s object and file it under its new digest,
    narinfo included (FileHash and URL are not signed): the registry serves a corrupt
    object that its narinfo describes. Returns the new object key."""
    key = _object_key(reg, path)
    data = bytearray((reg / key).read_bytes())
    data[0] ^= 0x55
    h = Hash("sha256", hashlib.sha256(data).digest())
    new = f"nar/{h.nix32}.nar.zst"
    (reg / new).write_bytes(data)
    ni = _narinfo(reg, path)
    text = re.sub(r"^URL: .*$", f"URL: {new}", ni.read_text(), flags=re.M)
    ni.write_text(re.sub(r"^FileHash: .*$", f"FileHash: sha256:{h.nix32}", text, flags=re.M))
    return new


def test_copy_between_registries_names_the_object(tmp_path: Path, key) -> None:
    path, reg = _pushed(tmp_path, key, 100_000)
    obj = _object_key(reg, path)
    _flip(reg / obj)
    r = kiln(
        "copy",
        "--from",
        f"file://{reg}",
        "--to",
        f"file://{tmp_path / 'reg2'}",
        "--trusted-key",
        key[1],
        path,
    )
    assert r.returncode == 1, r.stderr
    assert f"hash mismatch for compressed file of {path} (object {obj}):" in r.stderr, r.stderr
    new = _corrupt_and_relabel(reg, path)
    r = kiln(
        "copy",
        "--from",
        f"file://{reg}",
        "--to",
        f"file://{tmp_path / 'reg3'}",
        "--trusted-key",
        key[1],
        path,
    )
    assert r.returncode == 1, r.stderr
    assert f"hash mismatch for compressed NAR of {path} (object {new}):" in r.stderr, r.stderr


@pytest.mark.parametrize("size", [100_000, 2_000_000])  # staged in memory; streamed (over 1 MiB)
def test_copy_into_a_store_names_the_object(tmp_path: Path, key, size: int) -> None:
    path, reg = _pushed(tmp_path, key, size)
    new = _corrupt_and_relabel(reg, path)
    dest = tmp_path / "dest"
    r = kiln(
        "copy",
        "--from",
        f"file://{reg}",
        "--to",
        "store",
        "--store",
        str(dest),
        "--trusted-key",
        key[1],
        path,
    )
    assert r.returncode == 1, r.stderr
    assert f"hash mismatch for compressed NAR of {path} (object {new}):" in r.stderr, r.stderr
    assert "a valid zstd stream" in r.stderr
