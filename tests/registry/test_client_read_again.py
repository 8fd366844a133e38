"""Read-only answers whose body breaks off are asked again whole
(``registry/httpremainder.py``: ``until_read``): a ``narinfo-batch`` answer, a ``GET``
of a narinfo, of ``narinfo-closure``, of an index file or of an attestation, cut
(reset, closed short) or stalled past the read timeout, is sent again on the client's
``httpretry.Cuts`` budget (``CUT_RETRIES``, fewer once the client is worn), and its
answer read from the start. Writes (``upload-batch``, ``publish-index``) are never
sent again. Before, one cut ``narinfo-batch`` answer failed a whole ``kiln copy`` or
mirror sync.

A real ``kiln serve`` behind the test's fault proxy (``faultkit``), real ``kiln``
commands and the real ``HttpClient``."""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from attkit import Registry, attested_store, hp
from faultkit import Fault, FaultProxy, Served, kiln_patched, serve_registry
from regkit import add_tree, kiln, make_store, push_cli

from kiln.registry import httpsession, layout
from kiln.registry.httpclient import HttpClient
from kiln.registry.httperrors import WRITE_NOTE, Broken
from kiln.registry.httpretry import CUT_RETRIES, WORN_RETRIES
from kiln.store import attestations

READ_TIMEOUT = 2.0  # (of the kiln processes: a stalled answer costs this much)


@pytest.fixture
def served(tmp_path: Path, keys, kiln_server) -> Served:
    return serve_registry(tmp_path, keys, kiln_server)


def _kiln(*args: str):  # noqa: ANN202
    return kiln_patched({"httpsession.READ_TIMEOUT": READ_TIMEOUT}, *args)


def _copy(url: str, dest: Path, served: Served):  # noqa: ANN202
    return _kiln("copy", "--from", url, "--to", "store", "--store", str(dest), "--trusted-key", str(served.pk_file), served.big, served.small[-1])  # fmt: skip


def _bodies(p: FaultProxy, pattern: str) -> list[bytes]:
    return [s.body for s in p.requests(pattern)]


@pytest.mark.parametrize("mode", ["reset_mid", "close_early", "stall_mid"])
def test_a_broken_narinfo_batch_and_closure_are_asked_again(
    served: Served, tmp_path: Path, mode: str
) -> None:
    """``kiln copy``'s closure query and its ``narinfo-batch`` break off after 20 bytes:
    each is sent again, the same request, and the copy completes."""
    with FaultProxy(served.url) as p:
        p.set(Fault("GET /narinfo-closure/", mode, k=20), Fault("POST /narinfo-batch", mode, k=20))
        r = _copy(p.url, tmp_path / "dest", served)
        assert r.returncode == 0, r.stderr
        closure = p.requests("GET /narinfo-closure/")
        assert [s.mode for s in closure] == [mode, "pass"] and closure[0].path == closure[1].path
        first, again, *_ = _bodies(p, "POST /narinfo-batch")
        assert first == again and b'"hashes"' in first
    dest = make_store(tmp_path / "dest")
    assert all(dest.is_valid(x) for x in (served.big, *served.small))


def test_a_mirror_sync_asks_a_broken_index_file_and_narinfo_batch_again(
    served: Served, tmp_path: Path
) -> None:
    with FaultProxy(served.url) as p:
        p.set(
            Fault("GET /index/timestamp.json", "reset_mid", k=10),
            Fault(r"GET /index/\d+\.index\.json", "close_early", k=100),
            Fault("POST /narinfo-batch", "reset_mid", k=30),
        )
        r = _kiln("mirror", "sync", p.url, str(tmp_path / "m"), "--root", str(Path(str(served.reg)) / "index/root.json"))  # fmt: skip
        assert r.returncode == 0, r.stderr
        assert [s.mode for s in p.requests(r"GET /index/\d+\.index\.json")] == ["close_early", "pass"]
        assert [s.mode for s in p.requests("POST /narinfo-batch")] == ["reset_mid", "pass"]
    assert kiln("registry", "verify", "--dir", str(tmp_path / "m")).returncode == 0


