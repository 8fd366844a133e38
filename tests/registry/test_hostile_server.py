"""A registry that answers with hostile bodies: the HTTP client turns every one into a
``RegistryError`` (a miss for substitution, never an internal error), without reading
more than it should. The server here is a raw asyncio socket server, so it can send
what no well-behaved HTTP framework would."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import aiohttp
import pytest

from kiln.registry import httpclient as client_mod
from kiln.registry import httpretry, pace
from kiln.registry.client import RegistryError, Unreachable
from kiln.registry.httpclient import HttpClient
from kiln.store.hashes import Hash

Handler = Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]


async def _serve(handler: Handler, call: Callable[[HttpClient], Awaitable[object]]) -> object:
    async def wrapped(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.request_line = await r.readline()  # type: ignore[attr-defined]  # (for _by_request_line)
        while (await r.readline()) not in (b"\r\n", b""):
            pass  # headers
        try:
            await handler(r, w)
        except (ConnectionError, asyncio.CancelledError):
            pass
        finally:
            w.close()

    srv = await asyncio.start_server(wrapped, "127.0.0.1", 0)
    port = srv.sockets[0].getsockname()[1]
    c = HttpClient(f"http://127.0.0.1:{port}")
    try:
        return await asyncio.wait_for(call(c), 30)
    finally:
        await c.close()
        srv.close()


def _head(w: asyncio.StreamWriter, extra: str = "") -> None:
    w.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{extra}\r\n".encode())


def run(handler: Handler, call: Callable[[HttpClient], Awaitable[object]]) -> object:
    return asyncio.run(_serve(handler, call))


def test_an_endless_body_is_cut_at_the_cap(monkeypatch) -> None:
    monkeypatch.setattr(client_mod, "MAX_BODY", 1 << 20)
    sent = 0

    async def endless(r, w) -> None:
        nonlocal sent
        _head(w, "Transfer-Encoding: chunked\r\n")
        chunk = b"x" * 65536
        while sent < 64 << 20:
            w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            await w.drain()

    with pytest.raises(RegistryError, match="larger than"):
        run(endless, lambda c: c.narinfos(["a" * 32]))
    assert sent < 16 << 20  # the client stopped reading long before the server stopped


@pytest.mark.parametrize("status", [500, 403])
def test_an_endless_error_answer_is_quoted_not_read(status: int) -> None:
    """An error answer's body is only peeked at (to quote it), whatever its length."""
    sent = 0

    async def endless(r, w) -> None:
        nonlocal sent
        w.write(f"HTTP/1.1 {status} Oops\r\nTransfer-Encoding: chunked\r\n\r\n".encode())
        chunk = b"e" * 65536
        while sent < 256 << 20:
            w.write(b"%x\r\n%s\r\n" % (len(chunk), chunk))
            sent += len(chunk)
            await w.drain()

    for call in (lambda c: c.narinfos(["a" * 32]), lambda c: c.get("nix-cache-info")):
        sent = 0
        with pytest.raises(RegistryError, match=f"HTTP {status}: eeee"):
            run(endless, call)
        assert sent < 32 << 20  # the client stopped reading long before the server would


@pytest.mark.parametrize(
    "body",
    [b"[1]", b'{"narinfos": {"aaaa": 5}}', b'{"narinfos": [], "blobs": "x"}', b"not json", b'{"blobs": [1]}'],
)
def test_a_malformed_batch_answer_is_a_registry_error(body: bytes) -> None:
    async def answer(r, w) -> None:
        _head(w, f"Content-Length: {len(body)}\r\n")
        w.write(body)
        await w.drain()

    with pytest.raises(RegistryError, match="narinfo-batch"):
        run(answer, lambda c: c.narinfos(["a" * 32]))


def test_a_body_broken_off_is_a_registry_error() -> None:
    async def cut(r, w) -> None:
        _head(w, "Content-Length: 100000\r\n")
        w.write(b'{"narinfos": {')
        await w.drain()
        w.transport.abort()

    with pytest.raises(RegistryError, match="broken off|cut"):
        run(cut, lambda c: c.narinfos(["a" * 32]))


def test_blob_batch_refuses_an_object_announced_at_another_size() -> None:
    h = Hash.sha256_of(b"small object")
    sent_body = False

    async def huge(r, w) -> None:
        nonlocal sent_body
        _head(w, "Transfer-Encoding: chunked\r\n")
        line = f"{h.hex} {8 << 30}\n".encode()
        w.write(b"%x\r\n%s\r\n" % (len(line), line))
        await w.drain()
        await asyncio.sleep(0.5)
        sent_body = True

    got: list = []
    with pytest.raises(RegistryError, match="announced at"):
        run(huge, lambda c: c.blob_batch([h], lambda d, b: got.append(b), {h.hex: 12}))
    assert got == []


