"""The server's side of the slowloris rule (``registry/pace.py``): a client that
trickles a request body is answered 408 instead of holding the connection for as long
as it likes; a slow but steady one is served. In process (``make_app`` on a real
socket), so the pace can be shortened for the test."""

from __future__ import annotations

import asyncio
import time
from pathlib import Path

import pytest
from aiohttp import web

from kiln.registry import pace
from kiln.registry.backends import DirSource
from kiln.registry.dirclient import DirClient
from kiln.registry.server import ServerConfig, make_app


@pytest.fixture
def impatient(monkeypatch):
    monkeypatch.setattr(pace, "GRACE", 0.5)
    monkeypatch.setattr(pace, "MIN_RATE", 1000)


async def _with_server(reg: Path, talk) -> object:
    DirClient(str(reg), "/kiln/store")
    runner = web.ServerRunner(make_app(DirSource(reg, store_dir="/kiln/store"), ServerConfig()))
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]
    try:
        return await asyncio.wait_for(talk(port), 20)
    finally:
        await runner.cleanup()


async def _post(port: int, body: bytes, gap: float) -> tuple[bytes, float]:
    """POST /narinfo-batch with ``body`` sent ``gap`` seconds apart per 20 bytes; the
    status line of the answer and when it came."""
    r, w = await asyncio.open_connection("127.0.0.1", port)
    t = time.monotonic()
    w.write(
        b"POST /narinfo-batch HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body)
    )
    answer = asyncio.ensure_future(r.readline())
    for i in range(0, len(body), 20):
        if answer.done():
            break
        w.write(body[i : i + 20])
        await w.drain()
        await asyncio.sleep(gap)
    status = await answer
    w.close()
    return status, time.monotonic() - t


def test_a_trickled_request_body_gets_408(tmp_path, impatient) -> None:
    body = b'{"narinfos": ["' + b"a" * 32 + b'"]}' + b" " * 400
    status, secs = asyncio.run(_with_server(tmp_path / "reg", lambda port: _post(port, body, 0.1)))
    assert status.startswith(b"HTTP/1.1 408"), status
    assert secs < 5  # not the ~2 s the whole trickle would take, give or take the grace


def test_a_slow_but_steady_request_body_is_served(tmp_path, impatient) -> None:
    body = b'{"narinfos": ["' + b"a" * 32 + b'"]}'
    status, _ = asyncio.run(_with_server(tmp_path / "reg", lambda port: _post(port, body, 0.05)))
    assert status.startswith(b"HTTP/1.1 200"), status


def test_the_peer_table_forgets_the_least_recently_used_address(monkeypatch) -> None:
    from types import SimpleNamespace

    from kiln.registry import httpbits

    monkeypatch.setattr(httpbits, "_MAX_PEERS", 3)
    monkeypatch.setattr(httpbits, "_PEER_LINKS", httpbits.OrderedDict())

    def pace(ip: str) -> pace.Pace:
        return httpbits.body_pace(SimpleNamespace(remote=ip, protocol=None), "body")

    busy = pace("10.0.0.1").link
    busy.n = 123
    for i in range(2, 20):  # a client rotating addresses
        pace(f"10.0.0.{i}")
        assert pace("10.0.0.1").link is busy  # (used again: kept)
    assert busy.n == 123 and len(httpbits._PEER_LINKS) == 3


def test_a_bounded_body_has_a_deadline_whatever_its_link_does(tmp_path, impatient, monkeypatch) -> None:
    from kiln.registry import batchapi

    monkeypatch.setattr(batchapi, "MAX_QUERY_BODY", 1500)  # deadline 0.5 s + 1500 / 1000 B/s = 2 s

    async def talk(port: int) -> tuple[bytes, float]:
        async def keeper() -> None:  # the same address sends plenty meanwhile
            body = b"[" + b" " * 1400 + b"]"
            for _ in range(200):
                r, w = await asyncio.open_connection("127.0.0.1", port)
                w.write(b"POST /narinfo-batch HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % len(body))
                w.write(body)
                await r.readline()
                w.close()
                await asyncio.sleep(0.02)

        k = asyncio.ensure_future(keeper())
        try:
            return await _post(port, b"[" + b" " * 1400 + b"]", 0.3)  # 20 B per 0.3 s: never silent
        finally:
            k.cancel()

    status, secs = asyncio.run(_with_server(tmp_path / "reg", talk))
    assert status.startswith(b"HTTP/1.1 408"), status
    assert secs < 4


def test_parallel_uploads_over_one_slow_link_are_judged_as_that_link(tmp_path, impatient) -> None:
    """Two authenticated uploads from one address, each below the minimum pace but the
    link above it, past the time either's size takes at that pace: not 408 (a deadline
    per upload cut `kiln push -j 8` over a slow uplink; the body here is junk, so the
    answer is the digest's 400)."""
    import subprocess
    import sys

    reg = tmp_path / "reg"
    DirClient(str(reg), "/kiln/store")
    token = subprocess.run(
        [sys.executable, "-m", "kiln", "registry", "token", "create", "--scope", "write", "--dir", str(reg)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()

    async def upload(port: int, n: int) -> bytes:
        body = bytes([n]) * 3000  # at 1000 B/s: 0.5 + 3 s; sent over ~5 s at 600 B/s
        r, w = await asyncio.open_connection("127.0.0.1", port)
        w.write(
            f"PUT /blobs/sha256:{f'{n:02x}' * 32} HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {token}\r\n"
            f"Content-Length: {len(body)}\r\n\r\n".encode()
        )
        answer = asyncio.ensure_future(r.readline())
        for i in range(0, len(body), 60):
            if answer.done():
                break
            w.write(body[i : i + 60])
            await w.drain()
            await asyncio.sleep(0.1)
        status = await answer
        w.close()
        return status

    async def talk(port: int) -> list[bytes]:
        return list(await asyncio.gather(upload(port, 1), upload(port, 2)))

    for status in asyncio.run(_with_server(reg, talk)):
        assert not status.startswith(b"HTTP/1.1 408"), status
        assert status.startswith(b"HTTP/1.1 4"), status
