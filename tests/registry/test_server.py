"""``kiln serve --dir``: read API, write API, auth, and every refusal path, against a
real server process on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import zstandard
from regkit import add_tree, make_store, request

from kiln.registry import layout
from kiln.registry.dirclient import DirClient
from kiln.store import narinfo as ni
from kiln.store.hashes import Hash
from kiln.store.pathinfo import PathInfo
from kiln.store.signing import sign_info


def _setup(tmp: Path, keys, *extra: str):
    """A store with one path, a registry dir with a write and a read token, a server."""
    store = make_store(tmp / "store")
    path = add_tree(store, tmp, "hello", "hello world\n" * 100)
    info = store.query(path)
    reg = tmp / "reg"
    DirClient(str(reg), "/kiln/store")
    from kiln.registry.auth import TokenStore
    from kiln.registry.storage import open_storage

    ts = TokenStore(open_storage(reg))
    return store, path, info, reg, ts.create(["write"]), ts.create(["read"])


def _narinfo_text(info: PathInfo, key) -> str:
    signed = PathInfo(
        **{
            **{f: getattr(info, f) for f in PathInfo.__slots__ if f != "sigs"},
            "sigs": (sign_info(info, key),),
        }
    )
    return ni.NarInfo.from_pathinfo(signed, layout.nar_key(info.file_hash), "zstd").render()


def _upload(url: str, store, path: str, info: PathInfo, key, token: str) -> tuple[int, int]:
    auth = {"Authorization": f"Bearer {token}"}
    body = store.object_path(path).read_bytes()
    s1, _, _ = request(f"{url}/{layout.nar_key(info.file_hash)}", "PUT", body, auth)
    s2, _, msg = request(
        f"{url}/{layout.narinfo_key(path.split('/')[-1][:32])}",
        "PUT",
        _narinfo_text(info, key).encode(),
        auth,
    )
    return s1, s2


@pytest.fixture
def setup(tmp_path: Path, keys, kiln_server):
    store, path, info, reg, wtok, rtok = _setup(tmp_path, keys)
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file), "--max-body-size", "1000000")
    return store, path, info, reg, wtok, rtok, srv


def test_read_api_and_headers(setup, keys) -> None:
    store, path, info, reg, wtok, _rtok, srv = setup
    assert _upload(srv.url, store, path, info, keys.sk, wtok) == (201, 201)
    s, h, body = request(f"{srv.url}/nix-cache-info")
    assert s == 200 and b"StoreDir: /kiln/store" in body and b"WantMassQuery: 1" in body
    hp = path.split("/")[-1][:32]
    s, h, body = request(f"{srv.url}/{hp}.narinfo")
    assert s == 200 and h["content-type"].startswith("text/x-nix-narinfo")
    parsed = ni.parse(body.decode(), "/kiln/store")
    assert parsed.path == path and parsed.compression == "zstd" and parsed.sigs
    blob = f"{srv.url}/{layout.blob_key(info.file_hash)}"
    s, h, body = request(blob, "HEAD")
    assert (
        s == 200
        and h["etag"] == f'"sha256:{info.file_hash.hex}"'
        and int(h["content-length"]) == info.file_size
    )
    assert "immutable" in h["cache-control"] and h["accept-ranges"] == "bytes"
    s, h, full = request(blob)
    assert s == 200 and Hash.sha256_of(full) == info.file_hash
    s, h, part = request(blob, headers={"Range": "bytes=10-19"})
    assert s == 206 and part == full[10:20] and h["content-range"] == f"bytes 10-19/{len(full)}"
    s, _, _ = request(blob, headers={"If-None-Match": h["etag"]})
    assert s == 304
    s, _, nar = request(f"{srv.url}/{layout.nar_key(info.file_hash)}")
    assert nar == full
    assert (
        zstandard.ZstdDecompressor().decompressobj().decompress(nar)[:21]
        == b"\x0d\0\0\0\0\0\0\0nix-archive-1"[:21]
    )


def test_miss_has_short_negative_ttl(setup) -> None:
    srv = setup[-1]
    s, h, _ = request(f"{srv.url}/{'0' * 32}.narinfo")
    assert s == 404 and h["cache-control"] == "public, max-age=10" and h["x-kiln-negative-ttl"] == "10"
    s, _, _ = request(f"{srv.url}/blobs/sha256:{'0' * 64}")
    assert s == 404
    s, _, _ = request(f"{srv.url}/../../etc/passwd")
    assert s == 404
    s, _, _ = request(f"{srv.url}/.kiln/tokens.json")
    assert s == 404


def test_batch(setup, keys) -> None:
    store, path, info, reg, wtok, _rtok, srv = setup
    _upload(srv.url, store, path, info, keys.sk, wtok)
    hp = path.split("/")[-1][:32]
    body = json.dumps(
        {"hashes": [hp, "0" * 32, "junk"], "blobs": [info.file_hash.to_hex(), "sha256:" + "1" * 64]}
    ).encode()
    s, _, out = request(f"{srv.url}/narinfo-batch", "POST", body)
    res = json.loads(out)
    assert s == 200 and list(res["narinfos"]) == [hp] and res["blobs"] == [info.file_hash.to_hex()]
    s, _, out = request(f"{srv.url}/narinfo-batch", "POST", f"{hp}\n{'0' * 32}\n".encode())
    assert s == 200 and list(json.loads(out)["narinfos"]) == [hp]
    s, _, _ = request(f"{srv.url}/narinfo-batch", "POST", b"{not json")
    assert s == 400


def test_blob_batch(setup, keys) -> None:
    """``POST /blob-batch``: present and absent objects framed in request order, the
    bytes exactly the object's; bad requests are 400/413 before anything is sent."""
    store, path, info, reg, wtok, _rtok, srv = setup
    _upload(srv.url, store, path, info, keys.sk, wtok)
    obj = store.object_path(path).read_bytes()
    have, missing = info.file_hash.hex, "1" * 64
    body = json.dumps({"blobs": [missing, "sha256:" + have, have]}).encode()
    s, h, out = request(f"{srv.url}/blob-batch", "POST", body)
    assert s == 200 and h["content-type"] == "application/x-kiln-blob-batch"
    want = f"{missing} -\n".encode() + (f"{have} {len(obj)}\n".encode() + obj) * 2
    assert out == want
    s, _, out = request(f"{srv.url}/blob-batch", "POST", json.dumps({"blobs": []}).encode())
    assert s == 200 and out == b""
    for bad in (b"{not json", b'{"blobs": "x"}', b'{"blobs": ["sha256:zz"]}', b"[]"):
        assert request(f"{srv.url}/blob-batch", "POST", bad)[0] == 400, bad
    too_many = json.dumps({"blobs": [have] * 5000}).encode()
    assert request(f"{srv.url}/blob-batch", "POST", too_many)[0] == 413


