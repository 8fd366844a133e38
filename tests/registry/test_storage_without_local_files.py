"""What the registry code does on a storage whose objects are no local files (an object
store, ``Storage.local_path`` None): steps it cannot do safely there are refused or left
undone, never run half-guarded. A ``FileStorage`` that hides its paths stands in for such
a backend (none is shipped yet: docs/registry.md, "Storage backends"); the directory
behind it is real, so what was kept or deleted is read from the disk.

- ``dir_lock`` refuses (it ran the step with no lock at all: two mirror syncs could roll
  the mirror back);
- ``unnamedobjects.sweep`` deletes nothing, counting every unnamed object as young (their
  ages were read as 0, "older than an hour", so an upload in flight, its object written
  and its narinfo not yet, was deleted)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from kiln.registry import layout
from kiln.registry.dirlock import INDEX_LOCK, dir_lock
from kiln.registry.storage import FileStorage, StorageError
from kiln.registry.unnamedobjects import YOUNG, sweep
from kiln.store.hashes import Hash


class NoLocalFiles(FileStorage):
    """A real directory storage that does not say where its files are."""

    def local_path(self, key: str) -> Path | None:
        return None


def _unnamed_old_object(root: Path) -> Path:
    """An object file no narinfo names, written two hours ago."""
    blob = root / layout.blob_key(Hash.sha256_of(b"an object whose narinfo never came"))
    blob.parent.mkdir(parents=True, exist_ok=True)
    blob.write_bytes(b"an object whose narinfo never came")
    then = time.time() - 2 * YOUNG
    os.utime(blob, (then, then))
    return blob


def test_a_lock_is_refused_not_skipped(tmp_path: Path) -> None:
    storage = NoLocalFiles(tmp_path / "reg")
    ran = False
    with (
        pytest.raises(StorageError, match=r"cannot be locked for \.kiln/index\.lock"),
        dir_lock(storage, INDEX_LOCK),
    ):
        ran = True
    assert not ran
    with dir_lock(FileStorage(tmp_path / "reg"), INDEX_LOCK):  # (a local directory is locked)
        ran = True
    assert ran


def test_objects_of_unknown_age_are_kept(tmp_path: Path) -> None:
    root = tmp_path / "reg"
    blob = _unnamed_old_object(root)
    swept = sweep(NoLocalFiles(root))
    assert swept.deleted == () and swept.young == 1 and blob.exists()
    # the same file, its age known, goes
    swept = sweep(FileStorage(root))
    assert swept.deleted == (str(blob.relative_to(root)),) and not blob.exists()
