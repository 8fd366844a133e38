"""Only a regular file is a signing-hook marker (``store/hookmarks.py``): a directory, a
FIFO or a symbolic link at a marker's name in ``locks/`` (never made by kiln) is not one.
A build that met one took it for a marker left behind and failed ("Is a directory"), and
an import of its path failed removing it."""

from __future__ import annotations

import os
from pathlib import Path

from storekit import make_tree

from kiln.store import hookmarks
from kiln.store.hashes import Hash
from kiln.store.localstore import LocalStore
from kiln.store.objects import object_rel_path
from kiln.store.paths import StorePath, make_output_path


def _marker(store: LocalStore, path: str) -> Path:
    (store.root / "locks").mkdir(exist_ok=True)
    return store.root / "locks" / f"{StorePath.parse(path).hash_part}.hook"


def test_what_is_not_a_regular_file_is_no_marker(store, tmp_path):
    paths = ["/kiln/store/" + c * 32 + "-odd" for c in "123"]
    _marker(store, paths[0]).mkdir()
    os.mkfifo(_marker(store, paths[1]))
    (tmp_path / "elsewhere").write_text("")
    _marker(store, paths[2]).symlink_to(tmp_path / "elsewhere")
    assert not hookmarks.any_left(store, paths)
    assert hookmarks.left_behind(store, paths) == []
    real = "/kiln/store/" + "4" * 32 + "-real"
    _marker(store, real).touch()  # beside them, a real one is still found
    assert hookmarks.any_left(store, [*paths, real])
    marks = hookmarks.left_behind(store, [*paths, real])
    assert [m for m, _ in marks] == [_marker(store, real)]
    hookmarks.release(marks, done=True)
    assert not _marker(store, real).exists() and _marker(store, paths[0]).is_dir()


def test_an_import_of_a_path_with_a_directory_at_its_markers_name(store, tmp_path):
    src = LocalStore.open(tmp_path / "src")
    path = str(make_output_path(Hash.sha256_of(b"x"), "out", "x", src.store_dir))
    info = src.register_built(path, make_tree(tmp_path / "build", {"f": "x\n"}), [], None)
    _marker(store, path).mkdir()
    assert info.file_hash is not None
    with open(src.objects / object_rel_path(info.file_hash), "rb") as f:
        store.import_object(info, f)
    assert store.is_valid(path)
    src.close()
