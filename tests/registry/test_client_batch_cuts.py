"""Answers that break off on the way, asked again for what did not come
(``registry/httpremainder.py``, ``httpdownload.py``, ``httpretry.Cuts``): a
``blob-batch`` or ``attestation-batch`` answer cut (reset, closed short) or stalled
part way keeps the objects that came whole (each checked by its digest, as always)
and is asked again for the rest only; a download that stalls mid-body (the connection
left open, silent past the read timeout) is resumed as a cut one is; a client whose
request broke off after all its retries asks again less until an answer arrives
whole; a cut ``attestation-upload-batch`` answer says the outcome is unknown and a
re-run is safe (it is not sent again). Before, one cut batch answer failed every
object not yet received (a substitution built from source, a mirror sync failed), a
stall failed the download after 120 s, and a mirror sync counted objects already
placed among the failed.

A real ``kiln serve`` behind the test's fault proxy (``faultkit``), real ``kiln``
commands and the real ``HttpClient``; short read timeouts are set through
``httpsession.READ_TIMEOUT`` (in the test process, or in a ``kiln`` process started
with it set)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
from attkit import Registry, attested_store, hp
from faultkit import Fault, FaultProxy, Served, copy_to_store, mirror_sync, serve_registry
from regkit import kiln, make_store
from test_hostile_server import _head, run

from kiln.registry import httpsession
from kiln.registry.client import RegistryError
from kiln.registry.httpclient import HttpClient
from kiln.registry.httperrors import WRITE_NOTE
from kiln.registry.httpretry import CUT_RETRIES, WORN_RETRIES
from kiln.store import attestations
from kiln.store import narinfo as ni

K = 100_000  # bytes of a NAR download's body the proxy lets through


@pytest.fixture
def served(tmp_path: Path, keys, kiln_server) -> Served:
    return serve_registry(tmp_path, keys, kiln_server)


def _info(reg: Path, path: str) -> ni.NarInfo:
    return ni.parse((reg / f"{hp(path)}.narinfo").read_text(), "/kiln/store")


def _raw_answer_length(url: str, endpoint: str, query: dict) -> int:
    """The length, framing included, of ``POST /endpoint``'s answer body to ``query``
    (what the proxy's ``k`` counts)."""
    host, port = url.removeprefix("http://").split(":")
    body = json.dumps(query).encode()
    with socket.create_connection((host, int(port)), timeout=30) as s:
        s.sendall(
            f"POST /{endpoint} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode()
            + body
        )
        data = b""
        while chunk := s.recv(1 << 16):
            data += chunk
    assert data.startswith(b"HTTP/1.1 200"), data[:200]
    return len(data.partition(b"\r\n\r\n")[2])


def _small_blobs(served: Served) -> dict[str, ni.NarInfo]:
    infos = [_info(Path(str(served.reg)), p) for p in served.small]
    return {i.file_hash.hex: i for i in infos}  # type: ignore[union-attr]


def _asked(seen) -> list[str]:  # noqa: ANN001 - a faultkit.Seen
    return json.loads(seen.body)["blobs"]


@pytest.mark.parametrize("mode", ["reset_mid", "close_early"])
def test_a_cut_blob_batch_is_asked_again_for_the_rest(served: Served, tmp_path: Path, mode: str) -> None:
    """The answer is cut half way: the copy completes, the second request asking only
    for what the first answer did not bring whole."""
    blobs = _small_blobs(served)
    half = _raw_answer_length(served.url, "blob-batch", {"blobs": list(blobs)}) // 2
    with FaultProxy(served.url) as p:
        p.set(Fault("POST /blob-batch", mode, k=half))
        r = copy_to_store(p.url, tmp_path / "dest", served, served.small[-1])
        assert r.returncode == 0, r.stderr
        first, second = p.requests("POST /blob-batch")
    assert sorted(_asked(first)) == sorted(blobs)
    assert 0 < len(_asked(second)) < len(blobs) and set(_asked(second)) < set(blobs)
    dest = make_store(tmp_path / "dest")
    assert all(dest.is_valid(x) for x in served.small)


def test_a_stalled_blob_batch_is_asked_again_for_the_rest(served: Served, monkeypatch) -> None:
    """Silent half way, the connection open: after the read timeout, the rest is asked
    for; every object comes once, whole and with its digest."""
    monkeypatch.setattr(httpsession, "READ_TIMEOUT", 1.0)
    blobs = _small_blobs(served)
    half = _raw_answer_length(served.url, "blob-batch", {"blobs": list(blobs)}) // 2
    got: dict[str, list[bytes | None]] = {}

    async def go(url: str) -> bool:
        async with HttpClient(url) as c:
            return await c.blob_batch(
                [i.file_hash for i in blobs.values()],  # type: ignore[misc]
                lambda h, b: got.setdefault(h.hex, []).append(b),
                {x: i.file_size for x, i in blobs.items()},  # type: ignore[misc]
            )

    with FaultProxy(served.url) as p:
        p.set(Fault("POST /blob-batch", "stall_mid", k=half))
        assert asyncio.run(asyncio.wait_for(go(p.url), 60))
        first, second = p.requests("POST /blob-batch")
    assert (first.mode, second.mode) == ("stall_mid", "pass")
    assert 0 < len(_asked(second)) < len(blobs)
    assert sorted(got) == sorted(blobs)
    for x, datas in got.items():
        assert len(datas) == 1 and datas[0] is not None and hashlib.sha256(datas[0]).hexdigest() == x


def test_a_mirror_sync_keeps_what_a_broken_batch_brought(served: Served, tmp_path: Path) -> None:
    """The first answer is cut half way, every later one at once: the objects that came
    are placed and not counted as failed, the others fail as temporary (75), asked
    ``1 + CUT_RETRIES`` times in all; a second sync fetches only those."""
    blobs = _small_blobs(served)
    half = _raw_answer_length(served.url, "blob-batch", {"blobs": list(blobs)}) // 2
    with FaultProxy(served.url) as p:
        p.set(Fault("POST /blob-batch", "reset_mid", k=half), Fault("POST /blob-batch", "reset_mid", k=10, count=None))  # fmt: skip
        r = mirror_sync(p.url, tmp_path / "m", served)
        seen = p.requests("POST /blob-batch")
    assert r.returncode == 75, r.stderr
    assert len(seen) == 1 + CUT_RETRIES
    rest = _asked(seen[1])
    assert 0 < len(rest) < len(blobs) and all(_asked(s) == rest for s in seen[2:])
    assert f"failed for {len(rest)} path(s)" in r.stderr, r.stderr
    assert f"(asked {1 + CUT_RETRIES} times)" in r.stderr, r.stderr
    with FaultProxy(served.url) as p:
        r = mirror_sync(p.url, tmp_path / "m", served)
        assert r.returncode == 0, r.stderr
        (again,) = p.requests("POST /blob-batch")
    assert sorted(_asked(again)) == sorted(rest)
    assert kiln("registry", "verify", "--dir", str(tmp_path / "m")).returncode == 0


def test_a_cut_attestation_batch_is_asked_again_for_the_rest(tmp_path: Path, keys, kiln_server) -> None:
    store, paths = attested_store(tmp_path / "store", tmp_path, keys, 6)
    reg = Registry(tmp_path, "reg", keys, kiln_server)
    r = kiln("push", *paths, "--to", reg.url, "--token", reg.token, "--sign-key", str(keys.sk_file), "--store", str(store.root))  # fmt: skip
    assert r.returncode == 0, r.stderr
    pairs = [[hp(x), "provenance"] for x in paths]
    half = _raw_answer_length(reg.url, "attestation-batch", {"attestations": pairs}) // 2
    with FaultProxy(reg.url) as p:
        p.set(Fault("POST /attestation-batch", "reset_mid", k=half))
        r = kiln("copy", "--from", p.url, "--to", "store", "--store", str(tmp_path / "dest"), "--trusted-key", str(keys.pk_file), *paths)  # fmt: skip
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
        first, second = p.requests("POST /attestation-batch")
    assert len(json.loads(first.body)["attestations"]) == len(paths)
    assert 0 < len(json.loads(second.body)["attestations"]) < len(paths)
    dest = make_store(tmp_path / "dest")
    for x in paths:
        assert attestations.read_all(dest, x) == attestations.read_all(store, x), x


def _kiln_read_timeout(seconds: float, *args: str) -> subprocess.CompletedProcess:
    """``kiln ARGS...`` in a process whose registry client gives up on a silent answer
    after ``seconds`` (``httpsession.READ_TIMEOUT``)."""
    code = (
        "import sys\nfrom kiln.registry import httpsession\n"
        "httpsession.READ_TIMEOUT = float(sys.argv[1])\nsys.argv[1:2] = []\n"
        "from kiln.main import cli\ncli()\n"
    )
    return subprocess.run(
        [sys.executable, "-c", code, str(seconds), *args], capture_output=True, text=True, timeout=300
    )


def test_a_stalled_download_is_resumed(served: Served, tmp_path: Path) -> None:
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "stall_mid", k=K))
        r = _kiln_read_timeout(1, "copy", "--from", p.url, "--to", "store", "--store", str(tmp_path / "dest"), "--trusted-key", str(served.pk_file), served.big)  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert [(s.mode, s.status, s.range) for s in p.requests("GET /nar/")] == [
            ("stall_mid", 200, None),
            ("pass", 206, f"bytes={K}-"),
        ]
    assert make_store(tmp_path / "dest").is_valid(served.big)