def _post_in_pieces(url: str, target: str, body: bytes, pieces: int) -> tuple[int, bytes]:
    """POST ``body`` over a raw socket in ``pieces`` writes with pauses between, so the
    server sees it arrive in several reads; returns (status, response body)."""
    import socket
    import time
    from urllib.parse import urlsplit

    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
        head = (
            f"POST /{target} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n\r\n"
        )
        sock.sendall(head.encode())
        step = -(-len(body) // pieces)
        for i in range(0, len(body), step):
            sock.sendall(body[i : i + step])
            time.sleep(0.05)
        answer = b""
        while data := sock.recv(65536):
            answer += data
    status = int(answer.split(b" ", 2)[1])
    return status, answer.split(b"\r\n\r\n", 1)[1]


def test_body_arriving_in_pieces(setup, keys) -> None:
    """A request body read in several pieces is read whole (a regression: one
    ``content.read(n)`` returned only what had arrived and the JSON was misparsed)."""
    store, path, info, reg, wtok, _rtok, srv = setup
    _upload(srv.url, store, path, info, keys.sk, wtok)
    have = info.file_hash.hex
    body = json.dumps({"blobs": [have] * 3}).encode()
    status, out = _post_in_pieces(srv.url, "blob-batch", body, 4)
    assert status == 200 and out.count(f"{have} ".encode()) == 3
    status, _ = _post_in_pieces(srv.url, "blob-batch", json.dumps({"blobs": [have] * 5000}).encode(), 5)
    assert status == 413
    status, out = _post_in_pieces(
        srv.url, "narinfo-batch", json.dumps({"hashes": [path.split("/")[-1][:32]]}).encode(), 3
    )
    assert status == 200, out


def test_chunked_body_over_the_limit(setup) -> None:
    """A body without Content-Length (chunked) is cut off at the limit with 413, not
    read to the end: ``_read_body`` counts as it reads."""
    import socket
    from urllib.parse import urlsplit

    srv = setup[-1]
    u = urlsplit(srv.url)
    chunk = b"x" * 65536
    with socket.create_connection((u.hostname, u.port), timeout=30) as sock:
        sock.sendall(
            b"POST /blob-batch HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nConnection: close\r\n\r\n"
        )
        try:
            for _ in range(24):  # 1.5 MiB against a 1 MiB limit
                sock.sendall(b"%x\r\n" % len(chunk) + chunk + b"\r\n")
            sock.sendall(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass  # the server may answer and close before taking it all
        answer = b""
        while data := sock.recv(65536):
            answer += data
    assert answer.split(b" ", 2)[1] == b"413", answer[:200]
    assert b"over the limit" in answer


def test_token_scopes(setup, keys) -> None:
    store, path, info, reg, wtok, rtok, srv = setup
    key = f"{srv.url}/{layout.nar_key(info.file_hash)}"
    body = store.object_path(path).read_bytes()
    assert request(key, "PUT", body)[0] == 401
    assert request(key, "PUT", body, {"Authorization": "Bearer kiln_deadbeef_nope"})[0] == 401
    assert request(key, "PUT", body, {"Authorization": "Basic abc"})[0] == 401
    assert request(key, "PUT", body, {"Authorization": f"Bearer {rtok}"})[0] == 403
    assert request(key, "PUT", body, {"Authorization": f"Bearer {wtok}"})[0] == 201
    stored = (reg / ".kiln" / "tokens.json").read_text()
    assert wtok.split("_", 2)[2] not in stored  # only hashes are kept


def test_tampered_upload_refused(setup, keys) -> None:
    store, path, info, reg, wtok, _rtok, srv = setup
    auth = {"Authorization": f"Bearer {wtok}"}
    body = bytearray(store.object_path(path).read_bytes())
    body[-5] ^= 1
    s, _, msg = request(f"{srv.url}/{layout.nar_key(info.file_hash)}", "PUT", bytes(body), auth)
    assert s == 400 and b"hash" in msg
    assert not (reg / layout.nar_key(info.file_hash)).exists() and not list((reg / "blobs").iterdir())
    # narinfo before its NAR
    s, _, msg = request(
        f"{srv.url}/{path.split('/')[-1][:32]}.narinfo", "PUT", _narinfo_text(info, keys.sk).encode(), auth
    )
    assert s == 400 and b"upload the NAR" in msg


def test_upload_of_a_cut_zstd_stream_refused(setup) -> None:
    """An object cut after its last block (here: its checksum dropped) decompresses to the
    right NAR without a zstd error; it must still be refused, under its own digest too."""
    store, path, info, reg, wtok, _rtok, srv = setup
    nar = b"".join(store.nar(path))
    cut = zstandard.ZstdCompressor(write_checksum=True).compress(nar)[:-4]
    s, _, msg = request(
        f"{srv.url}/{layout.nar_key(Hash.sha256_of(cut))}", "PUT", cut, {"Authorization": f"Bearer {wtok}"}
    )
    assert s == 400 and b"truncated" in msg and b"expected a frame checksum" in msg, msg
    assert not list((reg / "blobs").iterdir())


def test_wrong_signature_and_wrong_narhash(setup, keys, other_keys) -> None:
    store, path, info, reg, wtok, _rtok, srv = setup
    auth = {"Authorization": f"Bearer {wtok}"}
    hp = path.split("/")[-1][:32]
    request(f"{srv.url}/{layout.nar_key(info.file_hash)}", "PUT", store.object_path(path).read_bytes(), auth)
    s, _, msg = request(f"{srv.url}/{hp}.narinfo", "PUT", _narinfo_text(info, other_keys.sk).encode(), auth)
    assert s == 403 and b"signature" in msg
    unsigned = ni.NarInfo.from_pathinfo(info, layout.nar_key(info.file_hash), "zstd").render()
    assert request(f"{srv.url}/{hp}.narinfo", "PUT", unsigned.encode(), auth)[0] == 403
    # signed by a trusted key but lying about the NAR hash (cache poisoning attempt)
    lie = PathInfo(
        info.path, Hash.sha256_of(b"evil"), info.nar_size, file_hash=info.file_hash, file_size=info.file_size
    )
    s, _, msg = request(f"{srv.url}/{hp}.narinfo", "PUT", _narinfo_text(lie, keys.sk).encode(), auth)
    assert s == 400 and b"mismatch" in msg
    assert request(f"{srv.url}/{hp}.narinfo")[0] == 404
    s, _, _ = request(f"{srv.url}/{hp}.narinfo", "PUT", b"StorePath: nonsense\n", auth)
    assert s == 400
    s, _, _ = request(f"{srv.url}/{'0' * 32}.narinfo", "PUT", _narinfo_text(info, keys.sk).encode(), auth)
    assert s == 400  # narinfo uploaded under another path's hash


def test_conflict_409_and_idempotent_republish(setup, keys, tmp_path) -> None:
    store, path, info, reg, wtok, _rtok, srv = setup
    assert _upload(srv.url, store, path, info, keys.sk, wtok) == (201, 201)
    assert _upload(srv.url, store, path, info, keys.sk, wtok) == (200, 200)
    # same store path, different content (a non-reproducible rebuild) → 409
    other = make_store(tmp_path / "store2")
    p2 = add_tree(other, tmp_path / "b", "hello", "different\n")
    i2 = other.query(p2)
    fake = PathInfo(path, i2.nar_hash, i2.nar_size, file_hash=i2.file_hash, file_size=i2.file_size)
    auth = {"Authorization": f"Bearer {wtok}"}
    request(f"{srv.url}/{layout.nar_key(i2.file_hash)}", "PUT", other.object_path(p2).read_bytes(), auth)
    s, _, msg = request(
        f"{srv.url}/{path.split('/')[-1][:32]}.narinfo", "PUT", _narinfo_text(fake, keys.sk).encode(), auth
    )
    assert s == 409 and b"already published" in msg


def test_the_same_nar_in_another_file_is_the_same_content(setup, keys) -> None:
    """A path already published, pushed again with its NAR compressed differently (by
    another producer, kiln version or Nix): 200, and the first narinfo and file stay."""

    store, path, info, reg, wtok, _rtok, srv = setup
    assert _upload(srv.url, store, path, info, keys.sk, wtok) == (201, 201)
    key = f"{path.split('/')[-1][:32]}.narinfo"
    first = request(f"{srv.url}/{key}")[2]
    nar = b"".join(store.nar(path))
    other = zstandard.ZstdCompressor(level=19).compress(nar)
    assert other != store.object_path(path).read_bytes()
    alt = PathInfo(path, info.nar_hash, info.nar_size, file_hash=Hash.sha256_of(other), file_size=len(other))
    auth = {"Authorization": f"Bearer {wtok}"}
    assert request(f"{srv.url}/{layout.nar_key(alt.file_hash)}", "PUT", other, auth)[0] == 201
    s, _, msg = request(f"{srv.url}/{key}", "PUT", _narinfo_text(alt, keys.sk).encode(), auth)
    assert s == 200, msg
    assert request(f"{srv.url}/{key}")[2] == first


def test_oversized_and_malformed(setup, keys) -> None:
    store, path, info, reg, wtok, _rtok, srv = setup
    auth = {"Authorization": f"Bearer {wtok}"}
    big = b"\0" * 1_100_000
    s, _, _ = request(f"{srv.url}/blobs/sha256:{Hash.sha256_of(big).hex}", "PUT", big, auth)
    assert s == 413
    s, _, _ = request(f"{srv.url}/{'0' * 32}.narinfo", "PUT", b"x" * (ni.MAX_SIZE + 1), auth)
    assert s == 413
    s, _, _ = request(f"{srv.url}/blobs/sha256:{Hash.sha256_of(b'abc').hex}", "PUT", b"abc", auth)
    assert s == 400  # not a zstd stream: refused, nothing stored
    s, _, _ = request(f"{srv.url}/nar/garbage.nar.zst", "PUT", b"abc", auth)
    assert s == 404
    s, _, _ = request(f"{srv.url}/nix-cache-info", "DELETE")
    assert s == 405
    s, _, _ = request(f"{srv.url}/nix-cache-info")
    assert s == 200  # still alive
    assert list((reg / ".kiln" / "tmp").iterdir()) == []


def test_dropped_upload_leaves_nothing(setup, keys) -> None:
    import socket

    store, path, info, reg, wtok, _rtok, srv = setup
    body = store.object_path(path).read_bytes()
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            f"PUT /{layout.nar_key(info.file_hash)} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {wtok}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
            + body[: len(body) // 2]
        )
    import time

    for _ in range(50):
        if request(f"{srv.url}/nix-cache-info")[0] == 200 and not list((reg / ".kiln" / "tmp").iterdir()):
            break
        time.sleep(0.05)
    assert not (reg / layout.nar_key(info.file_hash)).exists()
    assert list((reg / ".kiln" / "tmp").iterdir()) == []


def test_a_client_gone_mid_batch_is_one_line_in_the_log(setup, keys) -> None:
    """A push cancelled during ``POST /upload-batch`` logged a whole traceback per abort;
    it is one line now, and nothing is left staged."""
    import socket
    import time

    store, path, info, reg, wtok, _rtok, srv = setup
    body = store.object_path(path).read_bytes()
    text = _narinfo_text(info, keys.sk)
    frame = _frame(path.split("/")[-1][:32], text.encode(), body)
    port = int(srv.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port)) as s:
        s.sendall(
            f"POST /upload-batch HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {wtok}\r\n"
            f"Content-Length: {len(frame) + 100}\r\n\r\n".encode()
            + frame[: len(frame) - 10]
        )
        time.sleep(0.3)  # the server is reading the object when the client goes
    for _ in range(50):
        if request(f"{srv.url}/nix-cache-info")[0] == 200 and not list((reg / ".kiln" / "tmp").iterdir()):
            break
        time.sleep(0.05)
    assert list((reg / ".kiln" / "tmp").iterdir()) == []
    srv.stop()
    err = srv.proc.stderr.read()
    assert "Traceback" not in err and "POST '/upload-batch': client went away" in err, err


def _frame(hp: str, text: bytes, nar: bytes = b"") -> bytes:
    return f"{len(text)} {len(nar)} {hp}\n".encode() + text + nar


def test_upload_batch(setup, keys, other_keys, tmp_path) -> None:
    store, path, info, reg, wtok, rtok, srv = setup
    auth = {"Authorization": f"Bearer {wtok}"}
    hp = path.split("/")[-1][:32]
    nar = store.object_path(path).read_bytes()
    p2 = add_tree(store, tmp_path / "b", "two", "two\n")
    i2 = store.query(p2)
    hp2 = p2.split("/")[-1][:32]
    bad = bytearray(store.object_path(p2).read_bytes())
    bad[-4] ^= 1
    body = _frame(hp, _narinfo_text(info, keys.sk).encode(), nar) + _frame(
        hp2, _narinfo_text(i2, keys.sk).encode(), bytes(bad)
    )
    assert request(f"{srv.url}/upload-batch", "POST", body, {"Authorization": f"Bearer {rtok}"})[0] == 403
    s, _, out = request(f"{srv.url}/upload-batch", "POST", body, auth)
    res = json.loads(out)["results"]
    assert s == 200 and [r["status"] for r in res] == [201, 400]
    assert request(f"{srv.url}/{hp}.narinfo")[0] == 200 and request(f"{srv.url}/{hp2}.narinfo")[0] == 404
    assert not (reg / layout.blob_key(i2.file_hash)).exists()
    # untrusted signature, NAR omitted because the registry has none → refused per entry
    body = _frame(hp2, _narinfo_text(i2, other_keys.sk).encode(), store.object_path(p2).read_bytes())
    res = json.loads(request(f"{srv.url}/upload-batch", "POST", body, auth)[2])["results"]
    assert res[0]["status"] == 403
    assert not (reg / layout.blob_key(i2.file_hash)).exists()  # the refused narinfo's NAR was not kept
    body = _frame(hp2, _narinfo_text(i2, keys.sk).encode())  # so the NAR must come again
    res = json.loads(request(f"{srv.url}/upload-batch", "POST", body, auth)[2])["results"]
    assert res[0]["status"] == 400 and "upload the NAR" in res[0]["message"], res
    body = _frame(hp2, _narinfo_text(i2, keys.sk).encode(), store.object_path(p2).read_bytes())
    res = json.loads(request(f"{srv.url}/upload-batch", "POST", body, auth)[2])["results"]
    assert res[0]["status"] == 201
    for junk in (b"garbage\n", b"10 0 notahash\n0123456789", b"5 0 " + hp.encode() + b"\nab"):
        assert request(f"{srv.url}/upload-batch", "POST", junk, auth)[0] == 400
    assert request(f"{srv.url}/upload-batch", "POST", f"10 2000000 {hp}\n".encode(), auth)[0] == 413
    assert request(f"{srv.url}/nix-cache-info")[0] == 200
    assert list((reg / ".kiln" / "tmp").iterdir()) == []


def test_private_registry_needs_read_token(tmp_path, keys, kiln_server) -> None:
    store, path, info, reg, wtok, rtok = _setup(tmp_path, keys)
    srv = kiln_server("--dir", str(reg), "--private", "--trusted-key", str(keys.pk_file))
    hp = path.split("/")[-1][:32]
    assert request(f"{srv.url}/nix-cache-info")[0] == 200  # discovery stays open
    assert request(f"{srv.url}/{hp}.narinfo")[0] == 401
    assert request(f"{srv.url}/{hp}.narinfo", headers={"Authorization": f"Bearer {rtok}"})[0] == 404
    assert _upload(srv.url, store, path, info, keys.sk, wtok) == (201, 201)
    assert request(f"{srv.url}/{hp}.narinfo", headers={"Authorization": f"Bearer {rtok}"})[0] == 200


def test_revoked_token_stops_working_without_restart(setup) -> None:
    import subprocess
    import sys

    store, path, info, reg, wtok, _rtok, srv = setup
    key = f"{srv.url}/{layout.nar_key(info.file_hash)}"
    body = store.object_path(path).read_bytes()
    tid = wtok.split("_")[1]
    subprocess.run(
        [sys.executable, "-m", "kiln", "registry", "token", "revoke", "--dir", str(reg), tid], check=True
    )
    assert request(key, "PUT", body, {"Authorization": f"Bearer {wtok}"})[0] == 401


def test_json_nested_too_deep_is_a_400(setup, keys) -> None:
    """JSON nested past the parser's depth is bad input like any other: 400, not a 500."""
    store, path, info, reg, wtok, _rtok, srv = setup
    deep = b"[" * 200_000 + b"]" * 200_000
    for endpoint in ("narinfo-batch", "blob-batch"):
        s, _, msg = request(f"{srv.url}/{endpoint}", "POST", deep)
        assert s == 400 and b"malformed" in msg, (endpoint, s, msg[:200])
    assert _upload(srv.url, store, path, info, keys.sk, wtok) == (201, 201)
    s, _, msg = request(
        f"{srv.url}/{path.split('/')[-1][:32]}.att/provenance.dsse.json",
        "PUT",
        b'{"payload": ' + deep[:300_000] + b"}",
        {"Authorization": f"Bearer {wtok}"},
    )
    assert 400 <= s < 500, (s, msg[:200])


def test_an_object_inflating_past_max_nar_size_is_refused(tmp_path, keys, kiln_server) -> None:
    """A small upload that decompresses to more than ``--max-nar-size`` (a zstd bomb) is
    refused with 413 once the limit is passed; nothing is stored."""
    store, path, info, reg, wtok, _rtok = _setup(tmp_path, keys)
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file), "--max-nar-size", "1000000")
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (8 << 20))
    assert len(bomb) < 4096
    auth = {"Authorization": f"Bearer {wtok}"}
    s, _, msg = request(f"{srv.url}/{layout.nar_key(Hash.sha256_of(bomb))}", "PUT", bomb, auth)
    assert s == 413 and b"exceeds 1000000 bytes" in msg, (s, msg)
    assert not list((reg / "blobs").iterdir())
    # a real path still goes through
    assert _upload(srv.url, store, path, info, keys.sk, wtok) == (201, 201)