@pytest.fixture
def impatient(monkeypatch):
    """A client that gives answers 0.5 s of grace, then wants 1,000 bytes/s."""
    monkeypatch.setattr(pace, "GRACE", 0.5)
    monkeypatch.setattr(pace, "MIN_RATE", 1000)
    monkeypatch.setattr(client_mod, "HEADERS_TIMEOUT", 1.0)


async def _trickle(w: asyncio.StreamWriter, data: bytes) -> None:
    # one byte every 50 ms: never silent long enough for the per-read timeout
    for i in range(len(data)):
        w.write(data[i : i + 1])
        await w.drain()
        await asyncio.sleep(0.05)


def _timed(fn: Callable[[], object]) -> float:
    t = time.monotonic()
    fn()
    return time.monotonic() - t


@pytest.mark.parametrize(
    ("head", "trickled", "match"),
    [
        # the headers at once, then the body a byte at a time: the pace rule
        (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"10000\r\n" + b"x" * 100, "too slow"),
        # the headers themselves a byte at a time: the headers deadline
        (
            b"",
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nX-Pad: " + b"y" * 200,
            "no answer within",
        ),
    ],
    ids=["body", "headers"],
)
def test_a_trickled_answer_is_dropped(impatient, head: bytes, trickled: bytes, match: str) -> None:
    async def slow(r, w) -> None:
        w.write(head)
        await _trickle(w, trickled)

    def go() -> None:
        with pytest.raises(RegistryError, match=match):
            run(slow, lambda c: c.narinfos(["a" * 32]))

    assert _timed(go) < 5


def test_a_trickled_download_and_blob_batch_are_dropped_as_too_slow(impatient) -> None:
    h = Hash.sha256_of(b"x" * 1000)

    async def slow_blob(r, w) -> None:
        _head(w, "Content-Length: 1000\r\n")
        await _trickle(w, b"x" * 1000)

    async def slow_batch(r, w) -> None:
        _head(w, "Transfer-Encoding: chunked\r\n")
        line = f"{h.hex} 1000\n".encode()
        w.write(b"%x\r\n%s\r\n" % (len(line), line))
        await _trickle(w, b"3e8\r\n" + b"x" * 1000)

    def go() -> None:
        with pytest.raises(RegistryError, match="too slow"):
            run(slow_blob, lambda c: c.download("x", lambda b: None))
        with pytest.raises(RegistryError, match="too slow"):
            run(slow_batch, lambda c: c.blob_batch([h], lambda d, b: None, {h.hex: 1000}))

    assert _timed(go) < 8


def test_a_slow_but_steady_answer_is_read(impatient, monkeypatch) -> None:
    monkeypatch.setattr(pace, "GRACE", 2.0)  # (0.5 s left a loaded machine 0.2 s)
    body = b'{"narinfos": {}}'

    async def steady(r, w) -> None:
        _head(w, f"Content-Length: {len(body)}\r\n")
        await asyncio.sleep(0.3)  # within the grace period
        w.write(body)
        await w.drain()

    assert run(steady, lambda c: c.narinfos(["a" * 32])) == {}


