"""``kiln copy``'s closure discovery takes a few round trips, not one per dependency
level: a kiln server sends a closure's narinfos in one answer (``GET
narinfo-closure/...``, ``closurewalk``), and the copy asks for everything below the
first level at once. Counted in real servers' access logs, for a chain of ``N`` paths
(``N`` levels) with a wide level on top. The answer is only a hint: a partial or
false one still gives a complete, checked copy."""

from __future__ import annotations

import json

import pytest
from regkit import add_chain, kiln, make_store, request

from kiln.registry import closurewalk, copy
from kiln.registry.backends import DirSource
from kiln.registry.client import open_client
from kiln.registry.httpclient import HttpClient
from kiln.registry.push import push

N = 200


def _count(log, *what: str) -> int:  # noqa: ANN001
    lines = log.read_text().splitlines()
    return sum(any(f' "/{w}' in ln for w in what) for ln in lines)


@pytest.fixture
def served(tmp_path, keys, kiln_server):  # noqa: ANN201
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, N)
    tops = [store.add_text(f"top{i}.txt", f"{i} {chain[-1]}".encode(), [chain[-1]]).path for i in range(30)]
    reg, log = tmp_path / "reg", tmp_path / "src.log"
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file), "--access-log", str(log))
    push(store, tops, lambda: open_client(srv.url, tok), sign_key=keys.sk, progress=False)
    log.write_text("")
    return store, chain, tops, reg, srv, log, tok


def test_copy_into_a_store_discovers_a_deep_closure_in_a_few_requests(served, keys, tmp_path) -> None:
    _store, chain, tops, _reg, srv, log, _tok = served
    dst = tmp_path / "dst"
    r = kiln("copy", "--from", srv.url, "--to", "store", "--store", str(dst), "--store-dir", "/kiln/store", "--trusted-key", str(keys.pk_file), *tops)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"copied {N + 30} paths" in r.stdout
    assert _count(log, "narinfo-batch") <= 2, log.read_text()  # was one per level: N + 1
    assert _count(log, "narinfo-closure/") == 1
    # a second copy of the same paths (all there) asks for no narinfo (the one batch
    # is the attestations' listing)
    log.write_text("")
    r = kiln("copy", "--from", srv.url, "--to", "store", "--store", str(dst), "--trusted-key", str(keys.pk_file), *tops)  # fmt: skip
    assert r.returncode == 0 and "copied 0 paths" in r.stdout, r.stderr
    assert _count(log, "narinfo-closure/") == 0 and _count(log, "narinfo-batch") <= 1
    # part of the closure there already: only the rest is copied
    part = tmp_path / "part"
    r = kiln("copy", "--from", srv.url, "--to", "store", "--store", str(part), "--store-dir", "/kiln/store", "--trusted-key", str(keys.pk_file), chain[N // 2])  # fmt: skip
    assert r.returncode == 0 and f"copied {N // 2 + 1} paths" in r.stdout, r.stderr
    r = kiln("copy", "--from", srv.url, "--to", "store", "--store", str(part), "--trusted-key", str(keys.pk_file), tops[0])  # fmt: skip
    assert r.returncode == 0 and f"copied {N - N // 2}" in r.stdout, r.stdout + r.stderr


def test_copy_between_registries_discovers_a_deep_closure_in_a_few_requests(
    served, keys, tmp_path, kiln_server
) -> None:
    store, _chain, tops, _reg, srv, log, tok = served
    reg2, log2 = tmp_path / "reg2", tmp_path / "dst.log"
    assert kiln("registry", "init", "--dir", str(reg2)).returncode == 0
    tok2 = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg2)).stdout.strip()
    srv2 = kiln_server("--dir", str(reg2), "--trusted-key", str(keys.pk_file), "--access-log", str(log2))
    r = kiln("copy", "--from", srv.url, "--to", srv2.url, "--token", tok2, "--trusted-key", str(keys.pk_file), *tops)  # fmt: skip
    assert r.returncode == 0, r.stderr
    assert f"copied {N + 30} paths" in r.stdout
    assert len(list(reg2.glob("*.narinfo"))) == N + 30
    # (the one batch at the source is the attestations' listing)
    assert _count(log, "narinfo-closure/") == 1 and _count(log, "narinfo-batch") <= 1, log.read_text()
    # the destination: asked about the whole closure once (and the push's own checks)
    assert _count(log2, "narinfo-batch") <= 3, log2.read_text()
    # again, with one more path on top: only it is copied (the rest is found there)
    more = store.add_text("more.txt", f"more {tops[0]}".encode(), [tops[0]]).path
    push(store, [more], lambda: open_client(srv.url, tok), sign_key=keys.sk, progress=False)
    r = kiln("copy", "--from", srv.url, "--to", srv2.url, "--token", tok2, "--trusted-key", str(keys.pk_file), more, *tops)  # fmt: skip
    assert r.returncode == 0 and "copied 1 paths" in r.stdout, r.stdout + r.stderr


def test_a_partial_or_false_hint_still_gives_a_complete_checked_copy(
    served, keys, tmp_path, monkeypatch
) -> None:
    store, chain, tops, _reg, srv, _log, _tok = served
    real = HttpClient.narinfo_closure

    async def bad(self, hash_parts):  # noqa: ANN001, ANN202
        got = await real(self, hash_parts)
        kept = dict(list(got.items())[: len(got) // 3])  # a partial answer ...
        h0, h1 = (p.rsplit("/", 1)[1][:32] for p in chain[:2])
        kept[h0] = got[h1]  # ... with one path's narinfo under another's hash part
        return kept

    monkeypatch.setattr(HttpClient, "narinfo_closure", bad)
    dst = make_store(tmp_path / "dst")
    assert copy.to_store(srv.url, dst, tops, [keys.pk]) == N + 30
    assert all(dst.query(p).nar_hash == store.query(p).nar_hash for p in [*chain, *tops])
    dst.close()


def test_the_closure_answer_is_bounded_and_says_when_it_is_partial(served, monkeypatch) -> None:
    _store, _chain, tops, reg, srv, _log, _tok = served
    h = tops[0].rsplit("/", 1)[1][:32]
    status, headers, body = request(f"{srv.url}/narinfo-closure/{h}")
    ans = json.loads(body)
    assert status == 200 and ans["complete"] is True and len(ans["narinfos"]) == N + 1
    assert headers["cache-control"] == "no-store"
    monkeypatch.setattr(closurewalk, "MAX_ENTRIES", 10)
    ans = json.loads(closurewalk.closure_answer(DirSource(reg).narinfo, [h]))
    assert ans["complete"] is False and len(ans["narinfos"]) == 10
    assert request(f"{srv.url}/narinfo-closure/{h},{'0' * 31}")[0] == 404  # not a closure key
    assert json.loads(request(f"{srv.url}/narinfo-closure/{'0' * 32}")[2])["narinfos"] == {}
