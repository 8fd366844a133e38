"""A fault-injecting HTTP/1.1 proxy for tests of kiln's registry client (after the
session-26 network-fault audit's ``faultproxy.py``): it sits in front of a real ``kiln
serve`` and spoils chosen requests in chosen ways, logging every request it saw.

One request per connection (``Connection: close`` both ways). ``FaultProxy.set(*faults)``
chooses the faults: each request takes the first ``Fault`` whose ``match`` (a regex on
``"METHOD PATH"``) it matches and which has uses left (``count``; None: unlimited);
requests matching none pass untouched. Modes:

- ``status``: answer ``status`` (with ``Retry-After: retry_after`` if given) itself;
- ``reset_req``: read ``k`` bytes of the request body, then reset the connection;
- ``stall_head``: read the request, never answer;
- ``reset_mid`` / ``close_early``: forward the head and ``k`` bytes of the answer's body,
  then reset / close the connection; ``stall_mid``: then send nothing more, the
  connection left open (until the proxy stops); ``trickle``: then the rest one byte every
  ``pause`` s (until it is sent, the client hangs up or the proxy stops);
- ``corrupt``: flip the low bit of byte ``k`` of the answer's body (as sent, framing
  included); ``corrupt_lf``: of its first LF (a chunked body's framing);
- ``strip_range``: forward without ``Range``/``If-Range`` (a server without ranges);
- ``etag``: forward, with the answer's ``ETag`` replaced by another;
- ``bogus_206``: answer a 206 of 4 bytes of another object itself, whatever was asked.

The proxy runs its own event loop on a thread, on a port the system picks on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import socket
import struct
import subprocess
import threading
import time
from dataclasses import dataclass


@dataclass
class Fault:
    match: str
    mode: str
    count: int | None = 1
    k: int = 1000
    status: int = 503
    retry_after: str | None = None
    pause: float = 0.05


@dataclass(frozen=True)
class Seen:
    """One request the proxy saw: what it asked, the fault it got ("pass": none) and the
    status the upstream answered (None: not asked)."""

    method: str
    path: str
    range: str | None
    mode: str
    status: int | None
    at: float
    body: bytes = b""  # (of a request forwarded upstream)


def _rst(writer: asyncio.StreamWriter) -> None:
    with contextlib.suppress(OSError):
        writer.get_extra_info("socket").setsockopt(
            socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
        )
    writer.transport.abort()


def _closing(head: bytes, drop: tuple[str, ...] = ()) -> bytes:
    """``head`` with ``Connection: close`` and without the headers named in ``drop``."""
    lines = head.decode("latin-1").split("\r\n")[:-2]
    gone = ("connection:", "keep-alive:", *(d.lower() + ":" for d in drop))
    keep = [ln for ln in lines if not ln.lower().startswith(gone)]
    return ("\r\n".join(keep) + "\r\nConnection: close\r\n\r\n").encode("latin-1")


class FaultProxy:
    """``with FaultProxy(upstream_url) as p:`` a proxy at ``p.url`` (module docstring)."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").rstrip("/").rsplit(":", 1)
        self.up_host, self.up_port = host, int(port)
        self.faults: list[Fault] = []
        self.seen: list[Seen] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._stop = asyncio.Event()
        self.url = ""

    def set(self, *faults: Fault) -> None:
        with self._lock:
            self.faults = list(faults)

    def requests(self, pattern: str) -> list[Seen]:
        """The requests seen whose ``"METHOD PATH"`` matches ``pattern``, in order."""
        with self._lock:
            return [s for s in self.seen if re.search(pattern, f"{s.method} {s.path}")]

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._handle, "127.0.0.1", 0, limit=1 << 20), self._loop
        ).result(10)
        self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
        return self

    def __exit__(self, *_exc: object) -> None:
        async def stop() -> None:
            self._stop.set()
            self._server.close()
            await asyncio.sleep(0.05)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    def _pick(self, method: str, path: str) -> Fault | None:
        with self._lock:
            for f in self.faults:
                if re.search(f.match, f"{method} {path}") and (f.count is None or f.count > 0):
                    if f.count is not None:
                        f.count -= 1
                    return f
        return None

    def _log(
        self, method: str, path: str, rng: str | None, mode: str, status: int | None, body: bytes = b""
    ) -> None:
        with self._lock:
            self.seen.append(Seen(method, path, rng, mode, status, time.monotonic(), body))

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await self._one(reader, writer)
        except (ConnectionError, asyncio.IncompleteReadError, OSError):
            writer.transport.abort()
        finally:
            if not writer.transport.is_closing():
                writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        method, path = lines[0].split(" ")[:2]
        hdrs = {
            k.strip().lower(): v.strip() for k, _, v in (ln.partition(":") for ln in lines[1:] if ":" in ln)
        }
        fault = self._pick(method, path)
        mode = fault.mode if fault is not None else "pass"
        if fault is not None and mode == "reset_req":
            await reader.read(fault.k)
            self._log(method, path, hdrs.get("range"), mode, None)
            _rst(writer)
            return
        body = await self._request_body(reader, hdrs)
        if fault is not None and mode == "stall_head":
            self._log(method, path, hdrs.get("range"), mode, None)
            await self._stop.wait()
            return
        if fault is not None and mode == "status":
            self._log(method, path, hdrs.get("range"), mode, None)
            extra = f"Retry-After: {fault.retry_after}\r\n" if fault.retry_after is not None else ""
            msg = f"fault {fault.status}\n".encode()
            writer.write(
                f"HTTP/1.1 {fault.status} Fault\r\nContent-Length: {len(msg)}\r\n{extra}"
                f"Connection: close\r\n\r\n".encode()
                + msg
            )
            await writer.drain()
            return
        if fault is not None and mode == "bogus_206":
            self._log(method, path, hdrs.get("range"), mode, None)
            writer.write(
                b'HTTP/1.1 206 Partial Content\r\nETag: "another-object"\r\nContent-Range: bytes 0-3/4\r\n'
                b"Content-Length: 4\r\nConnection: close\r\n\r\nabcd"
            )
            await writer.drain()
            return
        drop = ("range", "if-range") if mode == "strip_range" else ()
        ur, uw = await asyncio.open_connection(self.up_host, self.up_port)
        uw.write(_closing(head, drop) + body)
        await uw.drain()
        rhead = await ur.readuntil(b"\r\n\r\n")
        rest = await ur.read()
        uw.close()
        status = int(rhead.split(b" ", 2)[1])
        self._log(method, path, None if drop else hdrs.get("range"), mode, status, body)
        rhead = _closing(rhead, ("etag",) if mode == "etag" else ())
        if mode == "etag":
            rhead = rhead[:-2] + b'ETag: "not-the-same-object"\r\n\r\n'
        k = fault.k if fault is not None else 0
        if mode in ("corrupt", "corrupt_lf") and rest:
            i = rest.index(b"\n") if mode == "corrupt_lf" else min(k, len(rest) - 1)
            rest = rest[:i] + bytes([rest[i] ^ 0x01]) + rest[i + 1 :]
        if mode == "trickle":
            writer.write(rhead + rest[:k])
            for i in range(k, len(rest)):
                await writer.drain()
                if self._stop.is_set() or writer.transport.is_closing():
                    return
                await asyncio.sleep(fault.pause)  # type: ignore[union-attr]
                writer.write(rest[i : i + 1])
            await writer.drain()
            return
        if mode in ("reset_mid", "close_early", "stall_mid"):
            writer.write(rhead + rest[:k])
            await writer.drain()
            if mode == "stall_mid":
                await self._stop.wait()
                return
            await asyncio.sleep(0.2)
            if mode == "reset_mid":
                _rst(writer)
            return
        writer.write(rhead + rest)
        await writer.drain()

    @staticmethod
    async def _request_body(reader: asyncio.StreamReader, hdrs: dict[str, str]) -> bytes:
        if hdrs.get("transfer-encoding", "").lower() == "chunked":
            out = bytearray()
            while True:
                line = await reader.readuntil(b"\r\n")
                n = int(line.split(b";")[0], 16)
                out += line + await reader.readexactly(n + 2)
                if n == 0:
                    return bytes(out)
        return await reader.readexactly(int(hdrs.get("content-length", "0")))


