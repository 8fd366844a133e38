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
