"""Interoperability with real Nix (Debian nix-bin) and a static web server (Debian nginx):

- ``nix copy --from http://<kiln serve>`` fetches and verifies kiln-added paths (and
  refuses them when the signing key is not trusted);
- the same registry directory served by nginx works for ``nix copy`` and ``kiln copy``
  (kiln falls back from ``POST /narinfo-batch`` to plain GETs).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from regkit import add_built, make_store

from kiln.registry.client import open_client
from kiln.registry.copy import to_store
from kiln.registry.push import push

HAVE_NIX = shutil.which("nix") is not None
HAVE_NGINX = shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()


DEP_FILLER = "".join(f"line {i} of the dependency\n" for i in range(150_000))


@pytest.fixture
def nix_registry(tmp_path: Path, keys):
    """A kiln store with store dir /nix/store holding a 2-path closure, pushed (signed)
    into a registry directory. The dependency's NAR is ~4 MiB, so its object holds
    several zstd frames (``narsink``): Nix must read them all."""
    store = make_store(tmp_path / "kstore", "/nix/store")
    dep = add_built(store, tmp_path, "kiln-interop-dep", f"dep {tmp_path}\n" + DEP_FILLER)
    top = add_built(store, tmp_path, "kiln-interop-top", f"top {tmp_path}", (dep,))
    reg = tmp_path / "reg"
    push(store, [top], lambda: open_client(f"file://{reg}", store_dir="/nix/store"), sign_key=keys.sk)
    return store, dep, top, reg


def nix_copy(url: str, path: str, pub: str, dest: Path) -> subprocess.CompletedProcess:
    cmd = [
        "nix", "copy", "--extra-experimental-features", "nix-command",
        "--option", "require-sigs", "true", "--option", "trusted-public-keys", pub,
        "--option", "narinfo-cache-negative-ttl", "0",
        "--from", f"{url}?trusted=0", "--to", f"local?root={dest}", path,
    ]  # fmt: skip
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


@pytest.mark.nix
@pytest.mark.skipif(not HAVE_NIX, reason="needs Debian nix-bin")
def test_nix_copy_from_kiln_serve(nix_registry, keys, other_keys, kiln_server, tmp_path) -> None:
    store, dep, top, reg = nix_registry
    srv = kiln_server("--dir", str(reg))
    bad = nix_copy(srv.url, top, other_keys.pk.to_text(), tmp_path / "nixbad")
    assert bad.returncode != 0 and "signature" in bad.stderr
    r = nix_copy(srv.url, top, keys.pk.to_text(), tmp_path / "nixroot")
    assert r.returncode == 0, r.stderr
    real = tmp_path / "nixroot" / top.lstrip("/")
    assert (real / "data").read_text().startswith("top ")
    q = subprocess.run(
        ["nix-store", "--store", f"local?root={tmp_path / 'nixroot'}", "-qR", top],
        capture_output=True,
        text=True,
    )
    assert set(q.stdout.split()) == {top, dep}
    dep_data = tmp_path / "nixroot" / dep.lstrip("/") / "data"
    assert dep_data.read_text().endswith(DEP_FILLER)


@pytest.mark.nix
@pytest.mark.skipif(not HAVE_NIX, reason="needs Debian nix-bin")
def test_nix_copy_from_kiln_serve_store(nix_registry, keys, kiln_server, tmp_path) -> None:
    store, dep, top, _reg = nix_registry
    srv = kiln_server("--store", str(store.root), "--sign-key", str(keys.sk_file))
    r = nix_copy(srv.url, top, keys.pk.to_text(), tmp_path / "nixroot")
    assert r.returncode == 0, r.stderr
    q = subprocess.run(
        ["nix-store", "--store", f"local?root={tmp_path / 'nixroot'}", "-qR", top],
        capture_output=True,
        text=True,
    )
    assert set(q.stdout.split()) == {top, dep}
    assert (tmp_path / "nixroot" / dep.lstrip("/") / "data").read_text().endswith(DEP_FILLER)


@pytest.mark.skipif(not HAVE_NGINX, reason="needs Debian nginx")
def test_same_directory_served_by_nginx(nix_registry, keys, nginx_server, tmp_path) -> None:
    _store, dep, top, reg = nix_registry
    srv = nginx_server(reg)
    dest = make_store(tmp_path / "dest", "/nix/store")
    assert to_store(srv.url, dest, [top], [keys.pk]) == 2
    assert dest.is_valid(dep) and dest.is_valid(top)
    import urllib.request

    with pytest.raises(urllib.error.HTTPError):
        urllib.request.urlopen(srv.url + "/.kiln/tokens.json")
    if HAVE_NIX:
        r = nix_copy(srv.url, top, keys.pk.to_text(), tmp_path / "nixroot")
        assert r.returncode == 0, r.stderr


def _cache_written_by_nix(nix_registry, keys, kiln_server, tmp_path: Path) -> tuple[str, Path]:  # noqa: ANN001
    """``(top, cache)``: the fixture's closure fetched by Nix from ``kiln serve``, then
    written by ``nix copy`` into the ``file://`` cache ``cache`` (zstd, signed by Nix
    with the kiln-format key)."""
    _store, _dep, top, reg = nix_registry
    srv = kiln_server("--dir", str(reg))
    nixroot = tmp_path / "nixroot"
    assert nix_copy(srv.url, top, keys.pk.to_text(), nixroot).returncode == 0
    cache = tmp_path / "nixcache"
    cmd = [
        "nix", "copy", "--extra-experimental-features", "nix-command", "--from", f"local?root={nixroot}",
        "--to", f"file://{cache}?compression=zstd&secret-key={keys.sk_file}", top,
    ]  # fmt: skip
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    return top, cache


@pytest.mark.nix
@pytest.mark.skipif(not HAVE_NIX, reason="needs Debian nix-bin")
def test_kiln_reads_a_cache_written_by_nix(nix_registry, keys, kiln_server, tmp_path) -> None:
    """Nix → kiln: a ``file://`` cache written by ``nix copy`` (zstd, signed by Nix with
    a kiln-format key) is served by ``kiln serve --dir`` and fetched by kiln."""
    top, cache = _cache_written_by_nix(nix_registry, keys, kiln_server, tmp_path)
    assert not (cache / "blobs").exists()  # only nar/: kiln serves that name too
    srv2 = kiln_server("--dir", str(cache))
    dest = make_store(tmp_path / "dest", "/nix/store")
    assert to_store(srv2.url, dest, [top], [keys.pk]) == 2
    assert (dest.real_path(top) / "data").read_text().startswith("top ")


def _listing(root: Path) -> list[str]:
    return sorted(str(p.relative_to(root)) for p in root.rglob("*"))


@pytest.mark.nix
@pytest.mark.skipif(not HAVE_NIX, reason="needs Debian nix-bin")
def test_reading_a_nix_cache_writes_nothing_into_it(nix_registry, keys, kiln_server, tmp_path) -> None:
    """``kiln copy --from file://``, ``kiln verify file://…#PATH``: readers, so a cache
    written by ``nix copy`` is left exactly as it was, and one on a read-only mount can be
    read. They made kiln's directories (``.kiln/tmp``, ``blobs/``, ``index/``) in it, and
    on a read-only mount failed with "Read-only file system"."""
    from regkit import kiln

    top, cache = _cache_written_by_nix(nix_registry, keys, kiln_server, tmp_path)
    before = _listing(cache)
    home = tmp_path / "home"
    kiln("store", "init", "--store", str(home), "--store-dir", "/nix/store")
    trust = ("--trusted-key", str(keys.pk_file))
    r = kiln("copy", "--from", f"file://{cache}", "--to", "store", "--store", str(home), *trust, top)
    assert r.returncode == 0, r.stderr
    r = kiln("verify", f"file://{cache}#{top}", "--store", str(home))
    assert r.returncode == 0, r.stdout + r.stderr
    assert _listing(cache) == before
    if os.geteuid() != 0:
        return
    subprocess.run(["mount", "--bind", str(cache), str(cache)], check=True)
    try:
        subprocess.run(["mount", "-o", "remount,bind,ro", str(cache)], check=True)
        home2 = tmp_path / "home2"
        kiln("store", "init", "--store", str(home2), "--store-dir", "/nix/store")
        r = kiln("copy", "--from", f"file://{cache}", "--to", "store", "--store", str(home2), *trust, top)
        assert r.returncode == 0 and "Read-only" not in r.stderr, r.stderr
        srv2 = kiln_server("--dir", str(cache))  # (serves it: reads work, uploads fail)
        assert to_store(srv2.url, make_store(tmp_path / "dest", "/nix/store"), [top], [keys.pk]) == 2
        srv2.close()
    finally:
        subprocess.run(["umount", "-l", str(cache)], check=False)
    assert _listing(cache) == before


def test_a_copy_to_a_new_directory_takes_the_source_store_dir(nix_registry, keys, tmp_path) -> None:
    """``kiln copy --from`` a /nix/store cache ``--to file://NEW``: the new registry is made
    with the source's StoreDir (it was made with /kiln/store, and the copy failed "store
    dirs differ", leaving it behind)."""
    from regkit import kiln

    _store, _dep, top, reg = nix_registry
    new = tmp_path / "new"
    r = kiln(
        "copy", "--from", f"file://{reg}", "--to", f"file://{new}", "--trusted-key", str(keys.pk_file), top
    )
    assert r.returncode == 0 and "copied 2 paths" in r.stdout, r.stdout + r.stderr
    assert "StoreDir: /nix/store" in (new / "nix-cache-info").read_text()
    other = tmp_path / "other"
    assert kiln("registry", "init", "--dir", str(other)).returncode == 0  # (/kiln/store)
    r = kiln(
        "copy", "--from", f"file://{reg}", "--to", f"file://{other}", "--trusted-key", str(keys.pk_file), top
    )
    assert r.returncode == 1 and "has StoreDir /kiln/store, not /nix/store" in r.stderr, r.stderr


