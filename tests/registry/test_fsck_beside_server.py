"""``kiln registry verify --delete-bad`` beside a running ``kiln serve`` of the same
directory: the server checks what it remembers against the files on every request
(``registry/fsck.py``'s docstring lists what), so every way of asking for a deleted path
or object misses at once, and a push brings them back; only a server of an older kiln,
which holds ``.kiln/serving.lock``, still makes it refuse."""

from __future__ import annotations

import json
import os

from regkit import kiln, request

from kiln.registry import layout
from kiln.registry.backends import DirSource
from kiln.registry.fsck import hold_serving_lock
from kiln.store import narinfo as ni

HTTP_GET = "GET {} HTTP/1.1\r\nHost: x\r\n\r\n"


def _ask(url: str, h: str, info: ni.NarInfo) -> dict:
    body = json.dumps(
        {"hashes": [h], "blobs": [f"sha256:{info.file_hash.hex}"], "nar_hashes": [info.nar_hash.hex]}
    ).encode()
    st, _h, out = request(url + "/narinfo-batch", "POST", body, {"Content-Type": "application/json"})
    assert st == 200, out
    return json.loads(out)


def _raw_get(url: str, key: str) -> bytes:
    """One GET as the narinfo fast path answers it (a lone request with only Host)."""
    import socket
    from urllib.parse import urlparse

    u = urlparse(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(HTTP_GET.format("/" + key).encode())
        return s.recv(65536)


def test_delete_bad_beside_a_live_server(pushed, keys) -> None:
    store, chain, leaf, reg, tok, srv = pushed
    h = leaf.rsplit("/", 1)[1][:32]
    info = ni.parse((reg / layout.narinfo_key(h)).read_text(), store.store_dir)
    blob = reg / layout.blob_key(info.file_hash)
    # everything the server could remember about the path, asked for first
    assert _raw_get(srv.url, layout.narinfo_key(h)).startswith(b"HTTP/1.1 200")
    assert request(f"{srv.url}/{layout.narinfo_key(h)}", "HEAD")[0] == 200
    assert request(f"{srv.url}/{layout.blob_key(info.file_hash)}")[0] == 200
    before = _ask(srv.url, h, info)
    assert h in before["narinfos"] and before["blobs"] and before["by_nar_hash"]
    with open(blob, "r+b") as f:  # rot, in place
        data = bytearray(f.read())
        data[len(data) // 2] ^= 0x40
        f.seek(0)
        f.write(data)

    r = kiln("registry", "verify", "--dir", str(reg), "--delete-bad", "--json")
    assert r.returncode == 1, r.stderr  # (problems found, and removed)
    removed = json.loads(r.stdout)["removed"]
    assert layout.narinfo_key(h) in removed and layout.blob_key(info.file_hash) in removed

    raw = _raw_get(srv.url, layout.narinfo_key(h))
    assert raw.startswith(b"HTTP/1.1 404"), raw[:200]
    assert request(f"{srv.url}/{layout.narinfo_key(h)}", "HEAD")[0] == 404
    for key in (layout.blob_key(info.file_hash), layout.nar_key(info.file_hash)):
        assert request(f"{srv.url}/{key}")[0] == 404
    after = _ask(srv.url, h, info)
    assert after["narinfos"] == {} and after["blobs"] == [] and after.get("by_nar_hash", {}) == {}
    st, _h, body = request(srv.url + "/narinfo-closure/" + h)
    assert st == 200 and json.loads(body)["narinfos"] == {}

    # a push sees it missing and uploads it again, through the same server
    r = kiln(
        "push", "--store", str(store.root), leaf, "--to", srv.url, "--token", tok, "--sign-key", str(keys.sk_file)
    )  # fmt: skip
    assert r.returncode == 0 and "pushed 1 of 1 paths (1 NARs" in r.stdout, (r.stdout, r.stderr)
    st, hd, body = request(f"{srv.url}/{layout.blob_key(info.file_hash)}")
    assert st == 200 and body == blob.read_bytes() and hd["etag"] == f'"sha256:{info.file_hash.hex}"'
    assert h in _ask(srv.url, h, info)["narinfos"]
    assert kiln("registry", "verify", "--dir", str(reg)).returncode == 0


def test_a_server_of_an_older_kiln_still_makes_it_refuse(pushed) -> None:
    """Older servers took ``.kiln/serving.lock`` shared for their lifetime (some of them
    cached narinfos without checking the files): one that holds it still stops a deletion."""
    _store, _chain, _leaf, reg, _tok, _srv = pushed
    fd = hold_serving_lock(DirSource(reg), exclusive=False)  # (what such a server did)
    assert fd is not None
    try:
        r = kiln("registry", "verify", "--dir", str(reg), "--delete-bad")
        assert r.returncode == 1 and "a kiln serve of an older kiln is using" in r.stderr, r.stderr
    finally:
        os.close(fd)
    assert kiln("registry", "verify", "--dir", str(reg), "--delete-bad").returncode == 0
