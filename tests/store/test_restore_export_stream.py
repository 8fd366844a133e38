"""``kiln store restore`` given a ``nix-store --export`` stream (real Nix's bytes: u64 1,
the NAR, then path metadata; u64 0 alone for no paths) refuses it from its first bytes,
saying what it is and the way across, and makes nothing: neither DIR nor a hidden
directory beside it. The way across the message names works; a NAR (``nix-store
--dump``) still restores, and input too short to be either still gets the reader's error.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from clikit import kiln
from nixkit import nix_store_path

pytestmark = [
    pytest.mark.nix,
    pytest.mark.skipif(shutil.which("nix-store") is None, reason="needs Debian nix-bin"),
]


def restore(data: bytes, dest: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kiln", "store", "restore", str(dest)]
    return subprocess.run(cmd, input=data, capture_output=True, timeout=60)


@pytest.fixture
def nix_path(tmp_path: Path) -> tuple[Path, str]:
    """A path in a throwaway Nix store (root, store path)."""
    root = tmp_path / "nixroot"
    return root, nix_store_path(root, tmp_path / "payload.txt", f"exported by nix {tmp_path}\n")


def test_an_export_stream_is_refused_with_the_way_across(tmp_path: Path, nix_path) -> None:
    root, path = nix_path
    out = tmp_path / "out"
    out.mkdir()
    for case, paths in {"one path": [path], "no paths": []}.items():
        exported = subprocess.run(
            ["nix-store", "--store", str(root), "--export", *paths], capture_output=True
        )
        assert exported.returncode == 0, exported.stderr
        r = restore(exported.stdout, out / "tree")
        err = r.stderr.decode()
        assert r.returncode == 1, (case, err)
        assert err.startswith("error: stdin is a 'nix-store --export' stream, not a NAR"), (case, err)
        assert "kiln does not import those" in err and "not a NAR: expected magic" not in err, err
        assert "nix copy --to 'file://DIR?compression=zstd&secret-key=SK'" in err, err
        assert "kiln copy --from file://DIR --to store --trusted-key PUB" in err, err
        assert list(out.iterdir()) == [], case  # nothing made, not even a hidden directory


def test_the_way_across_works_and_a_nar_still_restores(tmp_path: Path, nix_path) -> None:
    root, path = nix_path
    sk, pk = tmp_path / "nix.sec", tmp_path / "nix.pub"
    assert subprocess.run(["nix-store", "--generate-binary-cache-key", "ba-1", sk, pk]).returncode == 0
    cache = tmp_path / "cache"
    to = f"file://{cache}?compression=zstd&secret-key={sk}"
    nix = ["nix", "--extra-experimental-features", "nix-command", "--option", "substituters", ""]
    r = subprocess.run([*nix, "copy", "--from", str(root), "--to", to, path], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    kstore = tmp_path / "kstore"
    assert kiln("store", "init", "--store", str(kstore), "--store-dir", "/nix/store").returncode == 0
    r = kiln(
        "copy", "--store", str(kstore), "--from", f"file://{cache}", "--to", "store",
        "--trusted-key", pk.read_text().strip(), path,
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    dumped = subprocess.run(["nix-store", "--dump", f"{root}{path}"], capture_output=True)
    r = restore(dumped.stdout, tmp_path / "tree")
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "tree").read_text() == f"exported by nix {tmp_path}\n"
    for short in (b"", b"abc", (1).to_bytes(8, "little")):  # neither an export nor a NAR
        r = restore(short, tmp_path / "short")
        assert r.returncode == 1 and b"error: NAR truncated at offset" in r.stderr, (short, r.stderr)
        assert not (tmp_path / "short").exists()