def test_single_narinfo_and_attestation_gets_are_asked_again(tmp_path: Path, keys, kiln_server) -> None:
    """A registry without the batch endpoints (404, as a static server): the narinfos and
    attestations come by one ``GET`` each; the first of each kind breaks off."""
    store, paths = attested_store(tmp_path / "store", tmp_path, keys, 3)
    reg = Registry(tmp_path, "reg", keys, kiln_server)
    r = kiln("push", *paths, "--to", reg.url, "--token", reg.token, "--sign-key", str(keys.sk_file), "--store", str(store.root))  # fmt: skip
    assert r.returncode == 0, r.stderr
    with FaultProxy(reg.url) as p:
        p.set(
            Fault(r"POST /(narinfo|blob|attestation)-batch", "status", status=404, count=None),
            Fault(r"GET /narinfo-closure/", "status", status=404, count=None),
            Fault(r"GET /\w+\.narinfo", "close_early", k=50),
            Fault(r"GET /\w+\.att/$|GET /\w+\.att/index\.json", "reset_mid", k=10),
            Fault(r"GET /\w+\.att/provenance", "stall_mid", k=10),
        )
        r = _kiln("copy", "--from", p.url, "--to", "store", "--store", str(tmp_path / "dest"), "--trusted-key", str(keys.pk_file), *paths)  # fmt: skip
        assert r.returncode == 0 and "warning" not in r.stderr, r.stderr
        for kind in (r"GET /\w+\.narinfo", r"GET /\w+\.att/($|index)", r"GET /\w+\.att/provenance"):
            broken, *rest = p.requests(kind)  # (the others are asked meanwhile)
            assert broken.mode != "pass" and [s.mode for s in rest if s.path == broken.path] == ["pass"], kind
    dest = make_store(tmp_path / "dest")
    for x in paths:
        assert attestations.read_all(dest, x) == attestations.read_all(store, x), x


def test_a_read_broken_every_time_is_given_up_and_wears_the_client(served: Served, monkeypatch) -> None:
    """A narinfo ``GET`` whose answer breaks off every time is sent ``1 + CUT_RETRIES``
    times, then fails saying so; the client's next read that breaks off (here a
    ``narinfo-batch``) only ``1 + WORN_RETRIES`` times, until an answer comes whole."""
    monkeypatch.setattr(httpsession, "READ_TIMEOUT", 1.0)
    key = layout.narinfo_key(hp(served.big))
    hps = [hp(x) for x in served.small]
    cut = Fault(r"GET /\w+\.narinfo|POST /narinfo-batch", "close_early", k=10, count=None)

    async def go(p: FaultProxy) -> list[int]:
        counts = []
        async with HttpClient(p.url) as c:
            for step in ("get", "batch", "whole", "stall"):
                before = len(p.requests(r"\.narinfo|narinfo-batch"))
                p.set(*{"whole": (), "stall": (Fault("POST /narinfo-batch", "stall_mid", k=10, count=None),)}.get(step, (cut,)))  # fmt: skip
                if step == "whole":
                    assert (await c.get(key) or b"").startswith(b"StorePath: ")
                elif step == "get":
                    with pytest.raises(Broken, match=rf"{key}: answer broken off: connection closed.*\(asked {1 + CUT_RETRIES} times\)"):  # fmt: skip
                        await c.get(key)
                else:
                    with pytest.raises(
                        Broken, match=r"narinfo-batch: answer broken off: .*\(asked \d times\)"
                    ):
                        await c.narinfos(hps)
                counts.append(len(p.requests(r"\.narinfo|narinfo-batch")) - before)
        return counts

    with FaultProxy(served.url) as p:
        counts = asyncio.run(asyncio.wait_for(go(p), 120))
    assert counts == [1 + CUT_RETRIES, 1 + WORN_RETRIES, 1, 1 + CUT_RETRIES]


@pytest.mark.parametrize("endpoint", ["upload-batch", "publish-index"])
def test_a_broken_answer_to_a_write_is_not_sent_again(served: Served, tmp_path: Path, endpoint: str) -> None:
    path = add_tree(served.store, tmp_path, "more", "more\n")  # type: ignore[arg-type]
    with FaultProxy(served.url) as p:
        p.set(Fault(f"POST /{endpoint}", "close_early", k=5, count=None))
        r = push_cli(served.store, [path], p.url, served.token, served.sk_file)  # type: ignore[arg-type]
        assert r.returncode == 1, r.stderr
        assert f"POST {p.url}/{endpoint}: answer broken off" in r.stderr and WRITE_NOTE in r.stderr, r.stderr
        assert len(p.requests(f"POST /{endpoint}")) == 1
