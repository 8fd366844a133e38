"""Batch narinfo queries of wide paths: ``W`` paths that each refer to the same ``L``
leaves with long names have ~250 KB narinfos, over 64 MiB in all. One ``POST
/narinfo-batch`` answer with all of them would be more than the 64 MiB a client reads
(the query failed, so substitution, copy and mirror sync of such a closure failed). A
request that says ``"defer": true`` (kiln's client) gets about ``batchapi.DEFER_AT``
bytes per answer and the rest listed under ``deferred``, which the client asks for again;
a request without it (an older client) gets the whole answer as before, or 413 once it
would be over ``batchapi.MAX_ANSWER``, never an unbounded one."""

from __future__ import annotations

import asyncio
import json
import math
from pathlib import Path

import pytest
from aiohttp import web
from regkit import Keys, kiln, make_store, request

from kiln.registry import batchapi, closurewalk
from kiln.registry.client import RegistryError, open_client
from kiln.registry.httpbatch import deferred_of
from kiln.registry.httpclient import HttpClient
from kiln.registry.push import push
from kiln.store import narinfo as ni

W = 320
L = 1100


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


@pytest.fixture(scope="module")
def wide(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[str], list[str], Keys]:
    """A registry directory holding ``W`` wide paths and their ``L`` leaves, signed."""
    d = tmp_path_factory.mktemp("widebatch")
    store = make_store(d / "store")
    names = [f"leaf-{i:04d}-" + "x" * 190 for i in range(L)]
    leaves = [i.path for i in store.add_texts((n, n.encode(), []) for n in names)]
    tops = [i.path for i in store.add_texts((f"top-{k}", f"top {k}\n".encode(), leaves) for k in range(W))]
    keys = Keys(d, "widebatch-1")
    reg = d / "reg"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    rep = push(store, tops, lambda: open_client(f"file://{reg}"), sign_key=keys.sk, progress=False)
    assert rep.pushed == W + L
    store.close()
    return reg, tops, leaves, keys


def _serve(reg: Path, keys: Keys, log: Path, kiln_server):  # noqa: ANN001, ANN202
    return kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file), "--access-log", str(log))


def _count(log: Path, what: str) -> int:
    return sum(f' "/{what}' in ln for ln in log.read_text().splitlines())


def _post(url: str, body: dict) -> tuple[int, bytes]:
    status, _, raw = request(f"{url}/narinfo-batch", "POST", json.dumps(body).encode())
    return status, raw


def _json_size(reg: Path, hashes: list[str]) -> int:
    return sum(len(json.dumps((reg / f"{h}.narinfo").read_text())) + 37 for h in hashes)


def test_a_closure_with_over_64_mib_of_narinfos_is_copied_in_a_few_batches(
    wide, tmp_path, kiln_server
) -> None:
    reg, tops, leaves, keys = wide
    total = _json_size(reg, [_hp(p) for p in [*tops, *leaves]])
    assert total > 64 << 20  # one answer would be over what a client reads
    log = tmp_path / "src.log"
    srv = _serve(reg, keys, log, kiln_server)
    # the closure hint is capped (a partial answer), and says so
    status, _, body = request(f"{srv.url}/narinfo-closure/{','.join(_hp(p) for p in tops[:64])}")
    ans = json.loads(body)
    assert status == 200 and ans["complete"] is False and len(body) <= closurewalk.MAX_BYTES + 64
    log.write_text("")
    # substitution into a store: the narinfos in a few answers of ~DEFER_AT bytes
    dst = tmp_path / "dst"
    copy = ["copy", "--from", srv.url, "--trusted-key", str(keys.pk_file)]
    r = kiln(*copy, "--to", "store", "--store", str(dst), "--store-dir", "/kiln/store", *tops)
    assert r.returncode == 0, r.stderr
    assert f"copied {W + L} paths" in r.stdout
    parts = math.ceil(total / batchapi.DEFER_AT)
    # (+1: the attestations' listing)
    assert parts <= _count(log, "narinfo-batch") <= parts + 1, log.read_text()
    got = make_store(dst)
    assert set(got.query(tops[-1]).references) == set(leaves)
    got.close()
    # registry to registry, twice: the second time the destination's answers say it has
    # everything (over 64 MiB of narinfos again)
    reg2, log2 = tmp_path / "reg2", tmp_path / "dst.log"
    assert kiln("registry", "init", "--dir", str(reg2)).returncode == 0
    tok2 = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg2)).stdout.strip()
    srv2 = _serve(reg2, keys, log2, kiln_server)
    for n in (W + L, 0):
        log2.write_text("")
        r = kiln(*copy, "--to", srv2.url, "--token", tok2, *tops)
        assert r.returncode == 0, r.stderr
        assert f"copied {n} paths" in r.stdout
    assert parts <= _count(log2, "narinfo-batch") <= parts + 2, log2.read_text()
    assert len(list(reg2.glob("*.narinfo"))) == W + L


