"""The narinfo fast path (``registry/fastpath.py``): differential tests against the same
server without it (``--no-fast-path``), byte for byte on raw sockets, and the cases where
it must stand aside (pipelining, split requests, bodies, a busy connection, private
registries). Real ``kiln serve`` processes on 127.0.0.1; the engagement test runs the
server in-process to read its counter."""

from __future__ import annotations

import asyncio
import os
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
from regkit import add_tree, make_store

from kiln.registry import fastpath
from kiln.store.localstore import LocalStore

MISSING = "0" * 32


def _read_response(f, head_only: bool = False) -> bytes:
    """One HTTP/1.1 response from the buffered socket file ``f``, as received."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        line = f.readline()
        if not line:
            raise ConnectionError(f"connection closed mid-response: {head!r}")
        head += line
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    return head + (b"" if head_only else f.read(length))


def _normalise(resp: bytes) -> tuple[bytes, list[bytes], bytes]:
    """(status line, header fields in order without Date, body)."""
    head, _, body = resp.partition(b"\r\n\r\n")
    status, *fields = head.split(b"\r\n")
    return status, [f for f in fields if not f.lower().startswith(b"date:")], body


def _talk(
    url: str, writes: list[bytes], answers: list[bool], pause: float = 0.0, linger: float = 0.2
) -> tuple[list[bytes], bool]:
    """Send ``writes`` on one connection (``pause`` seconds apart), then read one
    response per entry of ``answers`` (True: the answer to a HEAD, no body); return
    them and whether the server closed the connection afterwards (within ``linger`` s)."""
    u = urlsplit(url)
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for w in writes:
            s.sendall(w)
            if pause:
                time.sleep(pause)
        f = s.makefile("rb")
        got = [_read_response(f, head) for head in answers]
        s.settimeout(linger)
        try:
            closed = f.read(1) == b""
        except (TimeoutError, OSError):
            closed = False
        return got, closed


def _conversation(url: str, writes: list[bytes], answers: list[bool], pause: float = 0.0) -> list[bytes]:
    return _talk(url, writes, answers, pause)[0]


def _get(target: str, *fields: str, method: str = "GET", version: str = "1.1", host: bool = True) -> bytes:
    lines = [f"{method} {target} HTTP/{version}", *(["Host: 127.0.0.1"] if host else []), *fields]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    """A signed store with a small and an 8 MiB path, served twice: with and without
    the fast path."""
    from regkit import Keys, start_kiln

    tmp = tmp_path_factory.mktemp("fastpath")
    keys = Keys(tmp, "fast-1")
    store = make_store(tmp / "store")
    small = add_tree(store, tmp, "small", "hello\n" * 50)
    big_src = tmp / "src" / "big"
    big_src.mkdir(parents=True)
    (big_src / "blob").write_bytes(os.urandom(8 << 20))
    big = store.add_path(big_src, "big").path
    big_info = store.query(big)
    store.close()
    common = ["--store", str(tmp / "store"), "--sign-key", str(keys.sk_file)]
    fast, plain = start_kiln(common), start_kiln([*common, "--no-fast-path"])
    yield {
        "fast": fast.url,
        "plain": plain.url,
        "small": small.split("/")[-1][:32],
        "big": big.split("/")[-1][:32],
        "big_blob": f"/blobs/sha256:{big_info.file_hash.hex}",
        "store": tmp / "store",
    }
    fast.stop()
    plain.stop()


def _both(served, writes: list[bytes], answers: list[bool], pause: float = 0.0) -> list[bytes]:
    """The conversation with both servers; asserts they answered alike (and left the
    connection open or closed alike) and returns the fast server's responses."""
    got, got_closed = _talk(served["fast"], writes, answers, pause)
    want, want_closed = _talk(served["plain"], writes, answers, pause)
    assert [_normalise(r) for r in got] == [_normalise(r) for r in want]
    if got_closed != want_closed:  # (a close that came later than 0.2 s on a loaded machine?)
        got_closed = _talk(served["fast"], writes, answers, pause, linger=3.0)[1]
        want_closed = _talk(served["plain"], writes, answers, pause, linger=3.0)[1]
    assert got_closed == want_closed, f"fast path closed: {got_closed}, aiohttp closed: {want_closed}"
    return got


