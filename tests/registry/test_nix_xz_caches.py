"""Caches real Nix writes with its defaults (``nix copy --to file://DIR``: xz, or
``compression=none``), which kiln neither stores nor reads (zstd only), and what kiln
says about them instead of failing obscurely:

- ``kiln serve --dir`` of such a directory answers 404 for a narinfo whose file it will
  not serve (as for a missing path, so Nix tries its next substituter) and says at
  start-up how many there are and how to re-create the cache;
- ``kiln copy --from`` such a cache blames the source's compression, not "this registry";
- an upload of an xz NAR or a ``.ls`` listing is a 415 / 400 saying what kiln stores;
- ``kiln mirror sync`` from a plain cache (no signed index) says so and points to
  ``kiln copy``, and a refused first sync leaves no destination behind;
- a zstd push (through ``kiln serve`` or into the directory) replaces such a narinfo.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from nixkit import nix_store_path
from regkit import add_chain, kiln, make_store, request

from kiln.registry.client import open_client
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.storage import open_storage

pytestmark = [pytest.mark.nix, pytest.mark.skipif(shutil.which("nix") is None, reason="needs nix-bin")]

NIX = ["nix", "--extra-experimental-features", "nix-command"]


def _nix_path(tmp: Path, name: str) -> tuple[Path, str]:
    """A path added to a throwaway Nix store (root ``tmp/nixroot``)."""
    root = tmp / "nixroot"
    return root, nix_store_path(root, tmp / "src" / name, f"{name} {tmp}\n")


def _nix_cache(tmp: Path, cache: Path, compression: str, keys, name: str) -> str:
    """A path ``nix copy`` put into the ``file://`` cache ``cache`` with ``compression``."""
    root, path = _nix_path(tmp, name)
    url = f"file://{cache}?compression={compression}&secret-key={keys.sk_file}"
    r = subprocess.run(
        [*NIX, "copy", "--from", f"local?root={root}", "--to", url, path], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    return path


def _h(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


def test_serve_answers_404_for_narinfos_naming_xz_files(tmp_path, keys, kiln_server) -> None:
    cache = tmp_path / "cache"
    xz = _nix_cache(tmp_path, cache, "xz", keys, "by-xz")
    none = _nix_cache(tmp_path, cache, "none", keys, "by-none")
    zst = _nix_cache(tmp_path, cache, "zstd", keys, "by-zstd")
    srv = kiln_server("--dir", str(cache))
    for p in (xz, none):
        assert request(f"{srv.url}/{_h(p)}.narinfo")[0] == 404  # (the fast path's lookup)
        assert request(f"{srv.url}/{_h(p)}.narinfo", "HEAD")[0] == 404  # (aiohttp's)
    status, _h2, body = request(f"{srv.url}/{_h(zst)}.narinfo")
    assert status == 200 and b"Compression: zstd" in body
    srv.stop()
    err = srv.proc.stderr.read()  # type: ignore[union-attr]
    assert "2 narinfo(s)" in err and "1 none, 1 xz" in err and "compression=zstd" in err, err
    assert err.count("not zstd") == 1  # once, not per worker or request


def test_serve_of_a_kiln_registry_says_nothing(tmp_path, keys, kiln_server) -> None:
    cache = tmp_path / "cache"
    _nix_cache(tmp_path, cache, "zstd", keys, "only-zstd")
    srv = kiln_server("--dir", str(cache))
    srv.stop()
    assert "not zstd" not in srv.proc.stderr.read()  # type: ignore[union-attr]


def test_kiln_copy_from_an_xz_cache_blames_the_source(tmp_path, keys) -> None:
    cache = tmp_path / "cache"
    path = _nix_cache(tmp_path, cache, "xz", keys, "copied")
    store = make_store(tmp_path / "kstore", "/nix/store")
    kiln("registry", "init", "--dir", str(tmp_path / "reg"), "--store-dir", "/nix/store")
    for to in (["--to", "store", "--store", str(store.root)], ["--to", str(tmp_path / "reg")]):
        r = kiln("copy", "--from", f"file://{cache}", *to, "--trusted-key", keys.pk.to_text(), path)
        assert r.returncode != 0
        assert f"source cache file://{cache} is xz-compressed" in r.stderr, r.stderr
        assert "kiln reads only zstd binary caches" in r.stderr and "compression=zstd" in r.stderr
        assert "this registry" not in r.stderr
    plain = _nix_cache(tmp_path, tmp_path / "plain", "none", keys, "plain")
    r = kiln("copy", "--from", f"file://{tmp_path / 'plain'}", "--to", "store", "--store", str(store.root),
             "--trusted-key", keys.pk.to_text(), plain)  # fmt: skip
    assert f"source cache file://{tmp_path / 'plain'} is uncompressed (Compression: none)" in r.stderr, (
        r.stderr
    )


def test_uploads_of_xz_nars_and_listings_say_what_kiln_stores(tmp_path, kiln_server) -> None:
    reg = tmp_path / "reg"
    kiln("registry", "init", "--dir", str(reg), "--store-dir", "/nix/store")
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg))
    auth = {"Authorization": f"Bearer {tok}"}
    nar = "nar/" + "1" * 52
    for key in (f"{nar}.nar.xz", f"{nar}.nar", f"{nar}.nar.bz2"):
        status, _hd, body = request(f"{srv.url}/{key}", "PUT", b"x", auth)
        assert status == 415 and b"only zstd NARs (nar/<nix32>.nar.zst)" in body, (key, body)
    status, _hd, body = request(f"{srv.url}/{'1' * 32}.ls", "PUT", b"{}", auth)
    assert status == 400 and b"write-nar-listing=false" in body, body
    assert request(f"{srv.url}/{nar}.nar.xz", "PUT", b"x")[0] == 401  # (the token first)
    assert request(f"{srv.url}/{nar}.nar.xz")[0] == 404  # (reads: a plain miss)


