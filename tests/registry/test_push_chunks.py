"""``kiln push`` and ``kiln copy`` send a closure in dependency-ordered chunks
(``registry/uploadplan.py``), not one request per dependency level; a push to ``file://``
commits in batches (two barriers per batch, not an fsync and a syncfs per path); and a
request waiting for a pooled connection is not "unreachable"."""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlparse

import pytest
from regkit import add_chain, add_tree, kiln, make_store

from kiln.registry import httpclient, httpsession, layout, storage, uploadplan
from kiln.registry import push as push_mod
from kiln.registry.client import Unreachable, open_client
from kiln.registry.dirclient import DirClient
from kiln.registry.push import prepare, push, push_prepared


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


def _requests(log: Path, what: str) -> int:
    return sum(f'"{what}"' in line for line in log.read_text().splitlines())


def _registry(tmp_path: Path, name: str) -> tuple[Path, str]:
    reg = tmp_path / name
    assert kiln("registry", "init", "--dir", str(reg)).returncode == 0
    tok = kiln("registry", "token", "create", "--scope", "write", "--dir", str(reg)).stdout.strip()
    return reg, tok


# ------------------------------------------------------------------ the plan


def _check(order: list[str], refs: dict[str, list[str]], chunks: list[uploadplan.Chunk], count: int) -> None:
    """Every path once, in a chunk after its references (earlier in the same chunk, or
    in a chunk committed before this one starts), at most ``count`` per chunk."""
    seen: dict[str, tuple[int, int]] = {}
    for n, c in enumerate(chunks):
        assert 0 < len(c.paths) <= count
        for k, p in enumerate(c.paths):
            for r in refs[p]:
                rc, rk = seen.get(r, (n, k)) if r not in c.paths else (n, c.paths.index(r))
                assert (rc == n and rk < k) or (c.waits_for(rc) if count > 1 else rc in c.deps), (p, r)
            seen[p] = (n, k)
    assert sorted(seen) == sorted(order)


def _levels(refs: dict[str, list[str]]) -> list[str]:
    from kiln.registry.push import levels
    from kiln.store.hashes import Hash
    from kiln.store.pathinfo import PathInfo

    infos = {p: PathInfo(p, Hash.sha256_of(p.encode()), 1, references=tuple(r)) for p, r in refs.items()}
    return [p for lv in levels(infos) for p in lv]


def test_a_chain_is_a_few_chunks_and_a_wide_level_spreads_over_jobs() -> None:
    chain = {f"c{i}": [f"c{i - 1}"] if i else [] for i in range(2000)}
    order = _levels(chain)
    chunks = uploadplan.plan(order, chain.__getitem__, lambda p: 0, 16)
    assert [len(c.paths) for c in chunks] == [500] * 4  # was one request per path
    _check(order, chain, chunks, 500)
    # 20 roots, 1,000 paths on them, one top: the middle goes as parallel chunks
    wide = {f"r{i}": [] for i in range(20)}
    wide |= {f"m{i}": [f"r{i % 20}", f"r{(i * 7) % 20}"] for i in range(1000)}
    wide["top"] = [f"m{i}" for i in range(1000)]
    order = _levels(wide)
    chunks = uploadplan.plan(order, wide.__getitem__, lambda p: 0, 8)
    _check(order, wide, chunks, 500)
    assert len(chunks) <= 10 and sum(c.deps == {0} for c in chunks) >= 7  # 8 at once after the roots
    # bytes bound: a chunk stops at about max_bytes; a bigger object goes alone
    sizes = {p: 300 if p in ("c5", "c9") else 10 for p in chain}
    chunks = uploadplan.plan(_levels(chain)[:20], chain.__getitem__, sizes.__getitem__, 1, 500, 100)
    assert [c.paths for c in chunks if "c5" in c.paths or "c9" in c.paths] == [["c5"], ["c9"]]
    assert all(c.size <= 100 or len(c.paths) == 1 for c in chunks)


@pytest.mark.parametrize("seed", range(5))
def test_random_dags_are_planned_in_dependency_order(seed: int) -> None:
    rnd = random.Random(seed)
    refs: dict[str, list[str]] = {}
    for i in range(400):
        earlier = list(refs)
        refs[f"p{i}"] = rnd.sample(earlier, min(len(earlier), rnd.choice([0, 1, 2, 5])))
    order = _levels(refs)
    for jobs, count in ((1, 500), (4, 7), (16, 50), (64, 1)):
        _check(order, refs, uploadplan.plan(order, refs.__getitem__, lambda p: 0, jobs, count), count)


def test_run_sends_after_the_references_and_stops_dependents_of_a_failure() -> None:
    refs = {"a": [], "b": ["a"], "c": [], "d": ["c"], "e": ["b"]}
    chunks = uploadplan.plan(["a", "c", "b", "d", "e"], refs.__getitem__, lambda p: 0, 5, 1)
    finished: list[str] = []

    async def send(paths: list[str]) -> None:
        assert all(r in finished for p in paths for r in refs[p]), (paths, finished)
        await asyncio.sleep(0.01 * len(finished))
        if paths == ["b"] and fail:
            raise RuntimeError("b refused")
        finished.extend(paths)

    fail = False
    asyncio.run(uploadplan.run(chunks, send, 2))
    assert sorted(finished) == ["a", "b", "c", "d", "e"]
    finished.clear()
    fail = True
    with pytest.raises(RuntimeError, match="b refused"):
        asyncio.run(uploadplan.run(chunks, send, 2))
    assert sorted(finished) == ["a", "c", "d"]  # not e: it needs b


