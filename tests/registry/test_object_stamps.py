"""A large object is served immutable (``ETag: "sha256:<hex>"``, a year of caching) on the
word of kiln's digest record only while the file is the very one kiln verified: the record
holds its stamp (device, inode, size, mtime, ctime: ``registry/objstamp.py``) and the file
must still have it. An mtime set back (a clock step back, ``touch -d``, ``cp -p``, ``rsync
-t``, a tar restore) once made changed bytes look "not modified since the record"."""

from __future__ import annotations

import os
import time
from pathlib import Path

from regkit import kiln, make_store, push_cli, request

from kiln.registry import layout
from kiln.registry.client import open_client
from kiln.registry.mirror import sync
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.storage import open_storage
from kiln.registry.verify import Digests
from kiln.store import narinfo as ni

IMMUTABLE = "public, max-age=31536000, immutable"
REVALIDATED = "public, max-age=3600"


def _big(tmp_path: Path, name: str = "big"):  # noqa: ANN202 - (store, path)
    store = make_store(tmp_path / "store")
    src = tmp_path / name
    src.write_bytes(os.urandom(3 << 20))  # incompressible: a 3 MiB object, past RECORD_MIN
    return store, store.add_path(src).path


def _info(reg: Path, store, path: str) -> ni.NarInfo:  # noqa: ANN001 - a LocalStore
    return ni.parse((reg / layout.narinfo_key(path.rsplit("/", 1)[1][:32])).read_text(), store.store_dir)


def _headers(url: str, key: str) -> tuple[str, str]:
    st, h, _b = request(f"{url}/{key}", "HEAD")
    assert st == 200, (key, st)
    return h["cache-control"], h["etag"]


def test_changed_bytes_with_an_old_mtime_are_not_promised(tmp_path, keys, kiln_server) -> None:
    """Uploaded over HTTP (the server's write path records the stamp), promised; one byte
    changed in place (same size) and the mtime set an hour back: revalidated, never
    immutable again (the mtime-only check called it unmodified since the record)."""
    store, path = _big(tmp_path)
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    r = push_cli(store, [path], srv.url, tok, keys.sk_file)
    assert r.returncode == 0, r.stderr
    info = _info(reg, store, path)
    keys_ = (layout.blob_key(info.file_hash), layout.nar_key(info.file_hash))
    tag = f'"sha256:{info.file_hash.hex}"'
    for key in keys_:
        assert _headers(srv.url, key) == (IMMUTABLE, tag)
    obj = reg / keys_[0]
    before = obj.stat()
    with open(obj, "r+b") as f:  # in place: both names see it
        f.seek(before.st_size // 2)
        b = f.read(1)
        f.seek(before.st_size // 2)
        f.write(bytes([b[0] ^ 0xFF]))
    back = time.time() - 3600
    os.utime(obj, (back, back))
    for key in keys_:
        cc, etag = _headers(srv.url, key)
        assert cc == REVALIDATED and "sha256" not in etag, (key, cc, etag)
    # and a cached copy's tag is not answered 304 for these bytes
    st, h, body = request(f"{srv.url}/{keys_[1]}", headers={"If-None-Match": tag})
    assert st == 200 and body == obj.read_bytes() and h["cache-control"] == REVALIDATED


def test_a_copy_with_its_times_kept_is_not_promised(tmp_path, keys, kiln_server) -> None:
    """Other bytes put in place by a copy that keeps the times (``cp -p`` of a bad
    backup): a new inode with the old mtime is no file kiln verified."""
    store, path = _big(tmp_path)
    reg = tmp_path / "reg"
    push(store, [path], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    info = _info(reg, store, path)
    blob = reg / layout.blob_key(info.file_hash)
    srv = kiln_server("--dir", str(reg))
    assert _headers(srv.url, layout.blob_key(info.file_hash))[0] == IMMUTABLE
    st = blob.stat()
    bad = tmp_path / "bad"
    bad.write_bytes(os.urandom(st.st_size))
    os.utime(bad, ns=(st.st_atime_ns, st.st_mtime_ns))  # as cp -p / rsync -t leave it
    os.replace(bad, blob)
    assert _headers(srv.url, layout.blob_key(info.file_hash))[0] == REVALIDATED


def test_a_record_without_stamps_vouches_for_nothing(tmp_path, keys, kiln_server) -> None:
    """A digest record written before stamps (the same digests, no ``stamps``): the object
    is served revalidated (not hashed on a GET), though the record is newer than it."""
    store, path = _big(tmp_path)
    reg = tmp_path / "reg"
    push(store, [path], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    info = _info(reg, store, path)
    rec = reg / ".kiln/nars" / info.file_hash.hex
    got = Digests.from_record(rec.read_bytes(), info.file_hash)
    assert got is not None and b'"stamps"' in rec.read_bytes()
    rec.write_bytes(got.to_record())  # the old format
    srv = kiln_server("--dir", str(reg))
    cc, etag = _headers(srv.url, layout.nar_key(info.file_hash))
    assert cc == REVALIDATED and "sha256" not in etag
    # kiln registry verify reads it whole, finds it good and unchanged: it vouches for it
    r = kiln("registry", "verify", "--dir", str(reg))
    assert r.returncode == 0, r.stderr
    assert b'"stamps"' in rec.read_bytes()
    for key in (layout.nar_key(info.file_hash), layout.blob_key(info.file_hash)):
        cc, etag = _headers(srv.url, key)
        assert "immutable" in cc and etag == f'"sha256:{info.file_hash.hex}"', (key, cc, etag)


def test_a_mirror_sync_vouches_for_the_objects_it_places(tmp_path, keys, kiln_server) -> None:
    """A mirror's fetched object, and one a ``--rehash`` sync renamed over a bad file,
    are served immutable from the mirror: the record's stamp is taken after every link
    (each changes the ctime), and the bad file's is never recorded."""
    store, path = _big(tmp_path)
    src = tmp_path / "src"
    push(store, [path], lambda: open_client(f"file://{src}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(src), keys.sk)
    up = kiln_server("--dir", str(src), "--trusted-key", str(keys.pk_file))
    dst = tmp_path / "mirror"
    sync(up.url, dst, root=(src / "index/root.json").read_bytes(), trusted=[keys.pk])
    info = _info(dst, store, path)
    tag = f'"sha256:{info.file_hash.hex}"'
    blob, nar = layout.blob_key(info.file_hash), layout.nar_key(info.file_hash)
    (dst / nar).unlink()
    with open(dst / blob, "r+b") as f:  # rot that keeps the size, under one name only
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 1]))
    rep = sync(up.url, dst, full=True, rehash=True)
    assert rep.objects_repaired == 1, rep
    assert (dst / blob).read_bytes() == (src / blob).read_bytes() == (dst / nar).read_bytes()
    srv = kiln_server("--dir", str(dst))
    for key in (blob, nar):
        assert _headers(srv.url, key) == (IMMUTABLE, tag)
