"""A small answer that goes silent is a stall, not a trickle (``registry/pace.py``): the
pace rule gives up on it after its grace period, before the read timeout would, and
said "too slow", which is not asked again, so one silent ``blob-batch`` answer failed
a ``kiln copy``. Now, when no byte has arrived for the grace period, it is a
``httperrors.Broken`` (asked again for the rest, on the ``httpretry.Cuts`` budget), and
temporary by its class (``retryable``: a mirror sync exits 75), while an answer whose
bytes keep arriving too slowly stays "too slow" and is not asked again.

A real ``kiln serve`` behind the test's fault proxy (``faultkit``), real ``kiln``
commands and the real ``HttpClient``, with the pace's grace period shortened
(``pace.GRACE``, in the test process or in a ``kiln`` process started with it set).
The read timeout stays 120 s: each stall here is ended by the pace rule."""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from faultkit import Fault, FaultProxy, Served, kiln_patched, serve_registry
from regkit import kiln, make_store

from kiln.registry import pace
from kiln.registry.client import RegistryError
from kiln.registry.httpclient import HttpClient
from kiln.registry.httperrors import Broken
from kiln.registry.httpretry import CUT_RETRIES
from kiln.store import narinfo as ni

GRACE = 2.0


@pytest.fixture
def served(tmp_path: Path, keys, kiln_server) -> Served:
    return serve_registry(tmp_path, keys, kiln_server)


def _blobs(served: Served) -> dict[str, ni.NarInfo]:
    reg = Path(str(served.reg))
    infos = [
        ni.parse((reg / f"{x.rsplit('/', 1)[1][:32]}.narinfo").read_text(), "/kiln/store")
        for x in served.small
    ]
    return {i.file_hash.hex: i for i in infos}  # type: ignore[union-attr]


def _asked(seen) -> list[str]:  # noqa: ANN001 - a faultkit.Seen
    return json.loads(seen.body)["blobs"]


def test_a_silent_blob_batch_is_asked_again_for_the_rest(served: Served, tmp_path: Path) -> None:
    """The answer's first entry line, then silence, the connection open: ``kiln copy``
    asks again for the objects not received and completes."""
    with FaultProxy(served.url) as p:
        p.set(Fault("POST /blob-batch", "stall_mid", k=80))
        r = kiln_patched({"pace.GRACE": GRACE}, "copy", "--from", p.url, "--to", "store", "--store", str(tmp_path / "dest"), "--trusted-key", str(served.pk_file), served.small[-1])  # fmt: skip
        assert r.returncode == 0, r.stderr
        first, again = p.requests("POST /blob-batch")
    assert (first.mode, again.mode) == ("stall_mid", "pass")
    assert sorted(_asked(first)) == sorted(_blobs(served)) and sorted(_asked(again)) == sorted(_asked(first))
    dest = make_store(tmp_path / "dest")
    assert all(dest.is_valid(x) for x in served.small)


def test_a_trickled_blob_batch_stays_too_slow_and_is_not_asked_again(served: Served, monkeypatch) -> None:
    """One byte every 50 ms, the first entry line at once: bytes keep arriving (within a
    ``readexactly`` that returns only once the entry is whole), too slowly."""
    monkeypatch.setattr(pace, "GRACE", 1.0)
    blobs = _blobs(served)

    async def go(url: str) -> None:
        async with HttpClient(url) as c:
            await c.blob_batch([i.file_hash for i in blobs.values()], lambda h, b: None)  # type: ignore[misc]

    with FaultProxy(served.url) as p:
        p.set(Fault("POST /blob-batch", "trickle", k=80, pause=0.05))
        with pytest.raises(RegistryError, match=r"blob-batch: too slow \(") as e:
            asyncio.run(asyncio.wait_for(go(p.url), 60))
        assert not isinstance(e.value, Broken)
        assert len(p.requests("POST /blob-batch")) == 1


def test_a_mirror_sync_whose_batches_go_silent_is_a_temporary_failure(served: Served, tmp_path: Path) -> None:
    """Every ``blob-batch`` answer goes silent: asked ``1 + CUT_RETRIES`` times, then the
    sync fails as temporary (75: retry later), not as one someone must look at (1)."""
    with FaultProxy(served.url) as p:
        p.set(Fault("POST /blob-batch", "stall_mid", k=0, count=None))
        r = kiln_patched({"pace.GRACE": GRACE}, "mirror", "sync", p.url, str(tmp_path / "m"), "--root", str(Path(str(served.reg)) / "index/root.json"))  # fmt: skip
        assert len(p.requests("POST /blob-batch")) == 1 + CUT_RETRIES
    assert r.returncode == 75, r.stderr
    assert f"blob-batch: answer broken off: silent for {GRACE:.0f} s" in r.stderr, r.stderr
    assert f"(asked {1 + CUT_RETRIES} times)" in r.stderr
    r = kiln("mirror", "sync", served.url, str(tmp_path / "m"), "--root", str(Path(str(served.reg)) / "index/root.json"))  # fmt: skip
    assert r.returncode == 0, r.stderr


def test_a_silent_attestation_batch_is_asked_again_for_the_rest(tmp_path: Path, keys, kiln_server) -> None:
    """As for ``blob-batch``: the first entry line, then silence; ``kiln copy`` asks
    again for the attestations not received, and every one arrives."""
    from attkit import Registry, attested_store

    from kiln.store import attestations

    store, paths = attested_store(tmp_path / "store", tmp_path, keys, 4)
    reg = Registry(tmp_path, "reg", keys, kiln_server)
    r = kiln("push", *paths, "--to", reg.url, "--token", reg.token, "--sign-key", str(keys.sk_file), "--store", str(store.root))  # fmt: skip
    assert r.returncode == 0, r.stderr
    with FaultProxy(reg.url) as p:
        p.set(Fault("POST /attestation-batch", "stall_mid", k=80))
        r = kiln_patched({"pace.GRACE": GRACE}, "copy", "--from", p.url, "--to", "store", "--store", str(tmp_path / "dest"), "--trusted-key", str(keys.pk_file), *paths)  # fmt: skip
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
        first, again = p.requests("POST /attestation-batch")
    assert (first.mode, again.mode) == ("stall_mid", "pass")
    dest = make_store(tmp_path / "dest")
    for x in paths:
        assert attestations.read_all(dest, x) == attestations.read_all(store, x), x