# ------------------------------------------------------------ push and copy


def test_a_deep_push_and_copy_take_a_few_requests(tmp_path, keys, kiln_server) -> None:
    """A chain of 50 went as 50 ``upload-batch`` requests (one per dependency level),
    and a copy between registries as 50 blob batches and 50 uploads."""
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, 50)
    leaves = [add_tree(store, tmp_path, f"leaf{i}", f"{i}\n") for i in range(30)]
    reg, tok = _registry(tmp_path, "reg")
    log = tmp_path / "push.log"
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file), "--access-log", str(log))
    push_cmd = ["push", "--store", str(store.root), "--to", srv.url, "--token", tok]
    r = kiln(*push_cmd, "--sign-key", str(keys.sk_file), "-j", "4", chain[-1], *leaves)
    assert r.returncode == 0 and "pushed 80 of 80 paths" in r.stdout, r.stderr
    assert all((reg / layout.narinfo_key(_hp(p))).is_file() for p in chain + leaves)
    # the one-path probe, then the rest over about -j chunks (chain pieces merged)
    assert _requests(log, "/upload-batch") <= 1 + 4, log.read_text()
    reg2, tok2 = _registry(tmp_path, "reg2")
    log2 = tmp_path / "copy.log"
    srv2 = kiln_server("--dir", str(reg2), "--trusted-key", str(keys.pk_file), "--access-log", str(log2))
    copy = ["copy", "--from", srv.url, "--trusted-key", str(keys.pk_file)]
    r = kiln(*copy, "--to", srv2.url, "--token", tok2, "-j", "4", chain[-1], *leaves)
    assert r.returncode == 0, r.stderr
    assert all((reg2 / layout.narinfo_key(_hp(p))).is_file() for p in chain + leaves)
    assert _requests(log2, "/upload-batch") <= 1 + 4, log2.read_text()
    assert _requests(log, "/blob-batch") == 1  # one group (<= 500 paths), not one per level
    # and into a directory (now batched too: it had no upload_batch)
    r = kiln(*copy, "--to", f"file://{tmp_path / 'reg3'}", chain[-1])
    assert r.returncode == 0, r.stderr
    assert all((tmp_path / "reg3" / layout.narinfo_key(_hp(p))).is_file() for p in chain)
    # nothing missing: a second push sends nothing
    r = kiln(*push_cmd, chain[-1], *leaves)
    assert r.returncode == 0 and "pushed 0 of 80" in r.stdout
    assert _requests(log, "/upload-batch") <= 1 + 4


def test_a_file_push_commits_in_batches(tmp_path, monkeypatch) -> None:
    """``--to file://DIR`` did an fsync and a syncfs per path; now two syncfs per batch,
    NAR data before NAR links, narinfo data before narinfo links."""
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, 50)
    items = prepare(store, [chain[-1]])
    client = DirClient(str(tmp_path / "reg"), store.store_dir)
    events: list[str] = []
    real_fsync, real_link, real_sync = os.fsync, os.link, storage._syncfs
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(os, "sync", lambda: events.append("sync"))
    monkeypatch.setattr(os, "link", lambda a, b, **kw: (events.append(f"link {b}"), real_link(a, b, **kw))[1])
    if real_sync is not None:
        monkeypatch.setattr(storage, "_syncfs", lambda fd: (events.append("sync"), real_sync(fd))[1])
    rep = asyncio.run(push_prepared(items, client, jobs=4))
    assert rep.pushed == 50
    syncs = events.count("sync")
    assert events.count("fsync") == 0 and syncs <= 4, events  # was 50 fsyncs and 50 syncfs
    for p in chain:
        info = store.query(p)
        nar = next(k for k, e in enumerate(events) if e.endswith(layout.blob_key(info.file_hash)))
        inf = next(k for k, e in enumerate(events) if e.endswith(layout.narinfo_key(_hp(p))))
        assert 0 < events[:nar].count("sync") < events[:inf].count("sync"), (p, events)
    assert all((tmp_path / "reg" / layout.narinfo_key(_hp(p))).is_file() for p in chain)


