"""``kiln mirror sync``: verified, resumable, idempotent, and never half-published."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from clikit import said_until
from regkit import add_chain, add_tree, make_store

from kiln.registry import index as ix
from kiln.registry import layout
from kiln.registry.client import open_client
from kiln.registry.mirror import MirrorError, sync
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.storage import open_storage


@pytest.fixture
def source(tmp_path: Path, keys, kiln_server):
    """A served registry with 4 paths and a published index; returns (store, paths, dir, url)."""
    store = make_store(tmp_path / "store")
    paths = add_chain(store, tmp_path, 3) + [add_tree(store, tmp_path, "big", "data\n" * 50000)]
    reg = tmp_path / "src"
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    return store, paths, reg, srv.url


def _index_version(d: Path) -> int:
    ts = json.loads((d / "index/timestamp.json").read_bytes())["signed"]
    return ts["meta"]["snapshot.json"]["version"]


def test_sync_then_nothing_to_do(source, keys, tmp_path) -> None:
    _store, paths, reg, url = source
    dst = tmp_path / "mirror"
    root = (reg / "index/root.json").read_bytes()
    rep = sync(url, dst, root=root, trusted=[keys.pk])
    assert (rep.paths, rep.narinfos_fetched, rep.blobs_fetched) == (4, 4, 4)
    for p in paths:
        h = p.split("/")[-1][:32]
        assert (dst / f"{h}.narinfo").read_bytes() == (reg / f"{h}.narinfo").read_bytes()
    assert (dst / "index/timestamp.json").read_bytes() == (reg / "index/timestamp.json").read_bytes()
    rep = sync(url, dst)  # pinned root remembered; second sync transfers nothing
    assert (rep.narinfos_fetched, rep.blobs_fetched, rep.bytes_fetched) == (0, 0, 0)
    # the mirror is itself a verifiable registry: a second-level mirror syncs from it
    rep = sync(f"file://{dst}", tmp_path / "mirror2", root=root, trusted=[keys.pk])
    assert rep.blobs_fetched == 4


def test_small_blobs_travel_in_batches(source, keys, tmp_path, monkeypatch) -> None:
    """From a kiln server, small blobs come a few hundred per ``POST /blob-batch`` (each
    verified as it arrives), not one round trip per path."""
    from kiln.registry.httpclient import HttpClient

    store, paths, reg, url = source
    more = [add_tree(store, tmp_path, f"small{i}", f"{i}\n") for i in range(30)]
    push(store, more, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    calls = {"download": 0, "blob_batch": 0}
    for name in calls:
        real = getattr(HttpClient, name)

        def counted(self, *a, _real=real, _name=name, **kw):  # noqa: ANN001, ANN002, ANN003, ANN202
            calls[_name] += 1
            return _real(self, *a, **kw)

        monkeypatch.setattr(HttpClient, name, counted)
    rep = sync(url, tmp_path / "m", root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    assert rep.blobs_fetched == 34 and calls == {"download": 0, "blob_batch": 1}
    for p in paths + more:
        h = p.split("/")[-1][:32]
        assert (tmp_path / "m" / f"{h}.narinfo").read_bytes() == (reg / f"{h}.narinfo").read_bytes()


def test_a_truncated_blob_already_in_the_mirror_is_fetched_again(source, keys, tmp_path) -> None:
    """A blob left empty or short (a crash before its fsync, a hand edit) is not trusted
    for being there: a sync that needs it fetches it again before publishing. (A sync
    whose index has not changed checks nothing: that is what makes it cheap.)"""
    store, paths, reg, url = source
    dst = tmp_path / "mirror"
    root = (reg / "index/root.json").read_bytes()
    info = store.query(paths[-1])
    blob = dst / layout.blob_key(info.file_hash)
    blob.parent.mkdir(parents=True)
    blob.write_bytes(b"")  # planted before the first sync
    rep = sync(url, dst, root=root, trusted=[keys.pk])
    assert rep.blobs_fetched == 4
    want = (reg / layout.nar_key(info.file_hash)).read_bytes()
    assert blob.read_bytes() == want and (dst / layout.nar_key(info.file_hash)).read_bytes() == want


def test_tampered_blob_fails_loudly_and_mirror_keeps_last_good(source, keys, tmp_path) -> None:
    store, paths, reg, url = source
    dst = tmp_path / "mirror"
    root = (reg / "index/root.json").read_bytes()
    sync(url, dst, root=root)
    good_ts = (dst / "index/timestamp.json").read_bytes()
    # the source gains a path whose blob is then tampered with
    new = add_tree(store, tmp_path / "n", "new", "new content\n" * 1000)
    push(store, [new], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    info = store.query(new)
    blob = reg / layout.blob_key(info.file_hash)
    data = bytearray(blob.read_bytes())
    data[len(data) // 2] ^= 0x55
    blob.write_bytes(bytes(data))
    with pytest.raises(MirrorError, match=new.split("/")[-1]):
        sync(url, dst)
    assert (dst / "index/timestamp.json").read_bytes() == good_ts
    assert not (dst / f"{new.split('/')[-1][:32]}.narinfo").exists()
    assert not (dst / layout.blob_key(info.file_hash)).exists()
    # the source is repaired: the interrupted sync resumes and fetches only that blob
    blob.unlink()
    (reg / layout.nar_key(info.file_hash)).unlink()
    push(store, [new], lambda: open_client(f"file://{reg}", store_dir=store.store_dir))
    rep = sync(url, dst)
    assert (rep.narinfos_fetched, rep.blobs_fetched) == (1, 1)
    assert _index_version(dst) == _index_version(reg)


def test_rollback_and_freeze_refused(source, keys, tmp_path) -> None:
    store, _paths, reg, url = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes())
    old_ts = (reg / "index/timestamp.json").read_bytes()
    publish_index(open_storage(reg), keys.sk)
    sync(url, dst)
    (reg / "index/timestamp.json").write_bytes(old_ts)  # source (or the wire) replays an old state
    with pytest.raises(ix.RollbackError):
        sync(url, dst)
    # a timestamp that expired (signed with a backdated clock) is a freeze attack
    import datetime as dt

    prev = json.loads((dst / "index/timestamp.json").read_bytes())["signed"]
    stale = dict(
        prev, version=prev["version"] + 1, expires=ix.expiry(ix.utcnow() - dt.timedelta(days=2), hours=1)
    )
    (reg / "index/timestamp.json").write_bytes(ix.sign_envelope(stale, [keys.sk]))
    with pytest.raises(ix.FreezeError):
        sync(url, dst)


def test_first_sync_needs_pinned_root(source, tmp_path) -> None:
    _store, _paths, _reg, url = source
    with pytest.raises(MirrorError, match="--root"):
        sync(url, tmp_path / "m")


def _sync_cli(url: str, dst: Path, reg: Path, *extra: str) -> subprocess.CompletedProcess:
    """``kiln mirror sync URL DST --root REG/index/root.json EXTRA...``."""
    cmd = [
        sys.executable,
        "-m",
        "kiln",
        "mirror",
        "sync",
        url,
        str(dst),
        "--root",
        str(reg / "index/root.json"),
    ]
    return subprocess.run([*cmd, *extra], capture_output=True, text=True)


def test_cli(source, keys, tmp_path) -> None:
    _store, _paths, reg, url = source
    r = _sync_cli(url, tmp_path / "m", reg)
    assert r.returncode == 0, r.stderr
    assert "4 paths, 4 narinfos and 4 blobs" in r.stdout


def test_a_second_sync_into_the_same_mirror_waits_for_the_first(source, keys, tmp_path) -> None:
    """Two syncs into one mirror would each publish the index they verified, and the
    one that finished last could roll the mirror back: a sync holds the mirror's lock
    from reading its state to publishing, and a second one says it waits."""
    import threading
    import time

    from kiln.registry.dirlock import MIRROR_LOCK, dir_lock

    _store, _paths, reg, url = source
    dst = tmp_path / "m"
    assert _sync_cli(url, dst, reg).returncode == 0
    held, release = threading.Event(), threading.Event()

    def first_sync() -> None:  # (the lock is what a running sync holds)
        with dir_lock(open_storage(dst), MIRROR_LOCK):
            held.set()
            release.wait(60)

    t = threading.Thread(target=first_sync)
    t.start()
    held.wait(10)
    p = subprocess.Popen(
        [sys.executable, "-m", "kiln", "mirror", "sync", url, str(dst)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    # (what it says up to its waiting line: a loaded machine may start it late)
    said = said_until(p.stderr, "waiting for another mirror sync", 60)
    assert said.splitlines()[-1] == f"waiting for another mirror sync into {dst} to finish", said
    time.sleep(0.5)
    assert p.poll() is None  # still waiting
    release.set()
    t.join()
    _out, err = p.communicate(timeout=60)
    assert p.returncode == 0, said + err


def test_registry_admin_cli(tmp_path, keys) -> None:
    from regkit import Keys

    def kiln(*a: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kiln", *a], capture_output=True, text=True)

    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg), "--store-dir", "/kiln/store").returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "read", "--dir", str(reg)).stdout.strip()
    listed = kiln("registry", "token", "list", "--dir", str(reg)).stdout
    tid = tok.split("_")[1]
    assert tid in listed and "read" in listed
    r = kiln("registry", "token", "revoke", "--dir", str(reg), tid)
    assert r.returncode == 0 and f"revoked token {tid}" in r.stdout and "scopes read" in r.stdout, r
    assert tid not in kiln("registry", "token", "list", "--dir", str(reg)).stdout
    r = kiln("registry", "token", "revoke", "--dir", str(reg), tid)
    assert r.returncode == 1 and f"no token with id {tid}" in r.stderr, r
    # a file that is not a narinfo is named, not an internal error (and nothing published)
    junk = reg / ("a" * 32 + ".narinfo")
    for body in (b"hello\n", b"StorePath: \xff\n"):
        junk.write_bytes(body)
        r = kiln("registry", "publish-index", "--dir", str(reg), "--key", str(keys.sk_file))
        assert r.returncode == 1 and f"{junk.name} is not a narinfo" in r.stderr, r.stderr
        assert not list(reg.glob("index/*.json"))
    junk.unlink()
    r = kiln("registry", "publish-index", "--dir", str(reg), "--key", str(keys.sk_file))
    assert r.returncode == 0 and "index version 1" in r.stdout
    new = Keys(tmp_path, "kiln-test-2")
    r = kiln(
        "registry",
        "rotate-root",
        "--dir",
        str(reg),
        "--old-key",
        str(keys.sk_file),
        "--new-key",
        str(new.sk_file),
    )
    assert r.returncode == 0 and "root version 2" in r.stdout
    r = kiln("registry", "publish-index", "--dir", str(reg), "--key", str(keys.sk_file))
    assert r.returncode == 1 and "not a" in r.stderr  # the old key no longer signs


def test_a_mirror_repairs_bit_rot_after_verify_delete_bad(source, keys, tmp_path) -> None:
    """A blob corrupted in place keeps its size, so a sync would never notice it;
    ``registry verify --delete-bad`` unpublishes the path and the next sync restores it."""
    from kiln.registry.backends import DirSource
    from kiln.registry.fsck import verify_dir
    from kiln.store import narinfo as ni

    store, paths, reg, url = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    h = paths[-1].split("/")[-1][:32]
    info = ni.parse((dst / f"{h}.narinfo").read_text(), store.store_dir)
    with open(dst / layout.blob_key(info.file_hash), "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    assert sync(url, dst).blobs_fetched == 0  # unchanged index: nothing is re-read
    rep = verify_dir(DirSource(dst), trusted=[keys.pk], sigs_needed=1, delete_bad=True, progress=False)
    assert [p.path for p in rep.problems] == [paths[-1]] * len(rep.problems) and rep.problems
    rep2 = sync(url, dst)
    assert (rep2.narinfos_fetched, rep2.blobs_fetched) == (1, 1)
    again = verify_dir(DirSource(dst), trusted=[keys.pk], sigs_needed=1, progress=False)
    assert again.checked == 4 and again.problems == ()


def test_cli_syncs_a_private_registry_with_a_token(tmp_path, keys, kiln_server) -> None:
    """``kiln mirror sync --token`` (or ``KILN_REGISTRY_TOKEN``) reads a ``--private``
    registry; there was no way to give one."""
    from kiln.registry.auth import TokenStore

    store = make_store(tmp_path / "store")
    paths = add_chain(store, tmp_path, 2)
    reg = tmp_path / "src"
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    token = TokenStore(open_storage(reg)).create(["read"])
    srv = kiln_server("--dir", str(reg), "--private", "--trusted-key", str(keys.pk_file))
    r = _sync_cli(srv.url, tmp_path / "m", reg)
    assert r.returncode == 1 and "HTTP 401" in r.stderr, r.stderr
    r = _sync_cli(srv.url, tmp_path / "m", reg, "--token", token)
    assert r.returncode == 0, r.stderr
    assert "2 paths, 2 narinfos and 2 blobs" in r.stdout


def test_a_redirect_to_an_origin_without_the_index_says_so(source, keys, tmp_path) -> None:
    """A source (a CDN front, say) that redirects ``index/timestamp.json`` to another
    origin answering 404 is named with where it went, not as "publishes no index"."""
    import threading
    from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

    store, _paths, reg, url = source
    info = f"StoreDir: {store.store_dir}\n".encode()

    class Empty(BaseHTTPRequestHandler):  # a binary cache without an index
        def do_GET(self) -> None:  # noqa: N802 - http.server's name
            if self.path != "/nix-cache-info":
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(info)))
            self.end_headers()
            self.wfile.write(info)

        def log_message(self, *a: object) -> None:
            pass

    empty = ThreadingHTTPServer(("127.0.0.1", 0), Empty)
    elsewhere = f"http://127.0.0.1:{empty.server_address[1]}"

    class Front(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            to = elsewhere if self.path.startswith("/index/timestamp.json") else url
            self.send_response(302)
            self.send_header("Location", to + self.path)
            self.send_header("Content-Length", "0")
            self.end_headers()

        do_POST = do_GET  # noqa: N815 - narinfo-batch and friends go to the registry too

        def log_message(self, *a: object) -> None:
            pass

    front = ThreadingHTTPServer(("127.0.0.1", 0), Front)
    for s in (empty, front):
        threading.Thread(target=s.serve_forever, daemon=True).start()
    try:
        root = (reg / "index/root.json").read_bytes()
        with pytest.raises(ix.NoIndex) as e:
            sync(f"http://127.0.0.1:{front.server_address[1]}", tmp_path / "m", root=root, trusted=[keys.pk])
        assert f"redirects index/timestamp.json to {elsewhere}/index/timestamp.json" in str(e.value)
        with pytest.raises(ix.NoIndex, match="publishes no index"):  # a plain 404 still reads so
            sync(elsewhere, tmp_path / "m2", root=root, trusted=[keys.pk])
    finally:
        for s in (empty, front):
            s.shutdown()
            s.server_close()
