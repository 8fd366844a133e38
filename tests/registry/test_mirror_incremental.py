"""A mirror sync fetches and checks only what changed (``mirrorplan``): a sync of an
unchanged index stops after the timestamp and reads no narinfo; an index DST already
holds is not downloaded again; a changed index is diffed, not every narinfo re-read;
what changed in DST is still repaired, and ``full`` checks everything as before.
Requests and bytes are read from a real ``kiln serve --access-log``."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
from regkit import add_chain, add_tree, make_store

from kiln.registry import dirstamps, indexprune, mirrorplan
from kiln.registry import index as ix
from kiln.registry.backends import DirSource
from kiln.registry.client import open_client
from kiln.registry.mirror import sync
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.storage import open_storage


def _settle() -> None:
    time.sleep(0.08)


@pytest.fixture
def source(tmp_path: Path, keys, kiln_server, monkeypatch):
    """A served registry (with an access log) of 6 paths and its index."""
    monkeypatch.setattr(dirstamps, "MARGIN_NS", 30_000_000)
    store = make_store(tmp_path / "store")
    paths = add_chain(store, tmp_path, 5) + [add_tree(store, tmp_path, "big", "data\n" * 50000)]
    reg = tmp_path / "src"
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    log = tmp_path / "access.log"
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file), "--access-log", str(log))
    return store, paths, reg, srv.url, log


def _requests(log: Path) -> list[tuple[str, str, int, int]]:
    """(method, path, status, bytes) of each access-log line, and empty the log."""
    out = []
    for line in log.read_text().splitlines():
        parts = line.split(" ")
        out.append((parts[2], parts[3].strip('"'), int(parts[4]), int(parts[5])))
    log.write_text("")  # (the server appends: O_APPEND writes land at the new end)
    return out


class _Looks:
    """The hash parts whose narinfo the mirror looks at in DST."""

    def __init__(self, monkeypatch) -> None:
        self.seen: list[str] = []
        real = DirSource.narinfo

        def narinfo(src, h):  # noqa: ANN001, ANN202
            self.seen.append(h)
            return real(src, h)

        monkeypatch.setattr(DirSource, "narinfo", narinfo)

    def take(self) -> set[str]:
        out, self.seen = set(self.seen), []
        return out


def _hp(p: str) -> str:
    return p.rsplit("/", 1)[1][:32]


def _same_as_source(reg: Path, dst: Path) -> None:
    for p in reg.glob("*.narinfo"):
        assert (dst / p.name).read_bytes() == p.read_bytes()
    assert (dst / "index/timestamp.json").read_bytes() == (reg / "index/timestamp.json").read_bytes()


def test_an_unchanged_index_costs_the_timestamp_and_nothing_else(source, keys, tmp_path, monkeypatch) -> None:
    store, paths, reg, url, log = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    _settle()
    sync(url, dst)  # checks once what the first sync wrote, then remembers it settled
    _settle()
    _requests(log)
    looks = _Looks(monkeypatch)
    rep = sync(url, dst)
    assert (rep.paths, rep.narinfos_fetched, rep.blobs_fetched) == (6, 0, 0)
    got = _requests(log)
    assert [(m, p) for m, p, _, _ in got] == [
        ("GET", "/nix-cache-info"),
        ("GET", "/index/2.root.json"),
        ("GET", "/index/timestamp.json"),
    ], got
    assert looks.take() == set()  # no narinfo of DST read
    # the source re-signs its timestamp (no path changed): the mirror takes it, and only it
    publish_index(open_storage(reg), keys.sk)
    sync(url, dst)
    assert [p for _, p, _, _ in _requests(log)] == [
        "/nix-cache-info",
        "/index/2.root.json",
        "/index/timestamp.json",
    ]
    assert looks.take() == set()
    _same_as_source(reg, dst)


def test_a_changed_index_is_downloaded_once_and_diffed(source, keys, tmp_path, monkeypatch) -> None:
    store, paths, reg, url, log = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    _settle()
    new = add_tree(store, tmp_path / "n", "new", "new\n")
    push(store, [new], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    _requests(log)
    looks = _Looks(monkeypatch)
    rep = sync(url, dst)
    assert (rep.paths, rep.narinfos_fetched, rep.blobs_fetched) == (7, 1, 1)
    got = _requests(log)
    index_gets = [(p, n) for m, p, s, n in got if p.endswith(".index.json")]
    size = (reg / "index/2.index.json").stat().st_size
    # one download of the new index, logged with its body (sendfile) bytes
    assert len(index_gets) == 1 and index_gets[0][0] == "/index/2.index.json" and index_gets[0][1] > size
    assert not any(p.endswith(".narinfo") for _, p, _, _ in got)  # (the narinfo came batched)
    # the new path, and those the first sync wrote (read once more, then stamped)
    assert looks.take() == {_hp(p) for p in [*paths, new]}
    _settle()
    _requests(log)
    another = add_tree(store, tmp_path / "n2", "another", "another\n")
    push(store, [another], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    rep = sync(url, dst)
    assert (rep.narinfos_fetched, rep.blobs_fetched) == (1, 1)
    assert looks.take() == {_hp(new), _hp(another)}  # the diff, and the one written last time
    _same_as_source(reg, dst)
    # the mirror is still a registry of its own: a second-level mirror syncs from it
    rep = sync(
        f"file://{dst}", tmp_path / "m2", root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk]
    )
    assert (rep.paths, rep.blobs_fetched) == (8, 8)


def test_what_changed_in_the_mirror_is_repaired(source, keys, tmp_path, monkeypatch) -> None:
    store, paths, reg, url, log = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    _settle()
    sync(url, dst)
    _settle()
    # a narinfo removed (``registry verify --delete-bad``), another replaced by hand
    (dst / f"{_hp(paths[0])}.narinfo").unlink()
    victim = dst / f"{_hp(paths[1])}.narinfo"
    victim.write_bytes(victim.read_bytes().replace(b"Sig:", b"Sig: junk\nSig:", 1))
    looks = _Looks(monkeypatch)
    rep = sync(url, dst)
    assert rep.narinfos_fetched == 2
    assert looks.take() == {_hp(paths[0]), _hp(paths[1])}  # stamps changed: only those
    _same_as_source(reg, dst)
    # an edit in place leaves the directory as it was: a full sync finds and repairs it
    _settle()
    sync(url, dst)
    _settle()
    with open(dst / f"{_hp(paths[2])}.narinfo", "r+b") as f:
        f.seek(20)
        byte = f.read(1)
        f.seek(20)
        f.write(b"0" if byte != b"0" else b"1")
    _requests(log)
    rep = sync(url, dst, full=True)
    assert rep.narinfos_fetched == 1
    assert any(p.endswith(".index.json") for _, p, _, _ in _requests(log))  # full: downloaded again
    _same_as_source(reg, dst)


def test_an_index_the_mirror_holds_is_not_downloaded_again(source, keys, tmp_path) -> None:
    """A mirror without the record (made by an older kiln, or the record lost) checks
    every path once, but takes the index it holds from its own disk."""
    store, paths, reg, url, log = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    (dst / mirrorplan.RECORD_KEY).unlink()
    _requests(log)
    rep = sync(url, dst)
    assert rep.paths == 6 and rep.narinfos_fetched == 0
    assert not any(p.endswith((".index.json", ".snapshot.json")) for _, p, _, _ in _requests(log))


def test_the_remembered_index_still_expires(source, keys, tmp_path) -> None:
    store, paths, reg, url, log = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    rec = json.loads((dst / mirrorplan.RECORD_KEY).read_bytes())
    (dst / mirrorplan.RECORD_KEY).write_text(json.dumps({**rec, "index_expires": "2001-01-01T00:00:00Z"}))
    with pytest.raises(ix.FreezeError):
        sync(url, dst)


def test_the_mirror_prunes_old_generations(source, keys, tmp_path) -> None:
    store, paths, reg, url, log = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    for i in range(3):
        new = add_tree(store, tmp_path / f"g{i}", f"g{i}", f"{i}\n")
        push(store, [new], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
        publish_index(open_storage(reg), keys.sk)
        sync(url, dst)
    old = time.time() - indexprune.KEEP_SECONDS - 60
    for p in (dst / "index").glob("*.json"):
        os.utime(p, (old, old))
    sync(url, dst)
    names = {p.name for p in (dst / "index").glob("*.*.json")}
    # (the root is carried and never pruned: ``indexprune``)
    assert names == {"1.root.json", "3.index.json", "3.snapshot.json", "4.index.json", "4.snapshot.json"}
