"""A client takes a path whose content address gives its store path without a
signature, as Nix does (``store/caclaim.py``): ``nix copy --derivation`` publishes
``.drv`` files unsigned, and ``kiln copy`` refused them ("0 valid signature(s)") while
``kiln store verify`` exempted the same paths. The content is still held to the claim
on import; an input-addressed path still needs its signatures, and so does every path a
registry admits from an upload."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from regkit import add_built, add_tree, kiln, make_store

NIX = ["nix", "--extra-experimental-features", "nix-command"]


def _copy(cache: Path, dest: Path, keys, *paths: str):  # noqa: ANN001, ANN202
    return kiln(
        "copy", "--from", f"file://{cache}", "--to", "store", "--store", str(dest),
        "--trusted-key", str(keys.pk_file), *paths,
    )  # fmt: skip


def test_an_unsigned_content_addressed_path_is_taken_an_input_addressed_one_is_not(tmp_path, keys) -> None:
    store = make_store(tmp_path / "store")
    ca = add_tree(store, tmp_path, "added", "content proves me\n")
    built = add_built(store, tmp_path, "built", "only a signature proves me")
    cache = tmp_path / "cache"
    r = kiln("push", "--store", str(store.root), "--to", f"file://{cache}", ca, built)  # (no --sign-key)
    assert r.returncode == 0, r.stderr
    assert "Sig:" not in (cache / f"{ca.rsplit('/', 1)[1][:32]}.narinfo").read_text()
    dest = tmp_path / "dest"
    r = _copy(cache, dest, keys, ca)
    assert r.returncode == 0, r.stderr
    r = _copy(cache, dest, keys, built)
    assert r.returncode == 1 and "0 valid signature(s) from trusted keys, 1 required" in r.stderr, r.stderr


def test_a_claim_that_does_not_give_the_path_proves_nothing(tmp_path, keys) -> None:
    """An unsigned narinfo whose CA names other content (a hostile cache's) is asked its
    signatures like any other: the claim does not give the path it describes."""
    store = make_store(tmp_path / "store")
    a = add_tree(store, tmp_path, "a", "the real content\n")
    b = add_tree(store, tmp_path, "b", "other content\n")
    cache = tmp_path / "cache"
    assert kiln("push", "--store", str(store.root), "--to", f"file://{cache}", a).returncode == 0
    f = cache / f"{a.rsplit('/', 1)[1][:32]}.narinfo"
    lie = f"fixed:r:sha256:{store.query(b).nar_hash.nix32}"
    f.write_text(
        "".join(f"CA: {lie}\n" if ln.startswith("CA: ") else ln for ln in f.read_text().splitlines(True))
    )
    r = _copy(cache, tmp_path / "dest", keys, a)
    assert r.returncode == 1 and "0 valid signature(s) from trusted keys" in r.stderr, r.stderr


def test_a_server_still_asks_signatures_of_an_uploaded_content_addressed_path(
    tmp_path, keys, kiln_server
) -> None:
    store = make_store(tmp_path / "store")
    ca = add_tree(store, tmp_path, "added", "content\n")
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    r = kiln("push", "--store", str(store.root), "--to", srv.url, "--token", tok, ca)
    assert r.returncode != 0 and not list(reg.glob("*.narinfo")), r.stdout + r.stderr


@pytest.mark.nix
@pytest.mark.skipif(shutil.which("nix") is None, reason="needs Debian nix-bin")
def test_kiln_copies_the_unsigned_drv_files_nix_copy_derivation_publishes(tmp_path, keys) -> None:
    root = tmp_path / "nixroot"
    expr = 'derivation { name = "kiln-drv-interop"; builder = "/bin/sh"; system = "x86_64-linux"; }'
    r = subprocess.run(
        ["nix-instantiate", "--store", f"local?root={root}", "--expr", expr], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    drv = r.stdout.strip().split("!")[0]
    cache = tmp_path / "cache"
    r = subprocess.run(
        [
            *NIX,
            "copy",
            "--derivation",
            "--from",
            f"local?root={root}",
            "--to",
            f"file://{cache}?compression=zstd",
            drv,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    body = (cache / f"{drv.rsplit('/', 1)[1][:32]}.narinfo").read_text()
    assert "CA: text:sha256:" in body and "Sig:" not in body, body
    dest = tmp_path / "dest"
    kiln("store", "init", "--store", str(dest), "--store-dir", "/nix/store")
    r = _copy(cache, dest, keys, drv)
    assert r.returncode == 0, r.stderr
    shown = kiln("store", "cat", "--store", str(dest), drv).stdout
    assert shown.startswith("Derive(") and "kiln-drv-interop" in shown


def _swap_content(cache: Path, path: str, other: str) -> None:
    """``path``'s narinfo in ``cache`` made to describe ``other``'s NAR (its hashes, sizes
    and file), its StorePath and CA left as they were: a claim that gives the path, over
    content that is not what it claims."""
    f = cache / f"{path.rsplit('/', 1)[1][:32]}.narinfo"
    theirs = {
        ln.split(":", 1)[0]: ln
        for ln in (cache / f"{other.rsplit('/', 1)[1][:32]}.narinfo").read_text().splitlines(True)
    }
    swapped = ("URL", "FileHash", "FileSize", "NarHash", "NarSize")
    f.write_text(
        "".join(
            theirs[k] if (k := ln.split(":", 1)[0]) in swapped else ln
            for ln in f.read_text().splitlines(True)
        )
    )


def test_a_true_claim_over_other_content_registers_nothing(tmp_path, keys) -> None:
    """The claim is unsigned: a text path's CA gives its path whatever the content, so the
    content is held to the claim on the way in — into a store, and into a registry
    directory (which checks it as it publishes)."""
    store = make_store(tmp_path / "store")
    a = store.add_text("a.txt", b"the real content\n", []).path
    b = store.add_text("b.txt", b"other content\n", []).path
    cache = tmp_path / "cache"
    assert kiln("push", "--store", str(store.root), "--to", f"file://{cache}", a, b).returncode == 0
    _swap_content(cache, a, b)
    dest = tmp_path / "dest"
    r = _copy(cache, dest, keys, a)
    assert r.returncode == 1 and "refusing its content address" in r.stderr, r.stderr
    assert a not in kiln("store", "info", "--store", str(dest), a).stdout
    reg = tmp_path / "reg"
    r = kiln(
        "copy", "--from", f"file://{cache}", "--to", f"file://{reg}", "--trusted-key", str(keys.pk_file), a
    )
    assert r.returncode == 1 and "refusing its CA" in r.stderr, r.stderr
    assert not list(reg.glob("*.narinfo"))


def test_a_copy_between_registries_takes_them_into_a_directory_not_a_server(
    tmp_path, keys, kiln_server
) -> None:
    """A server asks signatures of every upload, so the copy refuses an unsigned path
    before downloading anything for it; a directory takes it (its content checked)."""
    store = make_store(tmp_path / "store")
    ca = add_tree(store, tmp_path, "added", "content\n")
    cache = tmp_path / "cache"
    assert kiln("push", "--store", str(store.root), "--to", f"file://{cache}", ca).returncode == 0
    reg = tmp_path / "reg"
    r = kiln(
        "copy", "--from", f"file://{cache}", "--to", f"file://{reg}", "--trusted-key", str(keys.pk_file), ca
    )
    assert r.returncode == 0 and (reg / f"{ca.rsplit('/', 1)[1][:32]}.narinfo").exists(), r.stderr
    served = tmp_path / "served"
    assert kiln("registry", "init", "--dir", str(served)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(served)).stdout.strip()
    srv = kiln_server("--dir", str(served), "--trusted-key", str(keys.pk_file))
    r = kiln(
        "copy",
        "--from",
        f"file://{cache}",
        "--to",
        srv.url,
        "--token",
        tok,
        "--trusted-key",
        str(keys.pk_file),
        ca,
    )
    assert r.returncode == 1 and "0 valid signature(s) from trusted keys" in r.stderr, r.stderr
    assert not list(served.glob("nar/*"))  # (refused before anything was downloaded or sent)