@dataclass(frozen=True)
class Served:
    """A ``kiln serve`` registry (``reg``, with a signed index) holding ``big`` (a path
    whose object is over the blob-batch size: one ``GET /nar/``) and ``small`` (three
    small paths: a ``POST /blob-batch``), pushed from ``store`` with ``token``."""

    store: object
    big: str
    small: list[str]
    reg: object
    token: str
    url: str
    pk_file: object
    sk_file: object


def serve_registry(tmp_path, keys, kiln_server) -> Served:  # noqa: ANN001 - pytest fixtures
    import os

    from regkit import add_chain, kiln, make_store, push_cli

    store = make_store(tmp_path / "store")
    data = tmp_path / "bigsrc"
    data.mkdir()
    (data / "blob.bin").write_bytes(os.urandom(3_000_000))  # (zstd cannot shrink it)
    big = store.add_path(data, "big").path
    small = add_chain(store, tmp_path, 3)
    reg = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file), "--index-key", str(keys.sk_file))
    r = push_cli(store, [big, small[-1]], srv.url, tok, keys.sk_file)
    assert r.returncode == 0, r.stderr
    return Served(store, big, small, reg, tok, srv.url, keys.pk_file, keys.sk_file)


def copy_to_store(src: str, dest, served: Served, *paths: str):  # noqa: ANN001, ANN201
    """``kiln copy --from SRC --to store --store DEST`` of ``paths`` (default: all)."""
    from regkit import kiln

    want = paths or (served.big, served.small[-1])
    return kiln(
        "copy",
        "--from",
        src,
        "--to",
        "store",
        "--store",
        str(dest),
        "--trusted-key",
        str(served.pk_file),
        *want,
    )


def mirror_sync(src: str, dest, served: Served):  # noqa: ANN001, ANN201
    """``kiln mirror sync SRC DEST --root`` the served registry's pinned root."""
    import subprocess
    import sys
    from pathlib import Path

    return subprocess.run(
        [sys.executable, "-m", "kiln", "mirror", "sync", src, str(dest)]
        + ["--root", str(Path(str(served.reg)) / "index/root.json")],
        capture_output=True,
        text=True,
        timeout=300,
    )


def kiln_patched(settings: dict[str, float], *args: str) -> subprocess.CompletedProcess:
    """``kiln ARGS...`` in a process whose registry client has ``settings`` ("module.NAME"
    -> value, modules of ``kiln.registry``: e.g. ``{"httpsession.READ_TIMEOUT": 1}``,
    ``{"pace.GRACE": 2}``) set before it runs."""
    import sys

    sets = ""
    for name, value in settings.items():
        module = name.partition(".")[0]
        sets += f"import kiln.registry.{module}\nkiln.registry.{name} = {value!r}\n"
    code = sets + "import sys\nfrom kiln.main import cli\nsys.argv[0] = 'kiln'\ncli()\n"
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True, timeout=300)
