"""A real HTTP server on 127.0.0.1 with misbehaving routes, for fetcher tests.

Routes (``server.url(route)``):

- ``/file/<name>``       the bytes registered with ``server.add``; honours ``Range``
- ``/redirect/<name>``   302 to ``/file/<name>``
- ``/drop/<name>``       first request: full Content-Length, half the body, then the
                         connection is closed; later requests behave like ``/file``
- ``/drop-norange/<n>``  like ``/drop`` but ignores ``Range`` (answers 200 with everything)
- ``/hang/<name>``       sends nothing for 5 s
- ``/flaky/<name>``      first request 503, then like ``/file``
- ``/partial0/<name>``   206 ``bytes 0-(N-1)/N`` with the whole body, always
- ``/badrange/<name>``   like ``/drop``, but a later ``Range`` request is answered 206
                         from the wrong offset (64 KiB, a cache's block boundary)
- ``/mirror/...``        a hashed mirror: ``/mirror/sha256/<hex>`` of registered bytes
- ``/stallmirror/...``   a mirror that accepts requests and never answers (until closed)

Hostile routes, for resource limits (``server.sent[path]`` counts the bytes the server
managed to write on the route; a client that stops reading caps it at what the socket
buffers take):

- ``/bigredirect/<name>`` 302 to ``/file/<name>`` with a 256 MiB body of zeros
- ``/trickleredirect/<n>`` 302 to ``/file/<n>`` whose 1000-byte body comes a byte per 50 ms
- ``/tricklehead/<name>``  a status line, then a header line a byte per 50 ms, never ending
- ``/endless/<name>``      200 without Content-Length, zeros as fast as the client reads
- ``/huge/<name>``         200 announcing a 1 TB Content-Length (and sending zeros)
- ``/badlocation/<kind>``  302 to a malformed URL: ``ipv6`` (``http://[::1``), ``longhost``
                           (a 70-character host label), ``port`` (``http://h:8x/``)
- ``/goto/<name>``         302 to ``server.locations[name]`` (any text: ``ftp://...``,
                           ``file:///...``, a URL with credentials)
- ``/status/<name>``       the raw status line ``server.status_lines[name]`` (bytes: a
                           reason phrase with escape sequences, a malformed line), no body

Every request is logged as ``(method, path, range header)`` in ``server.log``.
"""

from __future__ import annotations

