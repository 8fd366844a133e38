"""Hostile and careless clients against a real ``kiln serve``: silent request bodies from
an address that also has a busy connection, oversized batch queries, review floods,
tokens in malformed headers, clients that vanish mid-answer or half-close, and the
HTTP details (If-Range, If-None-Match, Allow) a cache or proxy relies on."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from concurrent.futures import ThreadPoolExecutor

from regkit import kiln, request, start_kiln

from kiln.registry import layout


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _init(tmp_path) -> str:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    return str(reg)


def test_silent_bodies_get_408_while_another_connection_from_the_address_sends(tmp_path) -> None:
    srv = start_kiln(["--dir", _init(tmp_path), "--body-timeout", "1"])
    stop = threading.Event()

    def keeper() -> None:  # a busy connection from the same address (a proxy's, say)
        with socket.create_connection(("127.0.0.1", _port(srv.url))) as k:
            k.sendall(b"POST /narinfo-batch HTTP/1.1\r\nHost: a\r\nContent-Length: 900000\r\n\r\n")
            while not stop.is_set():
                k.sendall(b" " * 2048)
                time.sleep(0.25)

    t = threading.Thread(target=keeper)
    t.start()
    silent = []
    try:
        time.sleep(0.3)
        for _ in range(10):
            s = socket.create_connection(("127.0.0.1", _port(srv.url)))
            s.sendall(b"POST /narinfo-batch HTTP/1.1\r\nHost: a\r\nContent-Length: 1000\r\n\r\n")
            s.settimeout(4)
            silent.append(s)
        for s in silent:
            assert s.recv(100).startswith(b"HTTP/1.1 408"), "a silent body held its connection"
    finally:
        stop.set()
        t.join()
        for s in silent:
            s.close()
        srv.stop()


def test_a_batch_query_over_1_mib_is_refused(tmp_path, kiln_server) -> None:
    srv = kiln_server("--dir", _init(tmp_path))
    hashes = ["a" * 32] * 2000  # what kiln's client sends at most: fits
    st, _, _ = request(f"{srv.url}/narinfo-batch", "POST", json.dumps({"hashes": hashes}).encode())
    assert st == 200
    st, _, body = request(f"{srv.url}/narinfo-batch", "POST", b" " * (1 << 20) + b"[]")
    assert st == 413, body


def test_reviews_beyond_the_limit_get_503(pushed, keys, tmp_path) -> None:
    _store, chain, _leaf, reg, _tok, _srv = pushed
    pol = tmp_path / "pol.toml"
    pol.write_text(f'[keys]\nsigning = ["{keys.pk}"]\n[require]\nsignatures = 1\n')
    srv = start_kiln(["--dir", str(reg), "--policy", str(pol), "--max-reviews", "1"])
    review = json.dumps(
        {
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {"uid": "u", "artifact": chain[-1]},
        }
    ).encode()
    try:
        with ThreadPoolExecutor(24) as ex:
            answers = list(ex.map(lambda _: request(f"{srv.url}/verify", "POST", review), range(24)))
    finally:
        srv.stop()
    statuses = [st for st, _, _ in answers]
    assert 200 in statuses and 503 in statuses, statuses
    assert all(h.get("retry-after") for st, h, _ in answers if st == 503)


def test_a_token_in_a_malformed_header_is_not_logged(tmp_path) -> None:
    srv = start_kiln(["--dir", _init(tmp_path)])
    secret = "kiln_abcdef_SECRETSECRETSECRET"
    try:
        with socket.create_connection(("127.0.0.1", _port(srv.url))) as s:
            s.sendall(
                f"GET /nix-cache-info HTTP/1.1\r\nHost: a\r\nAuthorization: Bearer {secret}\r\r\n\r\n".encode()
            )
            s.settimeout(5)
            assert s.recv(100)[8:12] == b" 400"
        with socket.create_connection(("127.0.0.1", _port(srv.url))) as s:
            s.sendall(
                b"GET /nix-cache-info HTTP/1.1\r\nHost: a\r\nX-"
                + secret.encode()
                + b": "
                + b"y" * 20000
                + b"\r\n\r\n"
            )
            s.settimeout(5)
            assert s.recv(100)[8:10] == b" 4"
    finally:
        srv.stop()
    err = srv.proc.stderr.read()  # type: ignore[union-attr]
    assert "SECRET" not in err and "Traceback" not in err, err[:3000]
    assert 1 <= len(err.splitlines()) <= 2, err[:3000]


def test_access_log_and_a_client_gone_mid_blob_batch(pushed, tmp_path) -> None:
    store, chain, _leaf, reg, tok, _srv = pushed
    log = tmp_path / "access.log"
    srv = start_kiln(["--dir", str(reg), "--access-log", str(log), "--write-timeout", "30"])
    try:
        info = store.query(chain[0])
        key = layout.narinfo_key(chain[0].rsplit("/", 1)[1][:32])
        assert request(f"{srv.url}/{key}")[0] == 200  # (the fast path)
        assert request(f'{srv.url}/x%0Ay"z')[0] == 404
        st, _, _ = request(
            f"{srv.url}/blobs/sha256:{info.file_hash.hex}", "PUT", b"x", {"Authorization": f"Bearer {tok}"}
        )
        assert st == 200  # already present
        # a client that asks for a big blob batch and resets the connection
        big = os.urandom(1 << 20)
        big_hex = hashlib.sha256(big).hexdigest()
        (reg / "blobs" / f"sha256:{big_hex}").write_bytes(big)
        body = json.dumps({"blobs": [big_hex] * 40}).encode()
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        s.connect(("127.0.0.1", _port(srv.url)))
        s.sendall(b"POST /blob-batch HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
        time.sleep(0.5)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        s.close()  # RST
        time.sleep(0.5)
        assert request(f"{srv.url}/nix-cache-info")[0] == 200
    finally:
        srv.stop()
    err = srv.proc.stderr.read()  # type: ignore[union-attr]
    assert "Traceback" not in err and "client went away" in err, err[:3000]
    lines = log.read_text().splitlines()
    assert any(f'GET "/{key}" 200' in ln for ln in lines), lines
    assert any('"/x%0Ay\\"z" 404' in ln for ln in lines), lines  # as sent, quote escaped
    tok_id = tok.split("_")[1]
    put = [ln for ln in lines if ln.split()[2] == "PUT"]
    assert put and put[0].endswith(f" {tok_id}") and tok not in log.read_text(), put


def test_a_half_closed_request_is_answered(tmp_path, kiln_server) -> None:
    srv = kiln_server("--dir", _init(tmp_path))
    with socket.create_connection(("127.0.0.1", _port(srv.url))) as s:
        s.sendall(b"GET /nix-cache-info HTTP/1.0\r\n\r\n")
        s.shutdown(socket.SHUT_WR)
        s.settimeout(5)
        got = b""
        while chunk := s.recv(4096):
            got += chunk
    assert got.startswith(b"HTTP/1.0 200") or got.startswith(b"HTTP/1.1 200"), got
    assert b"StoreDir" in got


def test_if_range_if_none_match_and_allow(pushed) -> None:
    store, chain, _leaf, reg, _tok, srv = pushed
    digest = store.query(chain[0]).file_hash.hex
    url = f"{srv.url}/blobs/sha256:{digest}"
    etag = f'"sha256:{digest}"'
    st, _, body = request(url, headers={"Range": "bytes=0-1", "If-Range": etag})
    assert st == 206 and len(body) == 2
    st, _, body = request(url, headers={"Range": "bytes=0-1", "If-Range": '"sha256:00"'})
    assert st == 200 and len(body) > 2  # stale: the whole file
    # a mutable file (small, its ETag from its content): a Range is answered with the
    # whole file (as RFC 9110 allows), stale If-Range or not (``mutablefile``)
    st, h, whole = request(f"{srv.url}/index/timestamp.json")
    assert st == 200 and h["etag"].startswith('"sha256:')
    for tag in ('"0-0"', h["etag"]):
        st, _, body = request(
            f"{srv.url}/index/timestamp.json", headers={"Range": "bytes=0-1", "If-Range": tag}
        )
        assert st == 200 and body == whole
    # If-None-Match: a list of entity tags, not a substring
    assert request(url, headers={"If-None-Match": f'"x", {etag}'})[0] == 304
    assert request(url, headers={"If-None-Match": "*"})[0] == 304
    assert request(url, headers={"If-None-Match": f'"{digest}"'})[0] == 200
    assert request(url, headers={"If-None-Match": f'"xsha256:{digest}x"'})[0] == 200
    st, h, _ = request(f"{srv.url}/nix-cache-info", "DELETE")
    assert st == 405 and h.get("allow") == "GET, HEAD, PUT"


def test_an_access_log_path_reads_back_unambiguously() -> None:
    """A path's own backslash is escaped before anything else: ``/a\\x0a`` (four
    characters) and ``/a`` + LF log differently, and a quote cannot close the field."""
    from kiln.registry.servelog import access_line

    literal = access_line("1.2.3.4", "GET", "/a\\x0a", 200, 1, None)
    newline = access_line("1.2.3.4", "GET", "/a\n", 200, 1, None)
    quoted = access_line("1.2.3.4", "GET", '/a\\"b', 200, 1, None)
    assert literal.split('"')[1] == "/a\\\\x0a" and newline.split('"')[1] == "/a\\n", (literal, newline)
    assert literal.count("\n") == newline.count("\n") == 1
    assert quoted.count('"') - quoted.count('\\"') == 2, quoted
    cut = access_line("1.2.3.4", "GET", "/" + "a" * 998 + "\\" + "b" * 10, 200, 1, None)
    field = cut.rsplit('" 200', 1)[0]
    assert (len(field) - len(field.rstrip("\\"))) % 2 == 0, cut  # no escape pair split by the cut


def test_a_flood_of_cut_off_requests_is_one_log_line(pushed) -> None:
    """Any client can cut requests off mid-body as often as it likes: the server says
    "client went away" once per burst, not once per request (``servelog.events``)."""
    _store, _chain, _leaf, reg, _tok, _srv = pushed
    srv = start_kiln(["--dir", str(reg)])
    try:
        body = json.dumps({"hashes": ["0" * 32] * 2000}).encode()
        for _ in range(30):
            s = socket.socket()
            s.connect(("127.0.0.1", _port(srv.url)))
            s.sendall(b"POST /narinfo-batch HTTP/1.1\r\nHost: a\r\nContent-Length: %d\r\n\r\n" % len(body))
            s.sendall(body[: len(body) // 2])
            s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
            s.close()  # RST, half the body sent
        time.sleep(1)
        assert request(f"{srv.url}/nix-cache-info")[0] == 200
    finally:
        srv.stop()
    err = srv.proc.stderr.read()  # type: ignore[union-attr]
    gone = [ln for ln in err.splitlines() if "client went away" in ln]
    assert 1 <= len(gone) <= 2, err[:3000]
    assert gone[0].startswith("kiln serve: POST '/narinfo-batch': client went away"), gone
