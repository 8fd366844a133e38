"""``LocalStore.import_objects``: batched import with group commit (store.importbatch)."""

from __future__ import annotations

import io
import os

import pytest
from storekit import make_tree, tmp_leftovers

from kiln.store import importbatch
from kiln.store.errors import HashMismatch, StoreError
from kiln.store.localstore import LocalStore
from kiln.store.pathinfo import PathInfo
from kiln.store.trees import metadata_problems


def _closure(store: LocalStore, tmp_path, n: int = 5) -> list[PathInfo]:
    """A source tree plus ``n`` text paths each referencing the previous one (and the tree)."""
    tree = store.add_path(
        make_tree(tmp_path / "t", {"a": "hello\n", "bin/x": "x:#!/bin/sh\n", "l": "->a", "d/e/f": b"\0" * 9})
    )
    out = [tree]
    for i in range(n):
        refs = [tree.path] + ([out[-1].path] if i else [])
        out.append(store.add_text(f"p{i}", f"text {i} {refs}\n".encode(), refs))
    return out


def _items(store: LocalStore, infos: list[PathInfo]):
    return [(i, io.BytesIO(store.object_path(i.path).read_bytes())) for i in infos]


def test_batch_imports_a_closure_identically(store, tmp_path):
    infos = _closure(store, tmp_path)
    other = LocalStore.open(tmp_path / "other")
    try:
        got = other.import_objects(_items(store, infos))
        assert [g.path for g in got] == [i.path for i in infos]
        for a, b in zip(infos, got, strict=True):
            assert (b.nar_hash, b.file_hash, b.references) == (a.nar_hash, a.file_hash, a.references)
            assert other.query(a.path) is not None
            assert other.object_path(a.path).read_bytes() == store.object_path(a.path).read_bytes()
            assert metadata_problems(other.real_path(a.path)) == []
        assert os.readlink(other.real_path(infos[0].path) / "l") == "a"
        assert os.stat(other.real_path(infos[0].path) / "bin/x").st_mode & 0o777 == 0o555
        rep = other.verify()
        assert rep.ok and rep.stray_objects == ()
        assert tmp_leftovers(other) == []
        # again: everything valid already, same infos back, nothing written
        again = other.import_objects(_items(store, infos))
        assert [a.registration_time for a in again] == [g.registration_time for g in got]
    finally:
        other.close()
    assert os.listdir(tmp_path / "other" / "tmp") == []  # close() removes the scratch dir


def test_batch_commits_in_several_groups(store, tmp_path, monkeypatch):
    infos = _closure(store, tmp_path, n=7)
    monkeypatch.setattr(importbatch, "MAX_BATCH", 3)
    other = LocalStore.open(tmp_path / "other")
    try:
        got = other.import_objects(_items(store, infos) + _items(store, infos[:2]))  # duplicates too
        assert [g.path for g in got] == [i.path for i in infos] + [i.path for i in infos[:2]]
        assert other.verify().ok and len(other.all_paths()) == len(infos)
    finally:
        other.close()