import contextlib
import hashlib
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass

    def do_GET(self) -> None:  # noqa: N802 - http.server's naming
        srv = self.server.owner
        rng = self.headers.get("Range")
        srv.log.append(("GET", self.path, rng))
        parts = self.path.strip("/").split("/")
        kind, name = parts[0], "/".join(parts[1:])
        if kind == "mirror":
            algo, hexd = (parts[1], parts[2]) if len(parts) == 3 else ("", "")
            data = srv.by_hash.get(hexd) if algo == "sha256" else None
            return self._send(data, rng, ranges=True)
        if kind == "stallmirror":
            srv.closing.wait(30)
            return None
        if kind == "goto":
            return self._redirect(srv.locations[name])
        if kind == "status":
            self.close_connection = True
            self.wfile.write(srv.status_lines[name] + b"\r\nContent-Length: 0\r\n\r\n")
            return None
        if kind == "badlocation":
            where = {
                "ipv6": "http://[::1/x",
                "longhost": f"http://{'a' * 70}.example/x",
                "port": "http://127.0.0.1:8x/x",
            }[name]
            return self._redirect(where)
        if kind in _HOSTILE:
            self.close_connection = True
            with contextlib.suppress(OSError):  # the client hung up, as it should
                _HOSTILE[kind](self, name)
            return None
        data = srv.files.get(name)
        if data is None:
            return self._status(404)
        first = srv.count(self.path) == 1
        if kind == "file":
            return self._send(data, rng, ranges=True)
        if kind == "redirect":
            self.send_response(302)
            self.send_header("Location", f"/file/{name}")
            self.send_header("Content-Length", "0")
            self.end_headers()
            return None
        if kind == "partial0":  # always 206 with the whole body
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 0-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)
            return None
        if kind == "badrange" and not first and rng:
            self.send_response(206)
            self.send_header("Content-Range", f"bytes 65536-{len(data) - 1}/{len(data)}")
            self.send_header("Content-Length", str(len(data) - 65536))
            self.end_headers()
            self.wfile.write(data[65536:])
            return None
        if kind in ("drop", "drop-norange", "badrange"):
            if first:
                self.send_response(200)
                self.send_header("Content-Length", str(len(data)))
                self.send_header("Accept-Ranges", "bytes")
                self.end_headers()
                self.wfile.write(data[: len(data) // 2])
                self.wfile.flush()
                self.close_connection = True
                return None
            return self._send(data, rng, ranges=(kind != "drop-norange"))
        if kind == "hang":
            srv.closing.wait(5)
            return self._status(500)
        if kind == "trickle":  # a byte now and then: never silent for a whole timeout
            self.send_response(200)
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            try:
                for i in range(min(len(data), 100)):
                    self.wfile.write(data[i : i + 1])
                    self.wfile.flush()
                    time.sleep(0.05)
            except OSError:  # the client gave up, as it should
                pass
            self.close_connection = True
            return None
        if kind == "flaky":
            return self._status(503) if first else self._send(data, rng, ranges=True)
        return self._status(404)

    def _redirect(self, where: str) -> None:
        self.send_response(302)
        self.send_header("Location", where)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _stream(self, total: int, pause: float = 0.0, step: int = 1 << 16, fill: bytes = b"\0") -> None:
        """Write ``total`` ``fill`` bytes (``step`` at a time, ``pause`` s apart), counting them."""
        done = 0
        while done < total and not self.server.owner.closing.is_set():
            n = min(step, total - done)
            self.wfile.write(fill * n)
            self.wfile.flush()
            done += n
            self.server.owner.sent[self.path] = self.server.owner.sent.get(self.path, 0) + n
            if pause:
                time.sleep(pause)

    def _status(self, code: int) -> None:
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def _send(self, data: bytes | None, rng: str | None, ranges: bool) -> None:
        if data is None:
            return self._status(404)
        start = 0
        if ranges and rng and rng.startswith("bytes=") and rng.endswith("-"):
            start = int(rng[6:-1])
            if start >= len(data):
                return self._status(416)
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
        return None


def _bigredirect(h: _Handler, name: str) -> None:
    h.send_response(302)
    h.send_header("Location", f"/file/{name}")
    h.send_header("Content-Length", str(256 << 20))
    h.end_headers()
    h._stream(256 << 20)


def _trickleredirect(h: _Handler, name: str) -> None:
    h.send_response(302)
    h.send_header("Location", f"/file/{name}")
    h.send_header("Content-Length", "1000")
    h.end_headers()
    h._stream(1000, pause=0.05, step=1)


def _tricklehead(h: _Handler, name: str) -> None:
    h.wfile.write(b"HTTP/1.1 200 OK\r\nX-Slow: ")
    h._stream(1 << 20, pause=0.05, step=1, fill=b"a")  # a header value, a byte at a time


def _endless(h: _Handler, name: str) -> None:
    h.send_response(200)
    h.end_headers()
    h._stream(64 << 30)


def _huge(h: _Handler, name: str) -> None:
    h.send_response(200)
    h.send_header("Content-Length", str(10**12))
    h.end_headers()
    h._stream(64 << 30)


_HOSTILE = {
    "bigredirect": _bigredirect,
    "trickleredirect": _trickleredirect,
    "tricklehead": _tricklehead,
    "endless": _endless,
    "huge": _huge,
}


class Server:
    def __init__(self) -> None:
        self.files: dict[str, bytes] = {}
        self.by_hash: dict[str, bytes] = {}
        self.log: list[tuple[str, str, str | None]] = []
        self.sent: dict[str, int] = {}
        self.locations: dict[str, str] = {}
        self.status_lines: dict[str, bytes] = {}
        self.closing = threading.Event()  # handlers that wait for ever stop waiting
        self._lock = threading.Lock()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self.httpd.daemon_threads = True
        self.httpd.owner = self
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def add(self, name: str, data: bytes, mirror: bool = False) -> str:
        """Register ``data`` under ``name``; returns its sha256 hex."""
        digest = hashlib.sha256(data).hexdigest()
        self.files[name] = data
        if mirror:
            self.by_hash[digest] = data
        return digest

    def count(self, path: str) -> int:
        with self._lock:
            return sum(1 for _, p, _ in self.log if p == path)

    def url(self, route: str) -> str:
        return f"http://127.0.0.1:{self.httpd.server_port}/{route.lstrip('/')}"

    def close(self) -> None:
        self.closing.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def server():
    s = Server()
    yield s
    s.close()


@pytest.fixture(autouse=True)
def _no_env_mirrors(monkeypatch):
    # the developer's own KILN_SOURCE_MIRRORS must not change what these tests see
    from kiln.store.fetch import forget_down_mirrors

    for var in ("KILN_SOURCE_MIRRORS", "KILN_FETCH_TIMEOUT", "KILN_FETCH_MAX_SIZE"):
        monkeypatch.delenv(var, raising=False)
    forget_down_mirrors()  # a mirror one test stalled must not be skipped in the next
    yield
    forget_down_mirrors()
