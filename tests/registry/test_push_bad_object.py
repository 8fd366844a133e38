"""A store object whose bytes changed on disk is caught by ``kiln push`` itself
(``registry/pushcheck.py``), before anything of its path leaves: the error names the store
path, the object file, the recorded and the found digest, and ``kiln store verify
--repair``; neither that path nor a path referring to it is published, and after the
repair the same push completes. Against a real ``kiln serve``, a ``file://`` directory
(both hash what they are sent, and used to refuse the path naming only it) and a plain
WebDAV server (Debian's nginx), which stores what it is sent: there the corrupt bytes used
to be published under the good name. Also the upload of a NAR a registry lost (a PUT of
its own) is checked.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest
from regkit import add_chain, add_tree, kiln, make_store, run_nginx

from kiln.registry import layout
from kiln.store.hashes import Hash

HAVE_NGINX = shutil.which("nginx") is not None or Path("/usr/sbin/nginx").exists()


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


def _flip(obj: Path) -> str:
    """Change one byte of ``obj`` in place (same size); returns the nix32 sha256 of the
    bytes now there."""
    data = bytearray(obj.read_bytes())
    data[len(data) // 2] ^= 0x55
    obj.chmod(0o644)
    obj.write_bytes(bytes(data))
    return Hash.sha256_of(bytes(data)).to_nix32()


def _setup(tmp_path: Path) -> tuple:
    """A store holding a chain a <- b <- c and an independent d, b's object corrupted."""
    store = make_store(tmp_path / "store")
    a, b, c = add_chain(store, tmp_path, 3)
    d = add_tree(store, tmp_path, "d", "d\n" * 50)
    info = store.query(b)
    obj = store.object_path(b)
    store.close()
    found = _flip(obj)
    return store.root, (a, b, c, d), info, obj, found


def _assert_named(stderr: str, root: Path, b: str, info, obj: Path, found: str) -> None:
    assert f"the object of {b} in the store is corrupt: {obj} does not hash" in stderr, stderr
    assert f"expected: {info.file_hash.to_nix32()} ({info.file_size} bytes)" in stderr, stderr
    assert f"found:    {found} ({info.file_size} bytes)" in stderr, stderr
    assert f"run 'kiln store verify --repair --store {root}'" in stderr, stderr


def _registry(kind: str, tmp_path: Path, keys, kiln_server) -> tuple[str, list[str], Path]:
    """(URL, extra push arguments, directory) of a new registry of ``kind``."""
    reg = tmp_path / "reg"
    if kind == "file":
        return f"file://{reg}", [], reg
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    return srv.url, ["--token", tok], reg


@pytest.mark.parametrize(("kind", "command"), [("file", "push"), ("serve", "push"), ("serve", "copy")])
def test_push_stops_at_a_corrupt_object_and_names_it(tmp_path, keys, kiln_server, kind, command) -> None:
    root, (a, b, c, d), info, obj, found = _setup(tmp_path)
    url, extra = _registry(kind, tmp_path, keys, kiln_server)[:2]
    # (kiln copy --from store is kiln push without --sign-key: the store signs first)
    assert kiln("store", "sign", "--key", str(keys.sk_file), "--store", str(root), a, b, c, d).returncode == 0
    reg = tmp_path / "reg"

    def run() -> subprocess.CompletedProcess:
        if command == "copy":
            return kiln("copy", "--from", "store", "--to", url, c, d, "--store", str(root), *extra)
        return kiln("push", "--to", url, c, d, "--store", str(root), *extra)

    r = run()
    assert r.returncode == 1, r.stdout + r.stderr
    _assert_named(r.stderr, root, b, info, obj, found)
    assert "the registry refused" not in r.stderr  # (caught here, not by the registry)
    for p in (b, c):  # neither the bad path nor its referrer is published
        assert not (reg / layout.narinfo_key(_hp(p))).exists(), p
    assert not (reg / layout.nar_key(info.file_hash)).exists()
    assert not (reg / layout.blob_key(info.file_hash)).exists()
    # the remedy the message names works, and the push then completes
    v = kiln("store", "verify", "--repair", "--store", str(root))
    assert "repaired" in v.stdout + v.stderr, v.stdout + v.stderr
    r = run()
    assert r.returncode == 0, r.stderr
    for p in (a, b, c, d):
        assert (reg / layout.narinfo_key(_hp(p))).is_file(), p


