"""A server that quotes the request's ``Authorization`` header back ("denied for Bearer
kiln_...", as some proxies and error pages do) never gets the client's credentials into
kiln's output (``registry/tokentext.py``): the token, the Basic value (base64) and the
password in it become ``***`` wherever kiln quotes a server's text.

- ``kiln push --token T``'s stderr after a 401 error body (``HttpClient._fail``), with a
  token that is not kiln-shaped (the stderr filter would not know it) and with a kiln
  token, and with Basic credentials in the URL;
- ``kiln verify --token T URL#H``'s stdout (not filtered at all);
- the per-path messages of an ``upload-batch`` answer (``push.check_results``) and of an
  ``attestation-upload-batch`` answer (``attest_wire.upload_many``);
- ``publish-index``'s answer (printed by ``kiln push`` on stdout);
- an error body cut by the client's peek in the middle of the token;
- aiohttp's own error for a malformed answer, which quotes the status line.

The servers are a real ``http.server`` on 127.0.0.1 in a thread of the test, and a raw
asyncio one for what no HTTP framework sends."""

from __future__ import annotations

import asyncio
import base64
import json
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
from regkit import add_tree, kiln, make_store

from kiln.registry import attest_wire, httpclient, push
from kiln.registry.httpclient import HttpClient
from kiln.store.errors import KilnError

#: a kiln-shaped token and one that is not (another server's bearer token, a Basic password)
KILN_TOKEN = "kiln_6645cb44_RHx6" + "Qz9-_a" * 7
PLAIN_TOKEN = "plain-Secret-4f1c9e07d2b3"
#: (status, body) of an answer, given the request's method, path and Authorization header
Answer = Callable[[str, str, str], tuple[int, bytes]]


def denied(method: str, path: str, auth: str) -> tuple[int, bytes]:
    return 401, f"denied for {auth}\n".encode()


@pytest.fixture
def echo_server() -> Iterator[Callable[[Answer], str]]:
    """Start a server answering every request with ``answer(...)``; its URL."""
    servers: list[ThreadingHTTPServer] = []

    def start(answer: Answer) -> str:
        class Handler(BaseHTTPRequestHandler):
            def _any(self) -> None:
                n = int(self.headers.get("Content-Length") or 0)
                if n:
                    self.rfile.read(n)
                status, body = answer(self.command, self.path, self.headers.get("Authorization", ""))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_HEAD = do_PUT = do_POST = _any  # noqa: N815 - http.server's names

            def log_message(self, *a: object) -> None:
                pass

        srv = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=srv.serve_forever, daemon=True).start()
        servers.append(srv)
        return f"http://127.0.0.1:{srv.server_address[1]}"

    yield start
    for srv in servers:
        srv.shutdown()
        srv.server_close()


def _pushable(tmp_path):  # noqa: ANN202
    store = make_store(tmp_path / "store")
    return store, add_tree(store, tmp_path, "p", "p\n")


@pytest.mark.parametrize("token", [PLAIN_TOKEN, KILN_TOKEN])
def test_push_error_body_does_not_quote_the_token(tmp_path, echo_server, token: str) -> None:
    url = echo_server(denied)
    store, path = _pushable(tmp_path)
    r = kiln("push", "--store", str(store.root), path, "--to", url, "--token", token)
    assert r.returncode == 1
    assert "HTTP 401: denied for Bearer ***" in r.stderr, r.stderr
    assert token[14:30] not in r.stdout + r.stderr


def test_push_error_body_does_not_quote_basic_credentials(tmp_path, echo_server) -> None:
    url = echo_server(denied)
    store, path = _pushable(tmp_path)
    value = base64.b64encode(f"nix:{PLAIN_TOKEN}".encode()).decode()
    r = kiln("push", "--store", str(store.root), path, "--to", url.replace("//", f"//nix:{PLAIN_TOKEN}@"))
    assert r.returncode == 1
    assert "HTTP 401: denied for Basic ***" in r.stderr, r.stderr
    assert value[:12] not in r.stderr and PLAIN_TOKEN not in r.stderr