def test_a_signature_merge_keeps_only_trusted_valid_signatures(
    tmp_path, keys, other_keys, kiln_server
) -> None:
    """Re-uploading a published narinfo with more ``Sig:`` lines merges only those that
    verify against a trusted key: junk and untrusted signatures never accumulate."""
    from kiln.store.signing import SecretKey

    store, path, info, reg, wtok, _rtok = _setup(tmp_path, keys)
    second = SecretKey.generate("kiln-test-2")
    (tmp_path / "second.pub").write_text(second.public().to_text())
    srv = kiln_server(
        "--dir", str(reg), "--trusted-key", str(keys.pk_file), "--trusted-key", str(tmp_path / "second.pub")
    )
    assert _upload(srv.url, store, path, info, keys.sk, wtok) == (201, 201)
    key = f"{srv.url}/{layout.narinfo_key(path.split('/')[-1][:32])}"
    auth = {"Authorization": f"Bearer {wtok}"}
    first = _narinfo_text(info, keys.sk)
    junk = first + f"Sig: junk-1:{'A' * 86}==\nSig: {sign_info(info, other_keys.sk)}\n"
    s, _, msg = request(key, "PUT", junk.encode(), auth)
    assert (s, msg.strip()) == (200, b"already published")  # nothing trusted to add
    more = first + f"Sig: {sign_info(info, second)}\n"
    s, _, msg = request(key, "PUT", more.encode(), auth)
    assert (s, msg.strip()) == (200, b"signatures merged")
    sigs = [
        ln.split(":", 2)[1].strip() for ln in request(key)[2].decode().splitlines() if ln.startswith("Sig:")
    ]
    assert sigs == ["kiln-test-1", "kiln-test-2"], sigs