def test_a_copy_into_a_new_store_takes_the_source_store_dir(nix_registry, keys, tmp_path) -> None:
    """``--to store`` making a new store makes it with the source's store dir (it made a
    /kiln/store one, refused the /nix/store paths and left it behind, where a second try
    with --store-dir was refused too); --store-dir still chooses."""
    import json

    from regkit import kiln

    _store, _dep, top, reg = nix_registry
    copy = ("copy", "--from", f"file://{reg}", "--to", "store", "--trusted-key", str(keys.pk_file), top)
    new = tmp_path / "new"
    r = kiln(*copy, "--store", str(new))
    assert r.returncode == 0 and "copied 2 paths" in r.stdout, r.stdout + r.stderr
    assert json.loads((new / "config.json").read_text())["store_dir"] == "/nix/store"
    r = kiln(*copy, "--store", str(tmp_path / "chosen"), "--store-dir", "/kiln/store")
    assert r.returncode == 1 and "is not in the store '/kiln/store'" in r.stderr, r.stderr
    nowhere = (copy[0], copy[1], f"file://{tmp_path / 'nowhere'}", *copy[3:])
    r = kiln(*nowhere, "--store", str(tmp_path / "n2"))
    assert r.returncode == 1 and not (tmp_path / "n2").exists(), r.stderr  # (no source: no store made)