def test_a_file_batch_admits_as_put_does(tmp_path) -> None:
    """``DirClient.upload_batch`` checks each path as ``put_bytes`` does: its own hash
    part, the NAR's digests, references published or earlier in the batch."""
    store = make_store(tmp_path / "store")
    a, b = add_chain(store, tmp_path, 2)
    other = add_tree(store, tmp_path, "other", "other\n" * 20)
    c = DirClient(str(tmp_path / "reg"), store.store_dir)
    from kiln.store import narinfo as ni

    def frame(p: str, nar: str | None = None, h: str | None = None) -> tuple[str, bytes, Path | None]:
        i = store.query(p)
        text = ni.NarInfo.from_pathinfo(i, layout.nar_key(i.file_hash), "zstd").render().encode()
        return (h or _hp(p), text, store.object_path(nar or p))

    def batch(*frames: tuple[str, bytes, Path | None]) -> list[tuple[int, str]]:
        return [(r["status"], r["message"]) for r in asyncio.run(c.upload_batch(list(frames)))]

    [(st, msg)] = batch(frame(b))
    assert st == 409 and f"refers to {a}" in msg
    [(st, msg)] = batch(frame(a, nar=other))
    assert st == 400 and "does not hash to its FileHash" in msg
    [(st, msg)] = batch(frame(a, h=_hp(other)))
    assert st == 400 and "describes another path" in msg
    assert not list((tmp_path / "reg").glob("*.narinfo"))
    assert [s for s, _ in batch(frame(a), frame(b))] == [201, 201]
    assert [s for s, _ in batch(frame(a), frame(b))] == [200, 200]  # already published


# ------------------------------------------------------------ pooled connections


class SlowProxy:
    """Relays to a ``kiln serve``, answering each request no sooner than ``delay`` s
    after its last byte came (a busy or distant registry)."""

    def __init__(self, url: str, delay: float) -> None:
        u = urlparse(url)
        self.target, self.delay = (u.hostname, u.port), delay
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                down, _ = self.sock.accept()
            except OSError:
                return
            up = socket.create_connection(self.target)  # type: ignore[arg-type]
            last = [time.monotonic()]
            threading.Thread(target=self._pipe, args=(down, up, last, False), daemon=True).start()
            threading.Thread(target=self._pipe, args=(up, down, last, True), daemon=True).start()

    def _pipe(self, a: socket.socket, b: socket.socket, last: list[float], answer: bool) -> None:
        try:
            while data := a.recv(1 << 16):
                if answer:
                    time.sleep(max(0.0, last[0] + self.delay - time.monotonic()))
                else:
                    last[0] = time.monotonic()
                b.sendall(data)
        except OSError:
            pass
        finally:
            for s in (a, b):
                with contextlib.suppress(OSError):
                    s.shutdown(socket.SHUT_RDWR)

    def close(self) -> None:
        with contextlib.suppress(OSError):
            self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()


@pytest.fixture
def slow(tmp_path, keys, kiln_server, monkeypatch):  # noqa: ANN201
    """A served registry behind a 1.5 s ``SlowProxy``, and a connect timeout of 1.0 s: a
    wait for a pooled connection (at least 1.5 s) counted as connecting fails, a real
    loopback connect on a loaded machine does not."""
    monkeypatch.setattr(httpsession, "CONNECT_TIMEOUT", 1.0)
    reg, tok = _registry(tmp_path, "reg")
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    proxy = SlowProxy(srv.url, 1.5)
    yield proxy, reg, tok
    proxy.close()


def test_a_wait_for_a_pooled_connection_is_not_a_connect_timeout(slow) -> None:
    """aiohttp's ``connect`` timeout counted the wait for a free pooled connection:
    more requests than the pool holds failed as "unreachable"."""
    proxy, _reg, _tok = slow

    async def both() -> list[bytes | None]:
        async with httpclient.HttpClient(proxy.url, jobs=1) as c:
            return await asyncio.gather(c.get(layout.CACHE_INFO), c.get(layout.CACHE_INFO))

    assert all(b and b.startswith(b"StoreDir:") for b in asyncio.run(both()))


def test_a_push_wider_than_the_pool_does_not_fail(slow, tmp_path, keys, monkeypatch) -> None:
    """A level cut into more chunks than ``-j`` (more than ``-j`` x 500 paths) sent them
    all at once: those waiting for a connection failed as "unreachable"."""
    proxy, reg, tok = slow
    monkeypatch.setattr(push_mod, "MAX_FRAMES", 2)  # (stands for 500: 5 paths, 3 chunks)
    store = make_store(tmp_path / "store")
    leaves = [add_tree(store, tmp_path, f"leaf{i}", f"{i}\n") for i in range(5)]
    rep = push(store, leaves, lambda: open_client(proxy.url, tok, 1), jobs=1, sign_key=keys.sk)
    assert rep.pushed == 5
    assert all((reg / layout.narinfo_key(_hp(p))).is_file() for p in leaves)


def test_a_name_lookup_is_still_bounded(monkeypatch) -> None:
    """With the pool wait uncounted, the resolver bounds a name lookup instead."""
    import aiohttp

    async def hang(*_a: object, **_k: object) -> None:
        await asyncio.sleep(30)

    monkeypatch.setattr(httpsession, "CONNECT_TIMEOUT", 0.3)
    monkeypatch.setattr(aiohttp.DefaultResolver, "resolve", hang)

    async def get() -> None:
        async with httpclient.HttpClient("http://registry.example:1") as c:
            await c.get(layout.CACHE_INFO)

    t = time.monotonic()
    with pytest.raises(Unreachable, match="took over 0.3 s"):
        asyncio.run(get())
    assert time.monotonic() - t < 5
