"""NAR-hash lookups without scanning everything: ``kiln serve --dir`` reads only the
narinfos that changed, and nothing while the directory has not changed
(``narhashmap``); ``kiln serve --store`` looks up through an index on
``paths(nar_hash)``, added to existing stores too (``store/db.py``)."""

from __future__ import annotations

import sqlite3
import time

from regkit import add_tree, make_store

from kiln.registry import dirstamps, narhashmap
from kiln.registry.backends import BatchEntry, DirSource
from kiln.registry.client import open_client
from kiln.registry.push import push
from kiln.registry.storage import FileStorage
from kiln.store import db
from kiln.store import narinfo as ni


def _narinfo_reads(monkeypatch) -> list[str]:
    seen: list[str] = []
    real = FileStorage.read

    def read(storage, key):  # noqa: ANN001, ANN202
        if key.endswith(".narinfo"):
            seen.append(key)
        return real(storage, key)

    monkeypatch.setattr(FileStorage, "read", read)
    return seen


def test_a_miss_reads_only_what_others_published(pushed, keys, tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(dirstamps, "MARGIN_NS", 30_000_000)
    monkeypatch.setattr(narhashmap, "RESCAN_S", 0.0)
    store, chain, leaf, reg, tok, srv = pushed
    time.sleep(0.08)
    serving = DirSource(reg)
    reads = _narinfo_reads(monkeypatch)
    assert serving.narinfo_by_nar_hash("0" * 64) is None
    assert len(reads) == 6  # the first lookup reads them all, once
    reads.clear()
    time.sleep(0.08)
    for i in range(50):  # a flood of unknown hashes against an unchanged directory
        assert serving.narinfo_by_nar_hash(f"{i + 1:064x}") is None
    assert reads == []
    # another worker (or kiln push --to file://) publishes a path
    new = add_tree(store, tmp_path / "n", "new", "published elsewhere\n")
    push(store, [new], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    reads.clear()
    body = serving.narinfo_by_nar_hash(store.query(new).nar_hash.hex)
    assert body is not None and ni.parse(body.decode(), store.store_dir).path == new
    assert {k[:32] for k in reads} == {new.rsplit("/", 1)[1][:32]}  # only that narinfo


def test_what_a_worker_publishes_in_a_batch_it_finds_at_once(pushed, keys, tmp_path, monkeypatch) -> None:
    """``commit_batch`` (``POST /upload-batch``) taught the map nothing: a lookup right
    after a batched push had to wait for a rescan."""
    monkeypatch.setattr(narhashmap, "RESCAN_S", 3600.0)
    store, chain, leaf, reg, tok, srv = pushed
    src = DirSource(reg)
    assert src.narinfo_by_nar_hash("0" * 64) is None  # (the one refresh of the interval)
    new = add_tree(store, tmp_path / "n", "batched", "batched\n")
    push(store, [new], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    h = new.rsplit("/", 1)[1][:32]
    text = (reg / f"{h}.narinfo").read_bytes()
    (reg / f"{h}.narinfo").unlink()  # the NAR stays: the narinfo comes again, in a batch
    out = src.commit_batch([BatchEntry(h, text)], lambda _h, t: ni.parse(t, src.store_dir))
    assert out[0][0] == 201, out
    body = src.narinfo_by_nar_hash(store.query(new).nar_hash.hex)
    assert body == text


def test_the_store_database_looks_up_nar_hashes_through_an_index(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    p = add_tree(store, tmp_path, "x", "x\n")
    want = store.query(p).nar_hash
    conn = store.conn
    plan = conn.execute(
        "EXPLAIN QUERY PLAN SELECT path FROM paths WHERE nar_hash=? LIMIT 1", (want.to_nix32(),)
    ).fetchall()
    detail = " ".join(str(row[-1]) for row in plan)
    assert "USING" in detail and "INDEX" in detail and "SCAN paths" not in detail, plan  # not a table scan
    assert "paths_nar_hash" in detail, plan
    assert db.path_by_nar_hash(conn, want) == p
    store.close()
    # a store made before the index existed gets it when opened (once; idempotent)
    raw = sqlite3.connect(tmp_path / "store" / "db.sqlite")
    raw.execute(f"DROP INDEX {db.NAR_HASH_INDEX}")
    raw.commit()
    raw.close()
    for _ in range(2):
        conn = db.connect(tmp_path / "store" / "db.sqlite")
        names = {n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type='index'")}
        assert db.NAR_HASH_INDEX in names
        assert db.path_by_nar_hash(conn, want) == p
        conn.close()


def test_a_read_only_store_database_is_used_without_the_index(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    p = add_tree(store, tmp_path, "x", "x\n")
    want = store.query(p).nar_hash
    store.close()
    path = tmp_path / "store" / "db.sqlite"
    raw = sqlite3.connect(path)
    raw.execute(f"DROP INDEX {db.NAR_HASH_INDEX}")
    raw.commit()
    raw.close()
    ro = sqlite3.connect(f"file:{path}?mode=ro", uri=True, isolation_level=None, factory=db.Connection)
    db._upgrade(ro)  # cannot write: skipped (tried again at the next open), no error
    assert db.path_by_nar_hash(ro, want) == p
    ro.close()


def test_a_deleted_narinfo_gives_way_to_another_path_with_the_same_nar(
    pushed, keys, tmp_path, monkeypatch
) -> None:
    """Two paths with one NAR (the same tree under two names): once the mapped one's
    narinfo is deleted (``registry verify --delete-bad``, a mirror prune) the lookup found
    nothing until something else made the map refresh; now it finds the other."""
    monkeypatch.setattr(dirstamps, "MARGIN_NS", 30_000_000)
    monkeypatch.setattr(narhashmap, "RESCAN_S", 0.0)
    store, _chain, _leaf, reg, _tok, _srv = pushed
    a = add_tree(store, tmp_path / "a", "twin-a", "the same bytes\n")
    b = add_tree(store, tmp_path / "b", "twin-b", "the same bytes\n")
    nar = store.query(a).nar_hash.hex
    assert store.query(b).nar_hash.hex == nar
    push(store, [a, b], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    time.sleep(0.08)
    serving = DirSource(reg)
    first = ni.parse(serving.narinfo_by_nar_hash(nar).decode(), store.store_dir).path
    other = b if first == a else a
    (reg / f"{first.rsplit('/', 1)[1][:32]}.narinfo").unlink()
    time.sleep(0.08)
    body = serving.narinfo_by_nar_hash(nar)
    assert body is not None and ni.parse(body.decode(), store.store_dir).path == other
