"""Clients ride out a ``kiln serve`` restart (``registry/httpclient.py``): a read-only
request (GET, HEAD, the batch queries) whose connection is refused, reset or closed
before an answer is sent again with backoff, up to ~10 s of waiting once the registry
has answered this client (a restart under load used to fail requests with "connection
refused" or "server disconnected", and a ``kiln copy`` running across it failed as
"unreachable"). Uploads are never sent again, and a port nobody ever listened on is
still "unreachable" within a few seconds. Real servers, restarted on their port."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from regkit import Server, add_chain, free_port, kiln, make_store, push_cli, start_kiln

from kiln.registry.client import Unreachable
from kiln.registry.httpclient import HttpClient


def _start_on(port: int, args: list[str]) -> Server:
    """``kiln serve ARGS`` on ``port`` (the port of a server just stopped)."""
    cmd = [sys.executable, "-m", "kiln", "serve", *args, "--listen", f"127.0.0.1:{port}"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    line = proc.stdout.readline()  # type: ignore[union-attr]
    assert "listening on" in line, f"{line} {proc.stderr.read()}"  # type: ignore[union-attr]
    return Server(proc, f"http://127.0.0.1:{port}")


def _stop(srv: Server) -> None:
    os.kill(srv.proc.pid, signal.SIGTERM)
    srv.proc.communicate(timeout=30)
    assert srv.proc.returncode == 0


class _Restarts:
    """Servers of one registry on one port, stopped and started again; all stopped at
    the end of the ``with``."""

    def __init__(self, reg: Path, *extra: str) -> None:
        self.args = ["--dir", str(reg), *extra]
        self.srv = start_kiln(self.args)
        self.url = self.srv.url
        self.port = int(self.url.rsplit(":", 1)[1])
        self.later: threading.Thread | None = None

    def stop_and_start_later(self, delay: float) -> None:
        """Stop the server now; start it again on its port in ``delay`` s (in a thread)."""
        _stop(self.srv)

        def start() -> None:
            time.sleep(delay)
            self.srv = _start_on(self.port, self.args)

        self.later = threading.Thread(target=start)
        self.later.start()

    def __enter__(self) -> _Restarts:
        return self

    def __exit__(self, *_exc: object) -> None:
        if self.later is not None:
            self.later.join()
        if self.srv.proc.poll() is None:
            self.srv.stop()


@pytest.fixture
def reg(tmp_path: Path) -> Path:
    d = tmp_path / "reg"
    assert kiln("registry", "init", "--dir", str(d)).returncode == 0
    return d


def test_read_only_requests_are_sent_again_across_a_restart(reg: Path) -> None:
    with _Restarts(reg, "--workers", "2") as srv:

        async def go() -> None:
            c = HttpClient(srv.url)
            try:
                assert b"StoreDir" in (await c.get("nix-cache-info") or b"")
                srv.stop_and_start_later(1.0)  # refused for a second or more
                got = await asyncio.gather(
                    c.get("nix-cache-info"),  # GET
                    c.narinfos(["a" * 32]),  # POST /narinfo-batch
                    c.blob_batch([], lambda h, b: None),  # POST /blob-batch
                    c.attestation_batch([("a" * 32, "slsa-provenance")], lambda h, k, b: None),
                )
                assert b"StoreDir" in got[0] and got[1] == {} and got[2] is True and got[3] is True
            finally:
                await c.close()

        asyncio.run(go())


def test_uploads_are_not_sent_again(reg: Path) -> None:
    with _Restarts(reg) as srv:

        async def go() -> None:
            c = HttpClient(srv.url, token="kiln_00000000_x")
            try:
                assert await c.get("nix-cache-info")
                srv.stop_and_start_later(1.0)
                # sent again, either would have got the restarted server's 401
                with pytest.raises(Unreachable):
                    await c.put_bytes("a" * 32 + ".narinfo", b"StorePath: x\n")
                with pytest.raises(Unreachable):
                    await c.publish_index()
            finally:
                await c.close()

        asyncio.run(go())


def test_a_port_nobody_listens_on_is_unreachable_within_a_few_seconds() -> None:
    async def go() -> float:
        c = HttpClient(f"http://127.0.0.1:{free_port()}")
        t = time.monotonic()
        try:
            with pytest.raises(Unreachable):
                await c.get("nix-cache-info")
        finally:
            await c.close()
        return time.monotonic() - t

    # (a few short retries: a registry restarting just as a client starts; a client
    # that had answers waits up to ~10 s)
    assert asyncio.run(go()) < 6


def test_requests_under_load_survive_restarts(reg: Path) -> None:
    """Eight clients' worth of GETs and batch queries while ``kiln serve --workers 2``
    is stopped and started again twice: not one fails."""
    with _Restarts(reg, "--workers", "2") as srv:
        done = threading.Event()
        counts = {"ok": 0, "failed": 0}
        errors: list[str] = []

        async def load() -> None:
            c = HttpClient(srv.url, jobs=8)

            async def one_client(i: int) -> None:
                while not done.is_set():
                    try:
                        if i % 2:
                            assert await c.get("nix-cache-info")
                        else:
                            assert await c.narinfos(["a" * 32]) == {}
                        counts["ok"] += 1
                    except Exception as e:  # noqa: BLE001 - counted and shown
                        counts["failed"] += 1
                        errors.append(f"{type(e).__name__}: {e}")

            try:
                await asyncio.gather(*(one_client(i) for i in range(8)))
            finally:
                await c.close()

        t = threading.Thread(target=lambda: asyncio.run(load()))
        t.start()
        try:
            for _ in range(2):
                time.sleep(0.5)
                before = counts["ok"]
                srv.stop_and_start_later(0.2)
                assert srv.later is not None
                srv.later.join()
                time.sleep(0.5)
                assert counts["ok"] > before
        finally:
            done.set()
            t.join(60)
        assert counts["failed"] == 0, errors[:5]
        assert counts["ok"] > 0


def test_kiln_copy_rides_out_a_restart(tmp_path: Path, reg: Path, keys) -> None:
    """``kiln copy`` from a registry that is stopped just after the copy's first request
    and started again half a second later: it copies everything (it failed as
    "unreachable")."""
    store = make_store(tmp_path / "store")
    tips = [add_chain(store, tmp_path, 10, tag=f"c{j}")[-1] for j in range(10)]
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    log = tmp_path / "access.log"
    with _Restarts(
        reg, "--workers", "2", "--trusted-key", str(keys.pk_file), "--access-log", str(log)
    ) as srv:
        r = push_cli(store, tips, srv.url, tok, keys.sk_file)
        assert r.returncode == 0, r.stderr
        pushed = len(log.read_text().splitlines())
        dest = make_store(tmp_path / "dest")
        copy = subprocess.Popen(
            [sys.executable, "-m", "kiln", "copy", "--from", srv.url, "--to", "store"]
            + ["--store", str(dest.root), "--trusted-key", str(keys.pk_file), *tips],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            deadline = time.monotonic() + 60
            while len(log.read_text().splitlines()) == pushed:  # (its first request)
                assert copy.poll() is None, copy.communicate()
                assert time.monotonic() < deadline
                time.sleep(0.002)
            srv.stop_and_start_later(0.5)
            out, err = copy.communicate(timeout=120)
        finally:
            if copy.poll() is None:
                copy.kill()
                copy.wait()
    assert copy.returncode == 0, err
    assert "copied 100 paths" in out, out
    assert all(dest.is_valid(t) for t in tips)
