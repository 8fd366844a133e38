"""``store.attestgroup.GroupWriter``: many attestations written with one barrier before
the renames and one after, checked as ``attestations.write`` checks them; a failure
part-way leaves every target whole (old or new) and no temp file behind."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from attestkit import signed_provenance

from kiln.store import attestations, attestgroup, objects
from kiln.store.attestgroup import GroupWriter
from kiln.store.dsse import Envelope
from kiln.store.errors import KilnError
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey

SK = SecretKey.generate("group-test-1")


def _prov(store: LocalStore, path: str, when: float) -> Envelope:
    return signed_provenance(store, path, SK, finished=when)


@pytest.fixture
def many(tmp_path: Path) -> tuple[LocalStore, list[str]]:
    store = LocalStore.open(tmp_path / "store")
    return store, [store.add_text(f"t{i}.txt", f"text {i}\n".encode(), []).path for i in range(10)]


def _temps(store: LocalStore) -> list[Path]:
    return list((Path(store.root) / "attestations").rglob("*.tmp"))


def test_a_group_is_written_with_two_barriers(many, monkeypatch) -> None:
    store, paths = many
    calls: list[str] = []
    real_replace, real_sync = os.replace, objects.sync_filesystem
    monkeypatch.setattr(attestgroup, "sync_filesystem", lambda d: (calls.append("sync"), real_sync(d))[1])
    monkeypatch.setattr(os, "replace", lambda a, b: (calls.append("rename"), real_replace(a, b))[1])
    monkeypatch.setattr(os, "fsync", lambda fd: calls.append("fsync"))
    envs = [_prov(store, p, time.time()) for p in paths]
    with GroupWriter(store) as g:
        for p, e in zip(paths, envs, strict=True):
            g.add(p, "provenance", e)
            assert attestations.read(store, p, "provenance") is None  # nothing visible yet
        assert len(_temps(store)) == 10
        # each temp file named as ``write`` names its own: the GC knows a dead writer's
        assert all(attestations._TEMP.match(t.name) for t in _temps(store))
    assert calls == ["sync", *["rename"] * 10, "sync"]
    assert len(g.written) == 10 and not _temps(store)
    for p, e in zip(paths, envs, strict=True):
        assert attestations.read(store, p, "provenance") == e


def test_a_small_group_uses_fsyncs(many, monkeypatch) -> None:
    store, paths = many
    fsyncs: list[int] = []
    real = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real(fd))[1])
    monkeypatch.setattr(attestgroup, "sync_filesystem", lambda d: pytest.fail("syncfs for 2 files"))
    with GroupWriter(store) as g:
        for p in paths[:2]:
            g.add(p, "provenance", _prov(store, p, time.time()))
    assert len(fsyncs) == 2 + 2 + 1  # each file, each directory, attestations/


def test_checked_as_write_checks(many) -> None:
    store, paths = many
    g = GroupWriter(store)
    with pytest.raises(KilnError, match="does not name"):
        g.add(paths[0], "provenance", _prov(store, paths[1], time.time()))
    with pytest.raises(KilnError):
        g.add(paths[0], "../x", _prov(store, paths[0], time.time()))
    unsigned = Envelope(
        _prov(store, paths[0], time.time()).payload_type, _prov(store, paths[0], 1.0).payload, ()
    )
    with pytest.raises(KilnError, match="unsigned"):
        g.add(paths[0], "provenance", unsigned)
    assert len(g) == 0 and not _temps(store) and g.commit() == []


def test_a_failure_part_way_leaves_whole_files(many, monkeypatch) -> None:
    store, paths = many
    old = {p: _prov(store, p, 1000.0) for p in paths}
    for p, e in old.items():
        attestations.write(store, p, "provenance", e)
    new = {p: _prov(store, p, 2000.0) for p in paths}
    real, n = os.replace, [0]

    def replace(a: str, b: str) -> None:
        n[0] += 1
        if n[0] == 4:
            raise OSError(28, "No space left on device")
        real(a, b)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="No space"), GroupWriter(store) as g:
        for p in paths:
            g.add(p, "provenance", new[p])
    assert not _temps(store)
    got = [attestations.read(store, p, "provenance") for p in paths]
    assert got == [new[p] for p in paths[:3]] + [old[p] for p in paths[3:]]


def test_interrupted_groups_are_discarded_and_failed_blocks_committed(many) -> None:
    store, paths = many
    with pytest.raises(KeyboardInterrupt), GroupWriter(store) as g:
        g.add(paths[0], "provenance", _prov(store, paths[0], time.time()))
        raise KeyboardInterrupt
    assert not _temps(store) and attestations.read(store, paths[0], "provenance") is None
    with pytest.raises(RuntimeError), GroupWriter(store) as g:  # (what was added is whole and checked)
        g.add(paths[1], "provenance", _prov(store, paths[1], time.time()))
        raise RuntimeError("the transfer broke")
    assert attestations.read(store, paths[1], "provenance") is not None and not _temps(store)