def test_same_answers_one_request_per_connection(served) -> None:
    h = served["small"]
    cases = [
        (_get(f"/{h}.narinfo"), False),
        (_get(f"/{h}.narinfo", "User-Agent: curl/8", "Accept: */*", "X-Odd:  spaced value\t"), False),
        (_get(f"/{h}.narinfo", "Connection: close"), False),
        (_get(f"/{h}.narinfo", "Content-Length: 0"), False),
        (_get(f"/{h}.narinfo", version="1.0"), False),
        (_get(f"/{h}.narinfo", method="HEAD"), True),
        (_get(f"/{MISSING}.narinfo"), False),
        (_get(f"/{h.upper()}.narinfo"), False),
        (_get(f"/{h}.narinfo?x=1"), False),
        (_get("/nix-cache-info"), False),
        # requests aiohttp refuses (400 and close) or answers differently
        (_get(f"/{h}.narinfo", host=False), False),
        (_get(f"/{h}.narinfo", "Host: other"), False),
        (_get(f"/{h}.narinfo", "User-Agent: a", "User-Agent: b"), False),
        (_get(f"/{h}.narinfo", "Sec-WebSocket-Key1: x"), False),
        (_get(f"/{h}.narinfo", "Proxy-Connection: close"), False),
        (_get(f"/{h}.narinfo", "Connection: keep-alive"), False),
        (_get(f"/{h}.narinfo", "Expect: 100-continue"), False),
    ]
    for req, head in cases:
        (resp,) = _both(served, [req], [head])
        assert resp.startswith(b"HTTP/1."), resp[:80]
    (resp,) = _conversation(served["fast"], [_get(f"/{h}.narinfo")], [False])
    assert resp.startswith(b"HTTP/1.1 200 OK\r\n") and b"\nSig: fast-1:" in resp
    assert (
        b"Content-Type: text/x-nix-narinfo\r\n" in resp and b"Cache-Control: public, max-age=3600\r\n" in resp
    )


def test_same_answers_on_one_keep_alive_connection(served) -> None:
    """A substituter's conversation: cache info, hits, a miss, a HEAD, more hits."""
    h, b = served["small"], served["big"]
    steps = [
        (_get("/nix-cache-info"), False),
        (_get(f"/{h}.narinfo"), False),
        (_get(f"/{b}.narinfo"), False),
        (_get(f"/{MISSING}.narinfo"), False),
        (_get(f"/{h}.narinfo", method="HEAD"), True),
        (_get(f"/{b}.narinfo"), False),
        (_get(f"/{h}.narinfo"), False),
    ]
    # one write at a time, each answered before the next is sent
    outs = []
    for url in (served["fast"], served["plain"]):
        u = urlsplit(url)
        with socket.create_connection((u.hostname, u.port), timeout=30) as s:
            f = s.makefile("rb")
            out = []
            for req, head in steps:
                s.sendall(req)
                out.append(_normalise(_read_response(f, head)))
        outs.append(out)
    fast_out, out = outs
    assert fast_out == out
    ok, miss = b"HTTP/1.1 200 OK", b"HTTP/1.1 404 Not Found"
    assert [o[0] for o in out] == [ok, ok, ok, miss, ok, ok, ok]


def test_pipelined_and_split_requests(served) -> None:
    h, b = served["small"], served["big"]
    one, two = _get(f"/{h}.narinfo"), _get(f"/{b}.narinfo")
    # two requests in one write: answered in order (by aiohttp), and later ones too
    got = _both(served, [one + two, one], [False, False, False], pause=0.05)
    assert all(b"StorePath: /kiln/store/" + x.encode() in r for r, x in zip(got, (h, b, h), strict=True))
    # a request split over two writes, then whole ones on the same connection
    got = _both(served, [one[:20], one[20:], two, one], [False] * 3, pause=0.05)
    assert all(r.startswith(b"HTTP/1.1 200 OK") for r in got)
    # more pipelined requests than aiohttp queues at once (its reading pauses and resumes)
    got = _both(served, [one * 40, two], [False] * 41, pause=0.05)
    assert (
        sum(r.startswith(b"HTTP/1.1 200 OK") for r in got) == 41 and b"/kiln/store/" + b.encode() in got[-1]
    )
    # the second piece of a split request that looks like a whole narinfo GET is still
    # the end of the first request (a header value here)
    got = _both(served, [b"GET /nix-cache-info HTTP/1.1\r\nX-A: ", one], [False], pause=0.05)
    assert b"StoreDir:" in got[0]
    # a request whose header block looks complete but has a body announced: the body
    # must not be taken for a request
    smuggle = f"GET /{h}.narinfo HTTP/1.1\r\nHost: x\r\nContent-Length: {len(two)}\r\n\r\n".encode() + two
    got = _both(served, [smuggle, one], [False, False], pause=0.05)
    assert [r.count(b"StorePath:") for r in got] == [1, 1]


def test_busy_connection_keeps_order(served) -> None:
    """A narinfo GET sent while an 8 MiB blob is still being written on the same
    connection is answered after the blob, not in the middle of it."""
    h = served["small"]
    writes = [_get(served["big_blob"]), _get(f"/{h}.narinfo")]
    got = _both(served, writes, [False, False], pause=0.001)
    assert len(got[0]) > 8 << 20 and got[1].startswith(b"HTTP/1.1 200 OK")


