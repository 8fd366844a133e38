"""Connection timeouts of a real ``kiln serve`` (``registry/guard.py``), shortened by its
options so each test takes seconds: an idle connection is closed after the keep-alive
timeout, a request head trickled a byte at a time gets 408 after the header timeout, a
client that stops reading a download (``sendfile``) or a blob batch is dropped after the
write timeout, the soft limit on open files is raised to the hard one, and a flood of
``accept`` failures is logged as one line, not a traceback each."""

from __future__ import annotations

import hashlib
import json
import os
import socket
import threading
import time
from pathlib import Path

from regkit import kiln, request, start_kiln


def _registry(tmp_path: Path, blob_size: int = 0) -> tuple[Path, str]:
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    digest = ""
    if blob_size:
        data = os.urandom(blob_size)
        digest = hashlib.sha256(data).hexdigest()
        (reg / "blobs").mkdir(exist_ok=True)
        (reg / "blobs" / f"sha256:{digest}").write_bytes(data)
    return reg, digest


def _port(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


def _closed_within(s: socket.socket, secs: float) -> tuple[bool, bytes]:
    """Whether the server closed ``s`` within ``secs`` seconds, and what it sent."""
    s.settimeout(0.2)
    got = b""
    end = time.monotonic() + secs
    while time.monotonic() < end:
        try:
            chunk = s.recv(65536)
        except TimeoutError:
            continue
        except ConnectionResetError:
            return True, got
        if not chunk:
            return True, got
        got += chunk
    return False, got


def test_an_idle_connection_is_closed_after_the_keepalive_timeout(tmp_path) -> None:
    reg, _ = _registry(tmp_path)
    srv = start_kiln(["--dir", str(reg), "--keepalive-timeout", "1"])
    try:
        with socket.create_connection(("127.0.0.1", _port(srv.url))) as s:
            closed, _ = _closed_within(s, 4)
            assert closed  # aiohttp's default would hold it for an hour
    finally:
        srv.stop()


def test_a_trickled_request_head_gets_408(tmp_path) -> None:
    reg, _ = _registry(tmp_path)
    srv = start_kiln(["--dir", str(reg), "--header-timeout", "1", "--keepalive-timeout", "30"])
    try:
        with socket.create_connection(("127.0.0.1", _port(srv.url))) as s:
            t = time.monotonic()
            head = b"GET /nix-cache-info HTTP/1.1\r\nHost: a\r\n" + b"X-a: " + b"b" * 1000
            s.settimeout(0.2)
            answer = b""
            for i in range(len(head)):
                s.sendall(head[i : i + 1])
                try:
                    answer = s.recv(1000)
                    break
                except TimeoutError:
                    pass
                if time.monotonic() - t > 8:
                    break
            assert answer.startswith(b"HTTP/1.1 408"), answer
            assert time.monotonic() - t < 5
    finally:
        srv.stop()


def _unread(port: int, req: bytes) -> socket.socket:
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect(("127.0.0.1", port))
    s.sendall(req)
    return s


def _received_after_stall(s: socket.socket, stall: float) -> int:
    """Bytes the client gets when it reads everything after not reading for ``stall`` s."""
    time.sleep(stall)
    s.settimeout(5)
    n = 0
    try:
        while chunk := s.recv(1 << 20):
            n += len(chunk)
    except (ConnectionResetError, TimeoutError):
        pass
    return n


def test_a_client_that_stops_reading_a_download_is_dropped(tmp_path) -> None:
    size = 24 << 20
    reg, digest = _registry(tmp_path, size)
    srv = start_kiln(["--dir", str(reg), "--write-timeout", "1"])
    try:
        s = _unread(_port(srv.url), f"GET /blobs/sha256:{digest} HTTP/1.1\r\nHost: a\r\n\r\n".encode())
        with s:
            assert _received_after_stall(s, 4) < size  # cut off, not the whole file
        assert request(f"{srv.url}/nix-cache-info")[0] == 200
        # a client that reads gets the whole file
        st, _, body = request(f"{srv.url}/blobs/sha256:{digest}")
        assert st == 200 and hashlib.sha256(body).hexdigest() == digest
    finally:
        srv.stop()


def test_a_client_that_stops_reading_a_blob_batch_is_dropped(tmp_path) -> None:
    reg, digest = _registry(tmp_path, 1 << 20)
    srv = start_kiln(["--dir", str(reg), "--write-timeout", "1"])
    try:
        body = json.dumps({"blobs": [digest] * 24}).encode()
        req = (
            b"POST /blob-batch HTTP/1.1\r\nHost: a\r\nContent-Type: application/json\r\n"
            b"Content-Length: %d\r\n\r\n" % len(body) + body
        )
        with _unread(_port(srv.url), req) as s:
            assert _received_after_stall(s, 4) < 24 << 20
        st, _, got = request(f"{srv.url}/blob-batch", "POST", body)
        assert st == 200 and len(got) > 24 << 20  # a reading client gets it all
    finally:
        srv.stop()


def test_the_open_file_limit_is_raised_to_the_hard_limit(tmp_path) -> None:
    reg, _ = _registry(tmp_path)
    srv = start_kiln(["--dir", str(reg)], nofile=(64, 1024))
    socks = []
    try:
        for _ in range(120):  # more than the soft limit allows
            socks.append(socket.create_connection(("127.0.0.1", _port(srv.url))))
        st, _, _ = request(f"{srv.url}/nix-cache-info")
        assert st == 200
    finally:
        for s in socks:
            s.close()
        srv.stop()


def test_accept_failures_are_one_line_per_burst(tmp_path) -> None:
    reg, _ = _registry(tmp_path)
    srv = start_kiln(["--dir", str(reg), "--keepalive-timeout", "1"], nofile=(48, 48))
    err: list[str] = []  # read meanwhile: a full pipe would stall a server that logs a lot
    reader = threading.Thread(target=lambda: err.append(srv.proc.stderr.read()))  # type: ignore[union-attr]
    reader.start()
    socks = []
    try:
        for _ in range(120):  # the server runs out of descriptors and accept() fails
            socks.append(socket.create_connection(("127.0.0.1", _port(srv.url))))
        time.sleep(3)  # failures meanwhile; then the keep-alive timeout frees descriptors
        for s in socks:
            s.close()
        socks.clear()
        with socket.create_connection(("127.0.0.1", _port(srv.url)), timeout=5) as s:
            s.sendall(b"GET /nix-cache-info HTTP/1.1\r\nHost: a\r\n\r\n")
            assert s.recv(100)[8:12] == b" 200"  # recovered
    finally:
        for s in socks:
            s.close()
        srv.stop()
        reader.join(10)
    text = "".join(err)
    assert "Traceback" not in text, text[:2000]
    # the failures (when the kernel let accept() fail meanwhile) were said, briefly
    assert all(ln.startswith("kiln serve: ") for ln in text.splitlines()), text[:2000]
    assert len(text.splitlines()) <= 6, text[:2000]
