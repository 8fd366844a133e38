"""Differential tests against real Nix: NAR bytes (``nix-store --dump``), NAR hashes
(``nix-hash``), source store paths (``nix-store --add``) and restoring each other's NARs."""

from __future__ import annotations

import io
import subprocess
import sys
from pathlib import Path

import pytest
from fmtkit import nix, rmtree, run, tree_signature

from kiln.store import nar as narmod
from kiln.store.errors import FormatError
from kiln.store.hashes import Hash
from kiln.store.paths import StorePath, make_source_path

pytestmark = pytest.mark.nix

TREES = [
    "regular-file",
    "exec-file",
    "empty-file",
    "root-symlink",
    "empty-dir",
    "mixed",
    "deep",
    "large",
    "many-files",
]


@pytest.mark.parametrize("name", TREES)
def test_dump_is_byte_identical_to_nix(corpus: dict[str, Path], name: str) -> None:
    assert narmod.dump_bytes(corpus[name]) == run("nix-store", "--dump", corpus[name])


@pytest.mark.parametrize("name", TREES)
def test_hash_path_matches_nix_hash(corpus: dict[str, Path], name: str) -> None:
    h, size = narmod.hash_path(corpus[name])
    assert h.nix32 == run("nix-hash", "--type", "sha256", "--base32", corpus[name]).decode().strip()
    assert h.hex == run("nix-hash", "--type", "sha256", corpus[name]).decode().strip()
    assert size == len(run("nix-store", "--dump", corpus[name]))


@pytest.mark.parametrize("name", TREES)
def test_source_path_matches_nix_store_add(corpus: dict[str, Path], name: str) -> None:
    h, _ = narmod.hash_path(corpus[name])
    want = run("nix-store", "--add", corpus[name]).decode().strip()
    got = make_source_path(name, h, store_dir="/nix/store")
    assert str(got) == want
    assert StorePath.parse(want, "/nix/store") == got
    # and Nix's own record of the path agrees on hash and size
    info = nix("path-info", "--json", want)
    assert f'"narHash":"{h.sri}"' in info or f'"narHash":"{h.to_nix32()}"' in info


@pytest.mark.parametrize("name", ["mixed", "large", "many-files", "root-symlink"])
def test_restore_nix_nar_and_nix_restores_ours(corpus: dict[str, Path], tmp_path: Path, name: str) -> None:
    nixnar = run("nix-store", "--dump", corpus[name])
    try:
        narmod.restore(io.BytesIO(nixnar), tmp_path / "ours")
        subprocess.run(
            ["nix-store", "--restore", str(tmp_path / "theirs")],
            input=narmod.dump_bytes(corpus[name]),
            check=True,
        )
        assert run("nix-store", "--dump", tmp_path / "ours") == nixnar
        assert run("nix-store", "--dump", tmp_path / "theirs") == nixnar
        if name != "root-symlink":
            assert tree_signature(tmp_path / "ours") == tree_signature(tmp_path / "theirs")
    finally:
        rmtree(tmp_path / "ours")
        rmtree(tmp_path / "theirs")


def _entry(n: str) -> bytes:
    from fmtkit import s

    return (
        s("entry")
        + s("(")
        + s("name")
        + s(n)
        + s("node")
        + s("(")
        + s("type")
        + s("regular")
        + s("contents")
        + s("")
        + s(")")
        + s(")")
    )


def _restore_with_nix(tmp_path: Path, data: bytes) -> bytes:
    p = subprocess.run(["nix-store", "--restore", str(tmp_path / "x")], input=data, capture_output=True)
    rmtree(tmp_path / "x")
    return p.stderr if p.returncode else b""


def test_nix_agrees_on_invalid_names(tmp_path: Path) -> None:
    from fmtkit import nar, s

    for bad in ("..", ".", ""):
        data = nar(s("(") + s("type") + s("directory") + _entry(bad) + s(")"))
        assert b"invalid file name" in _restore_with_nix(tmp_path, data)


def test_kiln_is_stricter_than_nix_2_8(tmp_path: Path) -> None:
    """Nix 2.8's ``--restore`` accepts unsorted directories and trailing data; kiln
    rejects both, because such an archive does not hash to the NAR of what it
    unpacks to (two different byte strings for one tree). Documented in docs/formats.md."""
    from fmtkit import nar, nar_file, s

    unsorted = nar(s("(") + s("type") + s("directory") + _entry("b") + _entry("a") + s(")"))
    trailing = nar(nar_file(b"abc")) + b"garbage!"
    for data in (unsorted, trailing):
        assert _restore_with_nix(tmp_path, data) == b""  # Nix takes it...
        with pytest.raises(FormatError):  # ...kiln does not
            narmod.restore([data], tmp_path / "k")


def test_nix32_matches_nix_hash_to_base32() -> None:
    import random

    rng = random.Random(5)
    for algo, n in (("md5", 16), ("sha1", 20), ("sha256", 32), ("sha512", 64)):
        for _ in range(3):
            h = Hash(algo, rng.randbytes(n))
            out = run("nix-hash", "--type", algo, "--to-base32", h.hex).decode().strip()
            assert out == h.nix32
            assert run("nix-hash", "--type", algo, "--to-base16", out).decode().strip() == h.hex


def test_restore_from_a_pipe(corpus: dict[str, Path], tmp_path: Path) -> None:
    """``nix-store --dump | restore(stdin)``: short reads from a pipe are handled."""
    code = "import sys; from kiln.store.nar import restore; restore(sys.stdin.buffer, sys.argv[1])"
    dump = subprocess.Popen(["nix-store", "--dump", str(corpus["large"])], stdout=subprocess.PIPE)
    subprocess.run([sys.executable, "-c", code, str(tmp_path / "out")], stdin=dump.stdout, check=True)
    assert dump.wait() == 0
    assert narmod.dump_bytes(tmp_path / "out") == run("nix-store", "--dump", corpus["large"])


@pytest.mark.parametrize(
    "name", ["mixed", "many-files", "exec-file", "root-symlink", "empty-dir", "control-chars"]
)
def test_listing_matches_nix(corpus: dict[str, Path], tmp_path: Path, name: str) -> None:
    """``listing_json`` equals the ``.ls`` file ``nix copy ...?write-nar-listing=true``
    writes, byte for byte (narOffset included)."""
    p = run("nix-store", "--add", corpus[name]).decode().strip()
    nix("copy", "--to", f"file://{tmp_path}/c?compression=none&write-nar-listing=true", p)
    want = (tmp_path / "c" / f"{Path(p).name[:32]}.ls").read_bytes()
    got = narmod.listing_json([narmod.dump_bytes(corpus[name])])
    assert got == want
