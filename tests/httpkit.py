"""A throwaway HTTP/1.1 server on 127.0.0.1 for tests (imported as ``httpkit``).

``serve(do_get)`` runs a ``ThreadingHTTPServer`` on a port the system picks, answering
every GET with ``do_get(handler)`` (a ``BaseHTTPRequestHandler``: ``path``, ``headers``,
``wfile``...; ``answer`` writes a whole response), quiet (no request log), its threads
daemons; it yields the base URL and shuts the server down when the block ends."""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


@contextlib.contextmanager
def serve(do_get: Callable[[BaseHTTPRequestHandler], object]) -> Iterator[str]:
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            do_get(self)

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_port}"
    finally:
        httpd.shutdown()
        httpd.server_close()


def answer(h: BaseHTTPRequestHandler, status: int, headers: dict[str, str], body: bytes = b"") -> None:
    """Write a whole response: ``status``, ``headers``, a ``Content-Length`` and ``body``."""
    h.send_response(status)
    for k, v in headers.items():
        h.send_header(k, v)
    h.send_header("Content-Length", str(len(body)))
    h.end_headers()
    h.wfile.write(body)
