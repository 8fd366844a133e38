"""``DirSource.commit_batch`` (``POST /upload-batch``, and pushes to a directory) is
linear in the batch: it rebuilt the set of the hash parts admitted so far for every
entry, reading ``n²/2`` hash parts for ``n`` entries (125,000 for the 500 a push sends).
Counted here through the entries' ``hash_part`` reads, for a real chain in a real
registry directory, each path referring to the one before it in the same batch."""

from __future__ import annotations

from regkit import add_chain, make_store

from kiln.registry import layout
from kiln.registry.backends import BatchEntry, DirSource
from kiln.registry.dirclient import DirClient
from kiln.store import narinfo as ni

N = 400


class CountedEntry(BatchEntry):
    """A ``BatchEntry`` that counts the reads of its ``hash_part``."""

    reads = 0

    @property  # type: ignore[override]
    def hash_part(self) -> str:
        CountedEntry.reads += 1
        return self._h

    @hash_part.setter
    def hash_part(self, value: str) -> None:
        self._h = value


def test_commit_batch_reads_each_entry_a_bounded_number_of_times(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, N)
    client = DirClient(str(tmp_path / "reg"), store.store_dir)
    entries = []
    for p in chain:
        info = store.query(p)
        client.put_object_sync(layout.nar_key(info.file_hash), store.object_path(p))
        text = ni.NarInfo.from_pathinfo(info, layout.nar_key(info.file_hash), "zstd").render()
        entries.append(CountedEntry(p.rsplit("/", 1)[1][:32], text.encode()))
    src = DirSource(tmp_path / "reg")
    CountedEntry.reads = 0
    results = src.commit_batch(entries, lambda _h, t: ni.parse(t, src.store_dir))
    assert [st for st, _ in results] == [201] * N, results[:3]
    assert CountedEntry.reads <= 8 * N, CountedEntry.reads  # was ~N²/2 = 80,000
    # and each path was admitted because the one it refers to came earlier in the batch
    assert all((tmp_path / "reg" / f"{e.hash_part}.narinfo").is_file() for e in entries)
    # a reference neither published nor earlier in the batch is still refused
    lone = add_chain(store, tmp_path, 2, tag="lone")
    info = store.query(lone[1])
    client.put_object_sync(layout.nar_key(info.file_hash), store.object_path(lone[1]))
    text = ni.NarInfo.from_pathinfo(info, layout.nar_key(info.file_hash), "zstd").render()
    (st, msg), = src.commit_batch([BatchEntry(lone[1].rsplit("/", 1)[1][:32], text.encode())], lambda _h, t: ni.parse(t, src.store_dir))  # fmt: skip
    assert st == 409 and "not published here" in msg, msg