def test_a_quoted_password_is_hidden_too(echo_server) -> None:
    """The password alone, and as JSON escapes it, as well as the header value."""
    password = 'p/ss"' + PLAIN_TOKEN

    def quoting(method: str, path: str, auth: str) -> tuple[int, bytes]:
        return 403, json.dumps({"error": "bad password", "got": password}).encode()

    url = echo_server(quoting).replace("//", "//nix:p%2Fss%22" + PLAIN_TOKEN + "@")
    with pytest.raises(KilnError) as e:
        _client_call(url, None, lambda c: c.cache_info())
    assert "HTTP 403" in str(e.value) and '"got": "***"' in str(e.value), str(e.value)
    assert PLAIN_TOKEN not in str(e.value)


def test_verify_report_on_stdout_does_not_quote_the_token(tmp_path, echo_server) -> None:
    url = echo_server(denied)
    r = kiln("verify", "--token", PLAIN_TOKEN, f"{url}#" + "sha256:" + "0" * 64)
    assert r.returncode != 0
    assert "***" in r.stdout, r.stdout
    assert PLAIN_TOKEN not in r.stdout + r.stderr


def test_an_error_body_cut_inside_the_token_shows_none_of_it(echo_server, monkeypatch) -> None:
    """The client peeks at ``ERROR_PEEK`` bytes of an error body: a token the peek cuts
    loses its start too."""
    monkeypatch.setattr(httpclient, "ERROR_PEEK", 40)

    def long(method: str, path: str, auth: str) -> tuple[int, bytes]:
        return 500, b"x" * 20 + auth.encode() + b"y" * 100

    url = echo_server(long)
    with pytest.raises(KilnError) as e:
        _client_call(url, PLAIN_TOKEN, lambda c: c.cache_info())
    # 20 x, "Bearer " and 13 characters of the token were peeked at: those 13 are hidden
    assert str(e.value).endswith("x" * 20 + "Bearer ***"), str(e.value)


def _client_call(url: str, token: str | None, call: Callable) -> object:
    async def go() -> object:
        c = HttpClient(url, token)
        try:
            return await call(c)
        finally:
            await c.close()

    return asyncio.run(go())


def test_upload_batch_messages_do_not_quote_the_token(tmp_path, echo_server) -> None:
    def refusing(method: str, path: str, auth: str) -> tuple[int, bytes]:
        return 200, json.dumps(
            {"results": [{"hash": "a" * 32, "status": 403, "message": f"no {auth}"}]}
        ).encode()

    url = echo_server(refusing)
    with pytest.raises(KilnError) as e:
        _client_call(url, PLAIN_TOKEN, lambda c: push.upload_sliced(c, [("a" * 32, b"StorePath: x\n", None)]))
    assert "HTTP 403: no Bearer ***" in str(e.value), str(e.value)
    assert PLAIN_TOKEN not in str(e.value)


def test_attestation_upload_messages_do_not_quote_the_token(echo_server) -> None:
    def refusing(method: str, path: str, auth: str) -> tuple[int, bytes]:
        return 200, json.dumps({"results": [{"status": 403, "message": f"no {auth}"}]}).encode()

    url = echo_server(refusing)
    out = _client_call(url, PLAIN_TOKEN, lambda c: attest_wire.upload_many(c, [("a" * 32, "sbom", b"{}")]))
    assert isinstance(out, list) and len(out) == 1
    assert "HTTP 403: no Bearer ***" in str(out[0]), out
    assert PLAIN_TOKEN not in str(out[0])


def test_publish_index_answer_does_not_quote_the_token(echo_server) -> None:
    url = echo_server(lambda method, path, auth: (200, f"published for {auth}".encode()))
    said = _client_call(url, PLAIN_TOKEN, lambda c: c.publish_index())
    assert said == "published for Bearer ***"


def test_a_malformed_status_line_quoting_the_token_is_hidden() -> None:
    """aiohttp's parser error quotes the status line the server sent."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        auth = b""
        while (line := await r.readline()) not in (b"\r\n", b""):
            if line.lower().startswith(b"authorization:"):
                auth = line.split(b":", 1)[1].strip()
        w.write(b"HTTP/1.1 abc " + auth + b"\r\nContent-Length: 0\r\n\r\n")
        await w.drain()
        w.close()

    async def go() -> None:
        srv = await asyncio.start_server(handler, "127.0.0.1", 0)
        c = HttpClient(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}", PLAIN_TOKEN)
        try:
            await c.cache_info()
        finally:
            await c.close()
            srv.close()

    with pytest.raises(KilnError) as e:
        asyncio.run(go())
    assert "Bearer ***" in str(e.value), str(e.value)
    assert PLAIN_TOKEN not in str(e.value)
