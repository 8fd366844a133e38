"""Helpers for the attestation batch tests: a store of many attested paths, a served
registry with an access log to count requests by, and ``OldServer``, a proxy in front of
a real ``kiln serve`` that answers 404 to the attestation batch endpoints (as a kiln
serve from before them, or a static server, does) and counts what passes."""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import threading
from collections import Counter
from pathlib import Path

from aiohttp import ClientSession, web
from attestkit import signed_provenance
from regkit import add_built, make_store

from kiln.store import attestations
from kiln.store.dsse import Envelope
from kiln.store.localstore import LocalStore

BATCH_ENDPOINTS = ("/attestation-batch", "/attestation-upload-batch")


def kiln(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, env=env)


def provenance(store: LocalStore, path: str, sk, when: float | None = None) -> Envelope:  # noqa: ANN001
    return signed_provenance(store, path, sk, finished=when)


def attested_store(root: Path, tmp: Path, keys, n: int) -> tuple[LocalStore, list[str]]:  # noqa: ANN001
    """A store with ``n`` built paths, each with a provenance signed by ``keys``."""
    store = make_store(root)
    paths = [add_built(store, tmp, f"p{i}", f"content {i}") for i in range(n)]
    for p in paths:
        attestations.write(store, p, "provenance", provenance(store, p, keys.sk))
    return store, paths


def hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


_LINE = re.compile(r'^\S+ \S+ (\S+) "([^"]*)" (\d+) ')


def log_counts(log: Path) -> Counter:
    """``(method, kind)`` -> requests in a ``kiln serve --access-log`` file, where kind
    is ``att`` for a single attestation file, else the path."""
    out: Counter = Counter()
    for line in log.read_text().splitlines():
        m = _LINE.match(line)
        if m:
            path = m.group(2)
            out[(m.group(1), "att" if ".att/" in path and path.endswith(".dsse.json") else path)] += 1
    return out


class Registry:
    """A registry directory served by ``kiln serve`` (trusting ``keys``) with an access log."""

    def __init__(self, tmp: Path, name: str, keys, kiln_server, *extra: str) -> None:  # noqa: ANN001
        self.dir = tmp / name
        assert kiln("registry", "init", "--dir", str(self.dir)).returncode == 0
        r = kiln("registry", "token", "create", "--scope", "write", "--dir", str(self.dir))
        self.token = r.stdout.strip()
        self.log = tmp / f"{name}-access.log"
        self.server = kiln_server(
            "--dir", str(self.dir), "--trusted-key", str(keys.pk_file), "--access-log", str(self.log), *extra
        )
        self.url = self.server.url

    def counts(self, reset: bool = True) -> Counter:
        c = log_counts(self.log)
        if reset:
            self.log.write_text("")
        return c


class OldServer:
    """A proxy to ``backend`` without the attestation batch endpoints (404), on its own
    thread; ``seen`` counts ``(method, path or 'att')`` of every request it got."""

    def __init__(self, backend: str) -> None:
        self.backend = backend
        self.seen: Counter = Counter()
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        assert self._ready.wait(10)

    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.run_until_complete(self._start())
        self._ready.set()
        self._loop.run_forever()

    async def _start(self) -> None:
        self._session = ClientSession(auto_decompress=False)
        server = web.Server(self._handle)
        self._runner = web.ServerRunner(server)
        await self._runner.setup()
        site = web.TCPSite(self._runner, "127.0.0.1", 0)
        await site.start()
        port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
        self.url = f"http://127.0.0.1:{port}"

    async def _handle(self, request: web.BaseRequest) -> web.Response:
        path = request.path
        self.seen[(request.method, "att" if path.endswith(".dsse.json") else path)] += 1
        if path in BATCH_ENDPOINTS:
            return web.Response(status=404, text=f"no such endpoint: POST {path}\n")
        body = await request.read()
        headers = {k: v for k, v in request.headers.items() if k.lower() not in ("host", "content-length")}
        async with self._session.request(
            request.method, self.backend + request.path_qs, data=body or None, headers=headers
        ) as resp:
            data = await resp.read()
            keep = {k: v for k, v in resp.headers.items() if k.lower() in ("content-type", "cache-control")}
            return web.Response(status=resp.status, body=data, headers=keep)

    def stop(self) -> None:
        async def close() -> None:
            await self._session.close()
            await self._runner.cleanup()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