def test_a_download_stalled_every_time_fails_saying_so(served: Served, tmp_path: Path) -> None:
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /nar/", "stall_mid", k=K, count=None))
        r = _kiln_read_timeout(0.5, "copy", "--from", p.url, "--to", "store", "--store", str(tmp_path / "dest"), "--trusted-key", str(served.pk_file), served.big)  # fmt: skip
        assert r.returncode == 1, r.stderr
        assert len(p.requests("GET /nar/")) == 1 + CUT_RETRIES
    # (each answer, a 206 from where the last one stopped, brought K bytes)
    assert f"answer broken off: no data for 0.5 s after {(1 + CUT_RETRIES) * K} of " in r.stderr, r.stderr
    assert f"(asked {1 + CUT_RETRIES} times)" in r.stderr


def test_a_client_worn_by_cuts_asks_again_less(served: Served) -> None:
    """Once one download broke off after all its retries, the client's other requests
    (downloads and batches alike) are asked again ``WORN_RETRIES`` times, until an
    answer arrives whole: an outage must not cost every object the full retries."""
    key = _info(Path(str(served.reg)), served.big).url
    blobs = _small_blobs(served)

    async def download(c: HttpClient) -> None:
        assert await c.download(key, lambda b: None)

    cuts = (
        Fault("GET /nar/", "close_early", k=K, count=None),
        Fault("POST /blob-batch", "close_early", k=10, count=None),
    )

    async def go(p: FaultProxy) -> list[int]:
        counts = []
        async with HttpClient(p.url) as c:
            for step in ("cut", "cut", "batch", "whole", "cut"):
                before = len(p.requests("GET /nar/|POST /blob-batch"))
                p.set(*(() if step == "whole" else cuts))
                if step == "whole":
                    await download(c)
                elif step == "batch":
                    with pytest.raises(RegistryError, match="blob-batch: answer broken off"):
                        await c.blob_batch([i.file_hash for i in blobs.values()], lambda h, b: None)  # type: ignore[misc]
                else:
                    with pytest.raises(RegistryError, match="answer broken off: connection closed"):
                        await download(c)
                counts.append(len(p.requests("GET /nar/|POST /blob-batch")) - before)
        return counts

    with FaultProxy(served.url) as p:
        counts = asyncio.run(asyncio.wait_for(go(p), 120))
    assert counts == [1 + CUT_RETRIES, 1 + WORN_RETRIES, 1 + WORN_RETRIES, 1, 1 + CUT_RETRIES]


