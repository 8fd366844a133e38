"""``kiln registry verify --delete-bad``'s deletions: only what was judged (see
``fsck``'s module docstring). A file is identified by its stamp (device, inode, size,
mtime, ctime) taken when it was read; the deletions run holding ``MIRROR_LOCK`` and
``NARINFO_LOCK``, and every file is compared before any is unlinked (unlinking one name
of a hard-linked object changes the ctime the other name is compared by)."""

from __future__ import annotations

import os
import sys
from collections.abc import Callable

from . import objstamp
from .backends import DirSource
from .dirlock import MIRROR_LOCK, NARINFO_LOCK, dir_lock

#: what identifies the file read (``objstamp``: device, inode, size, mtime, ctime); None
#: where the storage gives no file descriptor
Stamp = objstamp.Stamp | None


def waiting(src: DirSource) -> Callable[[], None]:
    def say() -> None:
        print(f"waiting for a kiln mirror sync into {src.storage.url} to finish ...", file=sys.stderr)

    return say


def delete_judged(
    src: DirSource,
    narinfos: list[str],
    judged: dict[str, bytes | None],
    blamed: dict[str, list[tuple[str, Stamp]]],
    blobs: list[tuple[str, Stamp]],
) -> tuple[list[str], list[str]]:
    """Delete the bad ``narinfos`` (their bytes as ``judged``; ``blamed``: the objects whose
    bytes were their problem) and ``blobs`` that are still what was judged. Returns the
    keys deleted and the keys spared (replaced while being checked)."""

    def still(key: str, st: Stamp) -> bool:
        path = src.storage.local_path(key)
        if path is None or st is None:
            return True  # (no file identity to compare: as judged)
        try:
            return objstamp.stamp_of(os.stat(path)) == st
        except FileNotFoundError:
            return True  # gone already: deleting it is a no-op
        except OSError:
            return False

    removed: list[str] = []
    spared: list[str] = []
    with dir_lock(src.storage, MIRROR_LOCK, on_wait=waiting(src)), dir_lock(src.storage, NARINFO_LOCK):
        replaced = {k for k, st in [*blobs, *(x for v in blamed.values() for x in v)] if not still(k, st)}
        # the narinfo first: from then on clients get a miss, never a corrupt blob
        for key in narinfos:
            if src.storage.read(key) != judged.get(key) or any(k in replaced for k, _ in blamed.get(key, [])):
                spared.append(key)
                continue
            src.storage.delete(key)
            removed.append(key)
        for b, _ in blobs:
            if b in replaced:
                spared.append(b)
                continue
            src.storage.delete(b)
            removed.append(b)
    return removed, spared
