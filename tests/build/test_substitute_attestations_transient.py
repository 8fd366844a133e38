"""An attestation a registry could not send while ``kiln build`` substituted its path
(``cli/buildsubst._fetch_attestations``): a 500 on ``POST /attestation-batch``, or on the
listings query, used to be a warning worded "refused" — as if something were wrong with
the attestation — that named no way to get it later, and no later build asks again (the
path is valid). Now the warning says "could not be fetched (temporary: ...)" and names a
``kiln copy`` command; the build still exits 0 (the path is vouched for by its own
signature); and that very command, run once the registry answers, stores the provenance.

Real everything: the builder store, registry directory and ``kiln serve`` of
``test_substitute_attestations``, with a small reverse proxy in front of the server that
answers 500 to the chosen requests while told to."""

from __future__ import annotations

import http.client
import os
import shlex
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from test_substitute_attestations import Served, Setup, _build, pytestmark, setup  # noqa: F401

from kiln.store import attestations
from kiln.store.localstore import LocalStore

_HOP = {"connection", "keep-alive", "transfer-encoding", "content-length", "te", "trailer", "upgrade"}
_HOP |= {"server", "date"}  # (send_response writes its own)


class _Proxy:
    """A reverse proxy to ``upstream`` (``http://host:port``) on a free port that answers
    500 to each request ``fault(method, path, body)`` picks while ``failing`` is set;
    ``faulted`` counts those answers."""

    def __init__(self, upstream: str, fault: Callable[[str, str, bytes], bool]) -> None:
        up = urllib.parse.urlsplit(upstream)
        self.failing = threading.Event()
        self.failing.set()
        self.faulted = 0
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def _forward(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(n) if n else b""
                if owner.failing.is_set() and fault(self.command, self.path, body):
                    owner.faulted += 1
                    self._answer(500, "Internal Server Error", [], b"fault 500")
                    return
                conn = http.client.HTTPConnection(up.hostname, up.port, timeout=60)
                try:
                    headers = {k: v for k, v in self.headers.items() if k.lower() not in _HOP}
                    conn.request(self.command, self.path, body=body or None, headers=headers)
                    r = conn.getresponse()
                    data = r.read()
                finally:
                    conn.close()
                self._answer(r.status, r.reason, r.getheaders(), data)

            def _answer(self, status: int, reason: str, headers: list, data: bytes) -> None:
                self.send_response(status, reason)
                for k, v in headers:
                    if k.lower() not in _HOP:
                        self.send_header(k, v)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            do_GET = do_POST = do_HEAD = do_PUT = _forward  # noqa: N815 - http.server's naming

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        self.thread = threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()


def _attestation_batch(method: str, path: str, body: bytes) -> bool:
    return method == "POST" and path.startswith("/attestation-batch")


def _listings(method: str, path: str, body: bytes) -> bool:
    # the listings query: a narinfo batch asking for attestations, not for narinfos
    return method == "POST" and path.startswith("/narinfo-batch") and b'"attestations"' in body


@pytest.mark.parametrize("fault", [_attestation_batch, _listings], ids=["attestation-batch", "listings"])
def test_an_attestation_not_sent_is_temporary_and_names_the_command_that_fetches_it(
    setup: Setup,  # noqa: F811 - the fixture imported above
    fault: Callable[[str, str, bytes], bool],
) -> None:
    """Before: "warning: attestations from URL: 1 attestation(s) from URL refused: ...
    HTTP 500", no way named to fetch them later, and a re-run asks nothing. Now: exit 0,
    ``lib`` substituted and ``app`` built, "could not be fetched from URL (temporary: ...)"
    with no "refused", and a ``kiln copy`` line that, run after the fault, stores
    ``lib``'s provenance."""
    s = setup
    home = s.new_home("b")
    srv = Served(s.reg)
    proxy = _Proxy(srv.url, fault)
    try:
        r = _build(s, home, proxy.url)
        assert proxy.faulted >= 1, r.stderr
        proxy.failing.clear()
        assert r.returncode == 0, (r.stdout, r.stderr)
        assert r.stdout.split() == [s.app], r.stdout
        assert r.stderr.count("building") == 1, r.stderr  # lib substituted, app built
        assert "refused" not in r.stderr and "Traceback" not in r.stderr, r.stderr
        assert f"substituted path(s) could not be fetched from {proxy.url} (temporary: " in r.stderr, r.stderr
        assert "HTTP 500" in r.stderr.split("(temporary: ", 1)[1].split("\n", 1)[0], r.stderr
        with LocalStore.open(home) as st:
            assert st.is_valid(s.lib) and attestations.list(st, s.lib) == []
        line = r.stderr.split("fetch them later with\n  ", 1)[1].split("\n", 1)[0]
        cmd = shlex.split(line)
        assert cmd[:4] == ["kiln", "copy", "--from", proxy.url] and cmd[-1] == s.lib, line
        assert ["--store", str(home)] == cmd[6:8] and ["--trusted-key", s.pub(s.key)] == cmd[8:10], line
        later = subprocess.run(
            [sys.executable, "-m", "kiln", *cmd[1:]],
            env=dict(os.environ, KILN_HOME=str(home / "elsewhere")),  # (--store is in the line)
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        proxy.close()
        srv.stop()
    assert later.returncode == 0, later.stderr
    with LocalStore.open(home) as st:
        assert attestations.list(st, s.lib) == ["provenance"]  # (the SBOM is an unknown signer's)