def test_a_deferring_answer_is_bounded_and_lists_the_rest(wide, tmp_path, kiln_server) -> None:
    reg, tops, leaves, keys = wide
    srv = _serve(reg, keys, tmp_path / "log", kiln_server)
    asked = [_hp(p) for p in [*tops, *leaves]] + ["0" * 32]  # (one absent)
    nar = ni.parse((reg / f"{asked[0]}.narinfo").read_text(), "/kiln/store").nar_hash.hex
    req: dict = {"hashes": asked, "nar_hashes": [nar], "defer": True}
    got: dict[str, str] = {}
    answers = 0
    while True:
        status, raw = _post(srv.url, req)
        assert status == 200, raw
        assert len(raw) <= batchapi.DEFER_AT + ni.MAX_SIZE, len(raw)
        ans = json.loads(raw)
        answers += 1
        assert (ans["narinfos"] or ans.get("by_nar_hash")) and not set(ans["narinfos"]) & set(got)
        got |= ans["narinfos"]
        more = ans.get("deferred")
        if more is None:
            break
        # what was left out: the rest of the asked hash parts, none of them read, and
        # the NAR-hash lookup after them
        asked_now, rest = req.get("hashes", []), more.get("hashes", [])
        cut = len(asked_now) - len(rest)
        assert rest == asked_now[cut:] and set(asked_now[:cut]) - set(ans["narinfos"]) <= {"0" * 32}
        assert more["nar_hashes"] == [nar] and not ans.get("by_nar_hash")
        req = {**more, "defer": True}
    assert answers == math.ceil(_json_size(reg, asked[:-1]) / batchapi.DEFER_AT)
    assert set(got) == set(asked[:-1]) and got[asked[0]] == (reg / f"{asked[0]}.narinfo").read_text()
    assert ans["by_nar_hash"] == {nar: got[asked[0]]}
    # one narinfo goes in whatever its size: every answer resolves at least one entry
    status, raw = _post(srv.url, {"hashes": [_hp(tops[0])], "defer": True})
    assert status == 200 and "deferred" not in json.loads(raw)


def test_a_request_without_defer_gets_the_old_answer_or_413(wide, tmp_path, kiln_server) -> None:
    """What an older kiln client sends: it would take a deferred entry for an absent one,
    so the server never defers for it. Over ``DEFER_AT`` it gets everything in one answer
    as before; past ``MAX_ANSWER`` (which it could not read anyway) a 413, with nothing
    built."""
    reg, tops, leaves, keys = wide
    srv = _serve(reg, keys, tmp_path / "log", kiln_server)
    some = [_hp(p) for p in tops[: W // 2]]
    assert _json_size(reg, some) > batchapi.DEFER_AT
    status, raw = _post(srv.url, {"hashes": some})
    ans = json.loads(raw)
    assert status == 200 and set(ans["narinfos"]) == set(some) and "deferred" not in ans
    status, raw = _post(srv.url, {"hashes": [_hp(p) for p in tops]})
    assert status == 413 and b"defer" in raw, raw[:300]


def test_the_client_refuses_deferrals_that_make_no_progress() -> None:
    asked = {"hashes": ["a" * 32, "b" * 32], "defer": True}
    ok = {"narinfos": {"a" * 32: "x"}, "deferred": {"hashes": ["b" * 32]}}
    assert deferred_of(ok, asked, "q") == {"hashes": ["b" * 32]}
    assert deferred_of({"narinfos": {}}, asked, "q") == {}
    for bad in (
        {"narinfos": {}, "deferred": {"hashes": ["a" * 32, "b" * 32]}},  # everything: no progress
        {"narinfos": {}, "deferred": {"hashes": ["c" * 32]}},  # not asked for
        {"narinfos": {"b" * 32: "x"}, "deferred": {"hashes": ["b" * 32]}},  # answered and deferred
        {"narinfos": {}, "deferred": {"blobs": ["a" * 32]}},  # not a deferrable field
    ):
        with pytest.raises(RegistryError):
            deferred_of(bad, asked, "q")


def test_the_client_asks_until_nothing_is_deferred_and_stops_a_server_that_defers_all() -> None:
    """Against a server that answers one narinfo per request and defers the rest, the
    client asks once per entry and gets them all; against one that defers every entry
    it stops at once with an error (it would otherwise ask forever)."""
    asked: list[dict] = []
    hostile = False

    async def batch(req: web.Request) -> web.Response:
        body = await req.json()
        asked.append(body)
        hs = body["hashes"]
        if hostile:
            return web.json_response({"narinfos": {}, "deferred": {"hashes": hs}})
        more = {"deferred": {"hashes": hs[1:]}} if hs[1:] else {}
        return web.json_response({"narinfos": {hs[0]: f"text of {hs[0]}"}, **more})

    async def go(port: int) -> None:
        nonlocal hostile
        app = web.Application()
        app.router.add_post("/narinfo-batch", batch)
        runner = web.AppRunner(app)
        await runner.setup()
        await web.TCPSite(runner, "127.0.0.1", port).start()
        want = [c * 32 for c in "abcdf"]
        try:
            async with HttpClient(f"http://127.0.0.1:{port}") as c:
                assert await c.narinfos(want) == {h: f"text of {h}" for h in want}
                assert [a["hashes"] for a in asked] == [want[k:] for k in range(5)]
                assert all(a["defer"] is True for a in asked)
                hostile = True
                asked.clear()
                with pytest.raises(RegistryError, match="deferred every entry"):
                    await c.narinfos(want)
                assert len(asked) == 1
        finally:
            await runner.cleanup()

    asyncio.run(go(20731))
