"""What the registry client says when a request fails on the way (``registry/httperrors.py``):
the request (``METHOD URL/key``) and what happened. A stall used to read "registry URL is
unreachable: Timeout on reading data from socket" (a connection had been made), a reset
"registry URL: [Errno 104] Connection reset by peer", and a framing byte flipped in a
batch answer quoted aiohttp's parser as if the server had answered 400. A write whose
answer was lost says its outcome is unknown and that running the push again is safe,
which the test then does. And a framing error after the first piece of a chunked body
fails the read at once: aiohttp's parser left it waiting for ever (no read timeout).

A real ``kiln serve`` behind the test's fault proxy (``faultkit``), and for the last a
raw asyncio server."""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path

import aiohttp
import pytest
from faultkit import Fault, FaultProxy, Served, copy_to_store, serve_registry
from regkit import add_tree, push_cli

from kiln.registry.client import RegistryError
from kiln.registry.httpclient import HttpClient


@pytest.fixture
def served(tmp_path: Path, keys, kiln_server) -> Served:
    return serve_registry(tmp_path, keys, kiln_server)


def _nar_key(served: Served) -> str:
    h = served.big.rsplit("/", 1)[1][:32]
    text = (Path(str(served.reg)) / f"{h}.narinfo").read_text()
    return next(ln.split(": ", 1)[1] for ln in text.splitlines() if ln.startswith("URL: "))


def _client_error(url: str, call, sock_read: float = 120) -> RegistryError:  # noqa: ANN001
    """The ``RegistryError`` ``call(client)`` raises against ``url``, the client's read
    timeout ``sock_read`` s."""

    async def go() -> RegistryError:
        c = HttpClient(url)
        c._sess()._timeout = aiohttp.ClientTimeout(total=None, sock_connect=3, sock_read=sock_read)
        try:
            await asyncio.wait_for(call(c), 60)
        except RegistryError as e:
            return e
        finally:
            await c.close()
        raise AssertionError("no error")

    return asyncio.run(go())


def test_a_stalled_request_is_named_and_not_unreachable(served: Served) -> None:
    key = _nar_key(served)
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "stall_head"))
        e = _client_error(p.url, lambda c: c.download(key, lambda b: None), sock_read=1)
    assert str(e) == f"GET {p.url}/{key}: no answer within 1 s"


def test_a_reset_before_the_answer_is_named(served: Served) -> None:
    """(A read is sent again a few times first, then given up on.)"""
    key = _nar_key(served)
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "reset_req", k=0, count=None))
        e = _client_error(p.url, lambda c: c.download(key, lambda b: None))
        assert len(p.requests("GET /nar/")) > 1
    assert str(e) == f"GET {p.url}/{key}: connection reset before an answer came"


@pytest.mark.parametrize(
    ("mode", "said"), [("reset_req", "connection reset"), ("close_early", "answer broken off")]
)
def test_a_push_whose_answer_was_lost_says_running_it_again_is_safe(
    served: Served, tmp_path: Path, mode: str, said: str
) -> None:
    path = add_tree(served.store, tmp_path, "more", "more\n")  # type: ignore[arg-type]
    with FaultProxy(served.url) as p:
        p.set(Fault("POST /upload-batch", mode, k=0))
        r = push_cli(served.store, [path], p.url, served.token, served.sk_file)  # type: ignore[arg-type]
        assert r.returncode == 1, r.stderr
        assert f"POST {p.url}/upload-batch: {said}" in r.stderr, r.stderr
        assert "whether the registry took this write is unknown" in r.stderr
        assert "running the push again is safe" in r.stderr
        assert len(p.requests("POST /upload-batch")) == 1  # (a write is not sent again)
        r = push_cli(served.store, [path], p.url, served.token, served.sk_file)  # type: ignore[arg-type]
        assert r.returncode == 0 and "pushed" in r.stdout, r.stderr


def test_a_flipped_framing_byte_is_a_malformed_answer_not_a_400(served: Served, tmp_path: Path) -> None:
    with FaultProxy(served.url) as p:
        p.set(Fault("POST /blob-batch", "corrupt_lf"))
        r = copy_to_store(p.url, tmp_path / "dest", served, served.small[-1])
        assert r.returncode == 1, r.stderr
        assert f"POST {p.url}/blob-batch: malformed answer (" in r.stderr, r.stderr
        assert "HTTP 400" not in r.stderr  # (not a bare "400": the proxy's port may hold one)


@pytest.mark.parametrize("call", ["get", "download"])
def test_a_framing_error_later_in_a_body_fails_the_read(call: str) -> None:
    """The head and a first piece, then a chunk whose framing is broken: the read fails
    as a malformed answer within seconds (it waited for ever: aiohttp's parser drops the
    read timeout and never tells the body)."""

    async def go() -> RegistryError:
        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            while (await r.readline()) not in (b"\r\n", b""):
                pass
            w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
            await w.drain()
            await asyncio.sleep(0.3)
            w.write(b"5\r\nhello\r\x0b0\r\n\r\n")
            await w.drain()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.sleep(30)

        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        c = HttpClient(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        try:
            if call == "get":
                await asyncio.wait_for(c.get("x"), 20)
            else:
                await asyncio.wait_for(c.download("x", lambda b: None), 20)
        except RegistryError as e:
            return e
        finally:
            await c.close()
            srv.close()
        raise AssertionError("no error")

    e = asyncio.run(go())
    assert "GET http://127.0.0.1:" in str(e) and "/x: malformed answer (" in str(e), str(e)


def test_a_download_whose_framing_broke_is_asked_again_whole() -> None:
    """A flipped chunk size can pass framing off as data before the parser notices, so a
    download whose framing broke mid-body is started over (a ``Sink``), never resumed
    from the bytes it took; a plain ``write`` cannot drop them, so it fails as before."""
    from kiln.registry.downloadsink import Sink

    body = b"the object's bytes\n" * 50

    async def go(sink: bool) -> tuple[bytes, list[str], RegistryError | None]:
        requests: list[str] = []

        async def serve(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
            head = b""
            while (line := await r.readline()) not in (b"\r\n", b""):
                head += line
            requests.append(head.decode())
            if len(requests) == 1:  # a first piece, then (later, as the body) broken framing
                w.write(b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n")
                await w.drain()
                await asyncio.sleep(0.3)
                w.write(b"5\r\nhello\r\x0b0\r\n\r\n")
            else:
                w.write(b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            await w.drain()
            w.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        c = HttpClient(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        got = bytearray()
        write = Sink(got.extend, got.clear) if sink else got.extend
        try:
            assert await asyncio.wait_for(c.download("x", write), 20)
        except RegistryError as e:
            return bytes(got), requests, e
        finally:
            await c.close()
            srv.close()
        return bytes(got), requests, None

    got, requests, err = asyncio.run(go(sink=True))
    assert err is None and got == body and len(requests) == 2
    assert "range:" not in requests[1].lower()  # asked whole, not resumed
    _, requests, err = asyncio.run(go(sink=False))
    assert err is not None and "/x: malformed answer (" in str(err) and len(requests) == 1