def test_kiln_copy_from_a_private_registry_uses_the_token(tmp_path, keys, kiln_server) -> None:
    """``kiln copy --from URL --token T --to store`` and ``--from-token`` between two
    registries authenticate to the source (they sent no token and got 401)."""
    import subprocess
    import sys

    store, path, info, reg, wtok, rtok = _setup(tmp_path, keys)
    srv = kiln_server("--dir", str(reg), "--private", "--trusted-key", str(keys.pk_file))
    assert _upload(srv.url, store, path, info, keys.sk, wtok) == (201, 201)

    def kiln(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True)

    trust = ["--trusted-key", str(keys.pk_file)]
    r = kiln("copy", "--store", str(tmp_path / "s2"), "--from", srv.url, "--to", "store", *trust, path)
    assert r.returncode == 1 and "HTTP 401" in r.stderr  # without a token: refused
    r = kiln(
        "copy",
        "--store",
        str(tmp_path / "s2"),
        "--from",
        srv.url,
        "--token",
        rtok,
        "--to",
        "store",
        *trust,
        path,
    )
    assert r.returncode == 0, r.stderr
    assert make_store(tmp_path / "s2").is_valid(path)
    out = tmp_path / "reg2"
    r = kiln("copy", "--from", srv.url, "--from-token", rtok, "--to", f"file://{out}", *trust, path)
    assert r.returncode == 0, r.stderr
    assert (out / f"{path.split('/')[-1][:32]}.narinfo").exists()


def test_push_and_serve_never_make_a_store_at_a_mistyped_path(tmp_path, keys) -> None:
    import subprocess
    import sys

    typo = tmp_path / "typo"
    for args in (
        ("push", "--store", str(typo), "/kiln/store/" + "a" * 32 + "-x", "--to", str(tmp_path / "reg")),
        ("serve", "--store", str(typo), "--listen", "127.0.0.1:0"),
    ):
        r = subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=60)
        assert r.returncode == 1 and "no kiln store at" in r.stderr, r.stderr
        assert not typo.exists()