def test_bad_request_then_narinfo(served) -> None:
    h = served["small"]
    _both(served, [b"GET / HTTP/1.1\r\nBad Header\r\n\r\n"], [False])
    _both(served, [b"BREW /pot HTTP/1.1\r\nHost: x\r\n\r\n"], [False])
    u = urlsplit(served["fast"])
    with socket.create_connection((u.hostname, u.port), timeout=30) as s:
        s.sendall(b"GET / HTTP/1.1\r\nBad Header\r\n\r\n")
        f = s.makefile("rb")
        first = _read_response(f)
        assert first.startswith((b"HTTP/1.0 400", b"HTTP/1.1 400")), first[:60]
        try:
            s.sendall(_get(f"/{h}.narinfo"))
            rest = f.read(1)
        except (BrokenPipeError, ConnectionResetError):
            rest = b""
        assert rest == b""  # aiohttp closed the connection after the 400


def test_private_registry_never_answers_without_a_token(tmp_path: Path, keys, kiln_server) -> None:
    from kiln.registry.auth import TokenStore
    from kiln.registry.dirclient import DirClient
    from kiln.registry.storage import open_storage

    reg = tmp_path / "reg"
    DirClient(str(reg), "/kiln/store")
    (reg / f"{'1' * 32}.narinfo").write_text("StorePath: /kiln/store/x\n")
    TokenStore(open_storage(reg)).create(["read"])
    srv = kiln_server("--dir", str(reg), "--private")
    (resp,) = _conversation(srv.url, [_get(f"/{'1' * 32}.narinfo")], [False])
    assert resp.startswith(b"HTTP/1.1 401"), resp[:100]


def _in_process(make):
    """``make()`` (a ``web.Server``, made inside the loop) serving on 127.0.0.1 in a
    thread; returns (url, server, stop)."""
    from kiln.registry import workers

    sock = workers.bind("127.0.0.1", 0)
    loop = asyncio.new_event_loop()
    ready = threading.Event()
    made: list = []

    async def main() -> None:
        from aiohttp import web

        made.append(make())  # aiohttp's Server needs the running loop
        runner = web.ServerRunner(made[0], handle_signals=False)
        await runner.setup()
        await web.SockSite(runner, sock).start()
        made.append(asyncio.Event())
        ready.set()
        await made[1].wait()
        await runner.cleanup()

    t = threading.Thread(target=lambda: loop.run_until_complete(main()), daemon=True)
    t.start()
    assert ready.wait(10)

    def stop() -> None:
        loop.call_soon_threadsafe(made[1].set)
        t.join(10)
        loop.close()

    return f"http://127.0.0.1:{sock.getsockname()[1]}", made[0], stop


def test_fast_path_engages_only_when_it_may(served) -> None:
    assert fastpath.supported(), "this aiohttp lacks what fastpath relies on: it would be off"
    LocalStore.open(served["store"]).close()
    from kiln.registry.server import ServerConfig, make_app, open_source

    src = open_source(store=served["store"], directory=None, sign_key=None, store_dir=None)
    url, app, stop = _in_process(lambda: make_app(src, ServerConfig()))
    try:
        assert isinstance(app, fastpath.FastServer)
        h = served["small"]
        one = _get(f"/{h}.narinfo")

        def answered_fast(writes: list[bytes], n: int, pause: float = 0.05) -> int:
            before = app.fast_answers
            _conversation(url, writes, [False] * n, pause)
            return app.fast_answers - before

        # the first request of a connection may arrive before aiohttp's loop waits
        assert answered_fast([one, one, one], 3) >= 2
        assert answered_fast([_get("/nix-cache-info"), one], 2) == 1  # a GET keeps the boundary
        assert answered_fast([one + one, one], 3) == 0  # pipelining: aiohttp from then on
        assert answered_fast([one[:20], one[20:], one], 2) == 0  # a split request
        assert answered_fast([_get(f"/{h}.narinfo", "Connection: close")], 1) == 0
        assert answered_fast([_get(f"/{MISSING}.narinfo"), one], 2) == 1  # a miss is aiohttp's
    finally:
        stop()


def test_lookup_that_raises_gets_aiohttps_answer(served) -> None:
    """An error in the fast path's lookup is not a dropped connection: aiohttp's path
    runs the handler, which answers as it does."""
    from aiohttp import web

    def broken(_hash: str) -> bytes:
        raise OSError("disk on fire")

    async def handler(_request: web.BaseRequest) -> web.Response:
        return web.Response(status=500, text="handler ran\n")

    url, app, stop = _in_process(
        lambda: fastpath.make_server(handler, lookup=broken, cache_control="x", access_log=None)
    )
    try:
        (resp,) = _conversation(url, [_get(f"/{served['small']}.narinfo")], [False])
        assert resp.startswith(b"HTTP/1.1 500") and resp.endswith(b"handler ran\n")
        assert app.fast_answers == 0
    finally:
        stop()
