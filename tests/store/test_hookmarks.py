"""Signing-hook markers (``store/hookmarks.py``) around imports and GC. A free marker is
a builder's that died after taking it; once the path arrives by import instead (a
substitute, ``kiln copy``), the marker must go, or the next build would sign that import
as its own output; GC drops free markers of paths that are not valid. A marker a live
process holds is never touched."""

from __future__ import annotations

from pathlib import Path

from storekit import make_tree

from kiln.store.hashes import Hash
from kiln.store.localstore import LocalStore
from kiln.store.locks import FileLock
from kiln.store.objects import object_rel_path
from kiln.store.pathinfo import PathInfo
from kiln.store.paths import StorePath, make_output_path


def _marker(store: LocalStore, path: str) -> Path:
    return store.root / "locks" / f"{StorePath.parse(path).hash_part}.hook"


def _built(src: LocalStore, tmp: Path, name: str) -> PathInfo:
    path = str(make_output_path(Hash.sha256_of(name.encode()), "out", name, src.store_dir))
    return src.register_built(path, make_tree(tmp / "build" / name, {"f": f"{name}\n"}), [], None)


def _object(src: LocalStore, info: PathInfo):  # noqa: ANN202 - an open binary file
    assert info.file_hash is not None
    return open(src.objects / object_rel_path(info.file_hash), "rb")


def test_an_import_drops_a_free_marker_and_keeps_a_held_one(tmp_path):
    src, dst = LocalStore.open(tmp_path / "src"), LocalStore.open(tmp_path / "dst")
    a, b, c = (_built(src, tmp_path, n) for n in ("a", "b", "c"))
    (dst.root / "locks").mkdir(exist_ok=True)
    for info in (a, b, c):
        _marker(dst, info.path).touch()  # each builder died before its commit
    with _object(src, a) as f:
        dst.import_object(a, f)  # one path
    assert dst.is_valid(a.path) and not _marker(dst, a.path).exists()
    with FileLock(_marker(dst, b.path)), _object(src, b) as fb, _object(src, c) as fc:
        dst.import_objects([(b, fb), (c, fc)])  # a batch; b's builder is alive
        assert _marker(dst, b.path).exists()
    assert dst.is_valid(b.path) and dst.is_valid(c.path) and not _marker(dst, c.path).exists()


def test_gc_drops_free_markers_of_paths_that_are_not_valid(store, tmp_path):
    kept = store.add_path(make_tree(tmp_path / "kept", {"f": "k"}))
    store.add_root("kept", kept.path)
    never = "/kiln/store/" + "1" * 32 + "-never"
    building = "/kiln/store/" + "2" * 32 + "-building"
    for p in (kept.path, never, building):
        _marker(store, p).touch()
    with FileLock(_marker(store, building)):
        store.gc(dry_run=True)
        assert _marker(store, never).exists()  # a dry run deletes nothing
        store.gc()
        assert _marker(store, building).exists()  # a live builder's, before its commit
    assert not _marker(store, never).exists()  # its builder died before the commit
    assert _marker(store, kept.path).exists()  # a valid path's hook is still to run