def test_a_silent_server_is_unreachable_not_too_slow() -> None:
    # aiohttp's own read timeout (a TimeoutError too) must not be taken for the
    # headers deadline: a registry that accepts and never answers is unreachable
    async def go() -> None:
        async def silent(r, w) -> None:
            await asyncio.sleep(30)

        srv = await asyncio.start_server(silent, "127.0.0.1", 0)
        c = HttpClient(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        sess = c._sess()
        sess._timeout = aiohttp.ClientTimeout(total=None, connect=3, sock_connect=3, sock_read=0.5)
        try:
            with pytest.raises(Unreachable):
                await c._request("GET", "nix-cache-info")
        finally:
            await c.close()
            srv.close()

    asyncio.run(asyncio.wait_for(go(), 20))


def test_a_slow_answer_sharing_a_moving_link_is_not_dropped(impatient) -> None:
    """Many downloads at once over a slow link are each slow; that is not a trickle as
    long as the link as a whole keeps up the minimum pace."""

    async def go() -> tuple[int, int]:
        async def serve(r, w) -> None:
            line = await r.readline()
            while (await r.readline()) not in (b"\r\n", b""):
                pass
            if b"/slow" in line:  # 200 bytes over ~1.5 s: alone, far below 1,000 B/s
                _head(w, "Content-Length: 200\r\n")
                for _ in range(10):
                    w.write(b"s" * 20)
                    await w.drain()
                    await asyncio.sleep(0.15)
            else:  # the sibling keeps the link above the minimum meanwhile
                _head(w, "Content-Length: 40000\r\n")
                for _ in range(20):
                    w.write(b"f" * 2000)
                    await w.drain()
                    await asyncio.sleep(0.08)
            w.close()

        srv = await asyncio.start_server(serve, "127.0.0.1", 0)
        c = HttpClient(f"http://127.0.0.1:{srv.sockets[0].getsockname()[1]}")
        got = {"slow": 0, "fast": 0}
        try:

            async def fetch(key: str) -> None:
                assert await c.download(key, lambda b: got.__setitem__(key, got[key] + len(b)))

            await asyncio.gather(fetch("slow"), fetch("fast"))
        finally:
            await c.close()
            srv.close()
        return got["slow"], got["fast"]

    assert asyncio.run(asyncio.wait_for(go(), 20)) == (200, 40000)


def _by_request_line(respond: Callable[[bytes], bytes]):  # noqa: ANN202 - returns the runner
    """A runner ``serve(call)`` for a server that answers each request with
    ``respond(request line)`` (the whole raw answer) and closes the connection."""

    async def handler(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.write(respond(w.request_line))  # type: ignore[attr-defined]
        await w.drain()

    return lambda call: _serve(handler, call)


def _files(answers: dict[bytes, bytes]) -> Callable[[bytes], bytes]:
    """``respond`` for ``_by_request_line``: 200 with the body of the first request-line
    prefix in ``answers`` that matches, else 404."""

    def respond(line: bytes) -> bytes:
        body = next((a for k, a in answers.items() if line.startswith(k)), None)
        if body is None:
            return b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        return b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\nConnection: close\r\n\r\n%s" % (len(body), body)

    return respond


def test_answers_that_are_not_utf8_are_registry_errors() -> None:
    """A narinfo (a plain file server: no narinfo-batch, so one GET per path) or a
    nix-cache-info that is not UTF-8 is a malformed answer naming what was read."""
    h = "a" * 32
    serve = _by_request_line(
        _files({b"GET /" + h.encode(): b"StorePath: \xff\n", b"GET /nix-cache-info": b"\xfe"})
    )
    with pytest.raises(RegistryError, match=rf"/{h}.narinfo is not UTF-8 \(byte 11"):
        asyncio.run(serve(lambda c: c.narinfos([h])))
    with pytest.raises(RegistryError, match="nix-cache-info is not UTF-8"):
        asyncio.run(serve(lambda c: c.cache_info()))


def test_a_redirect_loop_is_named_as_one() -> None:
    loop = _by_request_line(
        lambda line: (
            b"HTTP/1.1 302 Found\r\nLocation: /loop\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
        )
    )
    with pytest.raises(
        RegistryError, match=r"nix-cache-info: too many redirects \(\d+, the last at http://.*/loop\)"
    ):
        asyncio.run(loop(lambda c: c.cache_info()))


@pytest.mark.parametrize("retry_after", ["0", "nan", "Wed, 21 Oct 2015 07:28:00 GMT", "1e9"])
def test_a_busy_answer_is_asked_again(monkeypatch, retry_after: str) -> None:
    """``kiln serve`` answers 503 when its blob batches or reviews are all taken: a
    substitution waits and asks again rather than failing (a Retry-After that is not a
    small number of seconds counts as 1 s, at most ``BUSY_WAIT_MAX``)."""
    monkeypatch.setattr(httpretry, "BUSY_WAIT_MAX", 0.05)
    asked = 0

    async def busy_then_ok(r, w) -> None:
        nonlocal asked
        asked += 1
        if asked < 3:
            w.write(f"HTTP/1.1 503 Busy\r\nRetry-After: {retry_after}\r\nContent-Length: 0\r\n\r\n".encode())
        else:
            body = b'{"narinfos": {}}'
            _head(w, f"Content-Length: {len(body)}\r\n")
            w.write(body)
        await w.drain()

    assert run(busy_then_ok, lambda c: c.narinfos(["a" * 32])) == {}
    assert asked == 3


def test_busy_for_ever_is_an_error_not_a_hang(monkeypatch) -> None:
    monkeypatch.setattr(httpretry, "BUSY_WAIT_MAX", 0.01)

    async def busy(r, w) -> None:
        w.write(b"HTTP/1.1 503 Busy\r\nRetry-After: 0\r\nContent-Length: 0\r\n\r\n")
        await w.drain()

    with pytest.raises(RegistryError, match="503"):
        run(busy, lambda c: c.narinfos(["a" * 32]))