def test_batch_mismatch_keeps_what_verified_before(store, tmp_path):
    infos = _closure(store, tmp_path)
    items = _items(store, infos)
    bad = bytearray(items[3][1].getvalue())
    bad[len(bad) // 2] ^= 0xFF
    items[3] = (infos[3], io.BytesIO(bytes(bad)))
    other = LocalStore.open(tmp_path / "other")
    try:
        with pytest.raises(HashMismatch):
            other.import_objects(items)
        assert other.all_paths() == sorted(i.path for i in infos[:3])
        assert not other.real_path(infos[3].path).exists()
        assert tmp_leftovers(other) == []
        rep = other.verify()
        assert rep.ok and rep.stray_objects == ()
    finally:
        other.close()


def test_batch_refuses_missing_references(store, tmp_path):
    infos = _closure(store, tmp_path)
    other = LocalStore.open(tmp_path / "other")
    try:
        with pytest.raises(StoreError, match="references are not valid"):
            other.import_objects(_items(store, infos[1:]))  # the tree they all reference is missing
        assert other.all_paths() == []
    finally:
        other.close()


def test_batch_replaces_leftovers_and_keeps_good_objects(store, tmp_path):
    """A torn object and an unregistered tree left by a crash are replaced; a correct
    object already there (shared with another path) is kept as it is."""
    infos = _closure(store, tmp_path, n=2)
    other = LocalStore.open(tmp_path / "other")
    try:
        torn = other.objects / store.object_path(infos[1].path).relative_to(store.objects)
        torn.parent.mkdir(parents=True, exist_ok=True)
        torn.write_bytes(b"torn")
        good = other.objects / store.object_path(infos[2].path).relative_to(store.objects)
        good.parent.mkdir(parents=True, exist_ok=True)
        good.write_bytes(store.object_path(infos[2].path).read_bytes())
        ino = good.stat().st_ino
        stale = other.real_path(infos[0].path)
        make_tree(stale, {"junk": "left by a crash"})
        other.import_objects(_items(store, infos))
        assert good.stat().st_ino == ino
        rep = other.verify()
        assert rep.ok and rep.stray_objects == ()
        assert not (stale / "junk").exists()
    finally:
        other.close()


def test_batch_trees_are_canonical_under_a_strict_umask(store, tmp_path):
    infos = _closure(store, tmp_path, n=1)
    other = LocalStore.open(tmp_path / "other")
    old = os.umask(0o077)
    try:
        other.import_objects(_items(store, infos))
    finally:
        os.umask(old)
        other.close()
    other = LocalStore.open(tmp_path / "other")
    try:
        assert all(metadata_problems(other.real_path(i.path)) == [] for i in infos)
        assert other.verify().ok
    finally:
        other.close()


def test_store_tmp_is_an_orlov_top_directory(store):
    """``tmp/`` carries the ``T`` attribute where the file system supports it (a hint to
    ext4's allocator; elsewhere ``mark_topdir`` reports False and changes nothing)."""
    import array
    import fcntl

    from kiln.store.trees import _FS_IOC_GETFLAGS, _FS_TOPDIR_FL, mark_topdir

    if not mark_topdir(store.tmp):
        pytest.skip("file system without FS_TOPDIR_FL")
    fd = os.open(store.tmp, os.O_RDONLY | os.O_DIRECTORY)
    try:
        buf = array.array("l", [0])
        fcntl.ioctl(fd, _FS_IOC_GETFLAGS, buf, True)
    finally:
        os.close(fd)
    assert buf[0] & _FS_TOPDIR_FL


@pytest.mark.parametrize("how", ["nar-size", "nar-hash", "bomb", "not-zstd"])
def test_small_objects_are_checked_before_anything_is_written(store, tmp_path, how):
    """Small objects are staged from memory (``stage_bytes``): the file digest, the zstd
    stream and the NAR digest and size are all checked first, and an object that
    inflates past the announced NAR size is cut off there."""
    import dataclasses

    import zstandard

    from kiln.store.hashes import Hash

    (info,) = _closure(store, tmp_path, n=0)
    data = store.object_path(info.path).read_bytes()
    if how == "nar-size":
        info = dataclasses.replace(info, nar_size=info.nar_size - 1)
    elif how == "nar-hash":
        info = dataclasses.replace(info, nar_hash=Hash.sha256_of(b"other"))
    else:
        data = zstandard.ZstdCompressor().compress(b"\0" * (64 << 20)) if how == "bomb" else b"x" * 100
        info = dataclasses.replace(info, file_hash=Hash.sha256_of(data), file_size=len(data))
    other = LocalStore.open(tmp_path / "other")
    try:
        with pytest.raises(HashMismatch):
            other.import_objects([(info, io.BytesIO(data))])
        assert other.all_paths() == [] and not other.real_path(info.path).exists()
        assert tmp_leftovers(other) == []
    finally:
        other.close()