def test_a_lost_nar_sent_again_is_checked_first(tmp_path, keys, kiln_server) -> None:
    """A published path whose NAR the registry lost gets it again by a PUT of its own
    (push's repair): that object is checked too, and the corrupt bytes never go."""
    store = make_store(tmp_path / "store")
    [a] = add_chain(store, tmp_path, 1)
    info = store.query(a)
    obj = store.object_path(a)
    store.close()
    url, extra, reg = _registry("serve", tmp_path, keys, kiln_server)
    root = tmp_path / "store"
    r = kiln("push", "--to", url, a, "--store", str(root), "--sign-key", str(keys.sk_file), *extra)
    assert r.returncode == 0, r.stderr
    for key in (layout.nar_key(info.file_hash), layout.blob_key(info.file_hash)):
        (reg / key).unlink(missing_ok=True)
    found = _flip(obj)
    r = kiln("push", "--to", url, a, "--store", str(root), *extra)
    assert r.returncode == 1, r.stderr
    _assert_named(r.stderr, root, a, info, obj, found)
    assert not (reg / layout.nar_key(info.file_hash)).exists()
    assert not (reg / layout.blob_key(info.file_hash)).exists()


DAV_CONF = """
{user}
worker_processes 1;
daemon off;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log off;
    client_body_temp_path {tmp}/body;
    client_max_body_size 0;
    server {{
        listen 127.0.0.1:{port};
        root {root};
        dav_methods PUT;
        create_full_put_path on;
    }}
}}
"""


@pytest.fixture
def dav_server(tmp_path: Path):
    """Debian's nginx taking PUTs into ``tmp_path/dav`` (a registry that stores whatever
    it is sent), stopped by pid."""
    root, tmp = tmp_path / "dav", tmp_path / "nginx"
    root.mkdir()
    tmp.mkdir()
    (root / "nix-cache-info").write_text("StoreDir: /kiln/store\nWantMassQuery: 1\nPriority: 40\n")
    user = "user root;" if os.geteuid() == 0 else ""
    srv = run_nginx(tmp, lambda port: DAV_CONF.format(user=user, tmp=tmp, port=port, root=root), "DAV")
    try:
        yield srv, root
    finally:
        srv.stop()


@pytest.mark.skipif(not HAVE_NGINX, reason="needs Debian nginx")
def test_a_server_that_stores_anything_never_gets_the_corrupt_object(tmp_path, keys, dav_server) -> None:
    srv, dav = dav_server
    root, (a, b, c, d), info, obj, found = _setup(tmp_path)
    r = kiln("push", "--to", srv.url, c, d, "--store", str(root), "--sign-key", str(keys.sk_file))
    assert r.returncode == 1, r.stderr
    assert not (dav / layout.nar_key(info.file_hash)).exists()  # (it took the corrupt bytes there)
    for p in (b, c):
        assert not (dav / layout.narinfo_key(_hp(p))).exists(), p
    _assert_named(r.stderr, root, b, info, obj, found)


@pytest.mark.skipif(not HAVE_NGINX, reason="needs Debian nginx")
def test_a_push_to_a_plain_put_server_succeeds(tmp_path, keys, dav_server) -> None:
    """Such a server has no ``POST /publish-index`` (nginx: 405): a push of sound paths
    is a success with no index, not an error after everything was uploaded."""
    srv, dav = dav_server
    root, (a, b, c, d), info, obj, found = _setup(tmp_path)
    r = kiln("push", "--to", srv.url, a, d, "--store", str(root), "--sign-key", str(keys.sk_file))
    assert r.returncode == 0, r.stderr
    for p in (a, d):
        assert (dav / layout.narinfo_key(_hp(p))).exists(), p