@pytest.mark.parametrize(
    ("mode", "said"), [("reset_mid", "connection reset"), ("close_early", "connection closed")]
)
def test_a_cut_attestation_upload_batch_says_running_it_again_is_safe(
    tmp_path: Path, keys, kiln_server, mode: str, said: str
) -> None:
    store, paths = attested_store(tmp_path / "store", tmp_path, keys, 3)
    reg = Registry(tmp_path, "reg", keys, kiln_server)
    push = ("push", *paths, "--token", reg.token, "--sign-key", str(keys.sk_file), "--store", str(store.root))
    with FaultProxy(reg.url) as p:
        p.set(Fault("POST /attestation-upload-batch", mode, k=0))
        r = kiln(*push, "--to", p.url)
        assert r.returncode == 1, r.stderr
        said_all = re.escape(f"POST {p.url}/attestation-upload-batch: answer broken off: {said}")
        assert re.search(said_all + r"[^;\n]*" + re.escape(WRITE_NOTE), r.stderr), r.stderr
        assert len(p.requests("POST /attestation-upload-batch")) == 1  # (a write is not sent again)
        r = kiln(*push, "--to", p.url)
        assert r.returncode == 0, r.stderr
    for x in paths:
        local = store.root / "attestations" / hp(x) / "provenance.dsse.json"
        assert (reg.dir / f"{hp(x)}.att" / "provenance.dsse.json").read_bytes() == local.read_bytes()


@pytest.mark.parametrize("deferred", [b"[1]", b'{"hashes": 5}', b'{"hashes": [1]}'])
def test_a_malformed_deferred_list_is_a_registry_error(deferred: bytes) -> None:
    """(``checked_batch`` returned before it looked at ``deferred``: an internal error.)"""
    body = b'{"narinfos": {}, "deferred": %s}' % deferred

    async def answer(r, w) -> None:  # noqa: ANN001
        _head(w, f"Content-Length: {len(body)}\r\n")
        w.write(body)
        await w.drain()

    with pytest.raises(RegistryError, match=r"narinfo-batch: malformed answer \(deferred\)"):
        run(answer, lambda c: c.narinfos(["a" * 32]))