def _mirror(src: str, dst: Path, *extra: str) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "kiln", "mirror", "sync", src, str(dst), *extra]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=300)


def test_mirror_sync_from_a_nix_cache_points_to_kiln_copy(tmp_path, keys, kiln_server) -> None:
    cache = tmp_path / "cache"
    _nix_cache(tmp_path, cache, "zstd", keys, "mirrored")
    srv = kiln_server("--dir", str(cache))
    for src in (f"file://{cache}", srv.url):
        r = _mirror(src, tmp_path / "m")
        assert r.returncode == 1 and "publishes no index" in r.stderr and "kiln copy --from" in r.stderr, (
            r.stderr
        )
        assert not (tmp_path / "m").exists()
    (tmp_path / "m2").mkdir()
    (tmp_path / "m2" / "mine").write_text("kept\n")
    root = tmp_path / "root.json"
    root.write_text("{}")
    r = _mirror(srv.url, tmp_path / "m2", "--root", str(root))
    assert r.returncode != 0
    assert sorted(p.name for p in (tmp_path / "m2").iterdir()) == ["mine"]  # what was there stays


def test_refused_first_sync_without_root_leaves_nothing(tmp_path, keys, kiln_server) -> None:
    store = make_store(tmp_path / "store")
    paths = add_chain(store, tmp_path, 1)
    reg = tmp_path / "reg"
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    srv = kiln_server("--dir", str(reg))
    r = _mirror(srv.url, tmp_path / "m")
    assert r.returncode == 2 and "--root" in r.stderr, r.stderr
    assert not (tmp_path / "m").exists()
    r = _mirror(srv.url, tmp_path / "m", "--root", str(reg / "index/root.json"))
    assert r.returncode == 0 and "1 paths" in r.stdout, r.stderr


def test_a_zstd_push_replaces_a_narinfo_not_served(tmp_path, keys, kiln_server) -> None:
    # what the start-up warning advises: push the path again with zstd. Before, the upload
    # answered "already published" and the xz narinfo stayed, a 404 for ever
    cache = tmp_path / "cache"
    path = _nix_cache(tmp_path, cache, "xz", keys, "replaced")
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(cache)).stdout.strip()
    srv = kiln_server("--dir", str(cache), "--trusted-key", str(keys.pk_file))
    assert request(f"{srv.url}/{_h(path)}.narinfo")[0] == 404
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine 127.0.0.1\nlogin nix\npassword {tok}\n")
    root = tmp_path / "nixroot"
    to = f"{srv.url}?compression=zstd&secret-key={keys.sk_file}"
    r = subprocess.run(
        [
            *NIX,
            "copy",
            "--option",
            "netrc-file",
            str(netrc),
            "--from",
            f"local?root={root}",
            "--to",
            to,
            path,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    status, _hd, body = request(f"{srv.url}/{_h(path)}.narinfo")
    assert status == 200 and b"Compression: zstd" in body, body
    dest = make_store(tmp_path / "dest", "/nix/store")
    r = kiln(
        "copy",
        "--from",
        srv.url,
        "--to",
        "store",
        "--store",
        str(dest.root),
        "--trusted-key",
        keys.pk.to_text(),
        path,
    )
    assert r.returncode == 0 and dest.is_valid(path), r.stderr


def test_a_push_into_an_xz_cache_directory_replaces_its_narinfo(tmp_path, keys) -> None:
    """``kiln push --to file://`` of a path an xz cache holds publishes kiln's zstd
    narinfo in place of the one kiln cannot read, as a push through ``kiln serve`` does.
    Before, it said "pushed 0 of 1", left the xz narinfo (kiln copy from it then failed
    "is xz-compressed") and the zstd NAR it had written unnamed."""
    cache = tmp_path / "cache"
    path = _nix_cache(tmp_path, cache, "xz", keys, "pushed-again")
    st = str(tmp_path / "kstore")
    kiln("store", "init", "--store", st, "--store-dir", "/nix/store")
    r = kiln("store", "add", "--store", st, str(tmp_path / "src" / "pushed-again"))
    assert r.stdout.strip() == path, (r.stdout, r.stderr)  # (the same content-addressed path)
    r = kiln("push", "--store", st, "--to", f"file://{cache}", "--sign-key", str(keys.sk_file), path)
    assert r.returncode == 0 and "pushed 1 of 1" in r.stdout, r.stdout + r.stderr
    body = (cache / f"{_h(path)}.narinfo").read_text()
    assert "Compression: zstd" in body and f"Sig: {keys.pk.name}:" in body, body
    dest = str(tmp_path / "dest")
    kiln("store", "init", "--store", dest, "--store-dir", "/nix/store")
    trust = ("--trusted-key", str(keys.pk_file))
    r = kiln("copy", "--from", f"file://{cache}", "--to", "store", "--store", dest, *trust, path)
    assert r.returncode == 0, r.stderr
