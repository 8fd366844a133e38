"""``kiln serve`` promises an object immutable (``ETag: "sha256:<hex>"``, a year of
``immutable`` caching, 304 for that tag) only for a file it knows hashes to its name
(``registry/objtrust.py``): a corrupt one would otherwise be pinned by HTTP caches after
``registry verify --delete-bad`` and a push brought the good bytes back under the same name."""

from __future__ import annotations

import os
from pathlib import Path

from regkit import kiln, make_store, request

from kiln.registry import layout
from kiln.store import narinfo as ni

IMMUTABLE = "public, max-age=31536000, immutable"


def _info(reg: Path, store, path: str) -> ni.NarInfo:  # noqa: ANN001 - a LocalStore
    return ni.parse((reg / layout.narinfo_key(path.rsplit("/", 1)[1][:32])).read_text(), store.store_dir)


def _flip(f: Path) -> None:
    with open(f, "r+b") as fh:  # in place, same size: every link to it sees it
        data = bytearray(fh.read())
        data[len(data) // 2] ^= 0x40
        fh.seek(0)
        fh.write(data)


def test_a_corrupt_object_is_served_uncached(pushed) -> None:
    store, _chain, leaf, reg, _tok, srv = pushed
    info = _info(reg, store, leaf)
    blob, nar = layout.blob_key(info.file_hash), layout.nar_key(info.file_hash)
    tag = f'"sha256:{info.file_hash.hex}"'
    for key in (blob, nar):
        st, h, body = request(f"{srv.url}/{key}")
        assert st == 200 and h["cache-control"] == IMMUTABLE and h["etag"] == tag
        assert body == (reg / key).read_bytes()
        assert request(f"{srv.url}/{key}", headers={"If-None-Match": tag})[0] == 304
    _flip(reg / blob)
    for key in (blob, nar):
        for method in ("GET", "HEAD"):
            st, h, body = request(f"{srv.url}/{key}", method)
            assert st == 200 and h["cache-control"] == "no-store", (key, method, h)
            assert h["etag"] != tag
        # its digest is no tag of these bytes: the whole (corrupt) file, never a 304
        st, h, body = request(f"{srv.url}/{key}", headers={"If-None-Match": tag})
        assert st == 200 and body == (reg / key).read_bytes() and h["cache-control"] == "no-store"
    _flip(reg / blob)  # (flipped back: good again, and promised again)
    st, h, _b = request(f"{srv.url}/{blob}")
    assert h["cache-control"] == IMMUTABLE and h["etag"] == tag
    err = srv.proc.stderr
    srv.stop()
    assert "does not hash to its name (corrupt)" in err.read()


def test_large_objects_are_promised_on_kilns_record_only(tmp_path, keys, kiln_server) -> None:
    """A large object is not hashed on a GET: it is immutable when the digest record
    kiln wrote on verifying it is there for its size and the file was not modified since;
    without one (a file written by a tool that does not verify), the narinfo TTL."""
    store = make_store(tmp_path / "store")
    paths = []
    for name in ("big1", "big2"):
        src = tmp_path / name
        src.write_bytes(os.urandom(2 << 20))
        paths.append(store.add_path(src).path)
    reg = tmp_path / "reg"
    r = kiln(
        "push", "--store", str(store.root), *paths, "--to", f"file://{reg}", "--sign-key", str(keys.sk_file)
    )  # fmt: skip
    assert r.returncode == 0, r.stderr
    one, two = (_info(reg, store, p) for p in paths)
    assert (reg / ".kiln/nars" / one.file_hash.hex).exists()
    (reg / ".kiln/nars" / two.file_hash.hex).unlink()  # as if `nix copy` or rsync wrote it
    srv = kiln_server("--dir", str(reg))
    st, h, _b = request(f"{srv.url}/{layout.blob_key(one.file_hash)}", "HEAD")
    assert st == 200 and h["cache-control"] == IMMUTABLE and h["etag"] == f'"sha256:{one.file_hash.hex}"'
    st, h, body = request(f"{srv.url}/{layout.nar_key(two.file_hash)}")
    assert st == 200 and h["cache-control"] == "public, max-age=3600" and "sha256" not in h["etag"]
    assert body == (reg / layout.nar_key(two.file_hash)).read_bytes()
    # written to after kiln's record: no longer vouched for
    big = reg / layout.blob_key(one.file_hash)
    data = big.read_bytes()
    big.write_bytes(data)  # (same bytes, a later mtime: the record cannot tell)
    st, h, _b = request(f"{srv.url}/{layout.blob_key(one.file_hash)}", "HEAD")
    assert h["cache-control"] == "public, max-age=3600", h


def test_a_stores_objects_are_promised(tmp_path, kiln_server) -> None:
    store = make_store(tmp_path / "store")
    src = tmp_path / "f"
    src.write_text("x\n")
    info = store.query(store.add_path(src).path)
    srv = kiln_server("--store", str(store.root))
    st, h, _b = request(f"{srv.url}/{layout.nar_key(info.file_hash)}", "HEAD")
    assert st == 200 and h["cache-control"] == IMMUTABLE and h["etag"] == f'"sha256:{info.file_hash.hex}"'
