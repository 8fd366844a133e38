"""Checking the store's object files that ``kiln push`` uploads, before they leave.

A store object (``objects/<aa>/<hex>.nar.zst``) is exactly the zstd file a registry
serves as ``nar/<nix32 FileHash>.nar.zst``; the store recorded its ``FileHash`` (sha256
of the file) and ``FileSize`` when it was written. Bytes changed on disk since (rot, an
edit, a truncation) must not be uploaded: a kiln registry refuses them naming only the
path ("the NAR sent does not hash to its FileHash"), and a server that does not hash
what it is sent (a plain WebDAV ``PUT`` target) stores them under the good name, where
the path's narinfo then points and every client then fails on them.

So push hashes each object file it is about to upload (``ObjectCheck.check``, on a
worker thread, just before the request that carries it starts: the file is then in the
page cache for the upload's own read) against the store's record, and a missing or
different one stops it with ``BadObject``, which names the store path, the object
file, the recorded and the found digest and size, and the remedy (``kiln store verify
--repair``: it rebuilds the object from the path's tree, or quarantines the path).

Invariants (with ``push.push_prepared``'s ordering): an object is checked before any
request carrying it or its narinfo starts, so neither the bad object nor its path's
narinfo leaves the machine, nor does the narinfo of a path referring to it (in upload
batches: the chunk holding its reference failed, so it is never sent, ``uploadplan.run``;
with one PUT per object: no narinfo goes until every NAR went). Paths published before
stay: they are complete and valid. Each object is hashed once per push (several paths
may share one).

Cost: one more read of each uploaded object, from the page cache as a rule. Hashing the
very bytes the upload streams needs a hook in ``Client.put_file`` / ``upload_batch``,
which read the file themselves.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from pathlib import Path

from kiln.store.errors import KilnError
from kiln.store.fileopen import open_regular
from kiln.store.hashes import Hash
from kiln.store.objects import CHUNK
from kiln.store.pathinfo import PathInfo

from .verify import nar_file_hash


class BadObject(KilnError):
    """A store object that push was about to upload is missing, unreadable as a file, or
    does not hash to what the store recorded for it."""

    def __init__(self, msg: str, path: str, obj: Path) -> None:
        super().__init__(msg)
        self.path = path
        self.obj = obj


def remedy(store_root: Path | None) -> str:
    """What to do about a bad object of the store at ``store_root`` (None: the default)."""
    where = f" --store {store_root}" if store_root is not None else ""
    return (
        f"this push published neither that path nor any path referring to it; run 'kiln store verify "
        f"--repair{where}' (it rebuilds the object from the path's tree, or quarantines the path), "
        "then push again"
    )


def check_object(info: PathInfo, obj: Path, store_root: Path | None = None) -> None:
    """Read ``obj`` (``info``'s object file) once, hashing it; ``BadObject`` unless it
    is a regular file of ``info.file_hash`` and ``info.file_size`` (when recorded)."""
    assert info.file_hash is not None  # (``push.prepare`` refuses a path without one)
    try:
        f = open_regular(obj, buffering=0)
    except FileNotFoundError:
        raise BadObject(
            f"the object of {info.path} is missing from the store: {obj}\n{remedy(store_root)}",
            info.path,
            obj,
        ) from None
    if f is None:
        raise BadObject(
            f"the object of {info.path} is not a regular file: {obj}\n{remedy(store_root)}", info.path, obj
        )
    sha = hashlib.sha256()
    size = 0
    with f:
        while chunk := f.read(CHUNK):
            sha.update(chunk)
            size += len(chunk)
    want_size = info.file_size
    if sha.digest() != info.file_hash.digest or (want_size is not None and size != want_size):
        shown = "size not recorded" if want_size is None else f"{want_size} bytes"
        raise BadObject(
            f"the object of {info.path} in the store is corrupt: {obj} does not hash to the FileHash "
            "the store recorded for it\n"
            f"  expected: {info.file_hash.to_nix32()} ({shown})\n"
            f"  found:    {Hash('sha256', sha.digest()).to_nix32()} ({size} bytes)\n"
            f"{remedy(store_root)}",
            info.path,
            obj,
        )


@dataclass(slots=True)
class ObjectCheck:
    """The objects one push has checked (by hex digest), so a shared one is read once."""

    store_root: Path | None = None
    done: set[str] = field(default_factory=set)

    async def check(self, items: list[tuple[PathInfo, Path]]) -> None:
        """``check_object`` for each of ``items`` not checked yet, in order, on a worker
        thread; raises the first ``BadObject``."""
        todo: dict[str, tuple[PathInfo, Path]] = {}
        for info, obj in items:
            h = nar_file_hash(info).hex
            if h not in self.done:
                todo.setdefault(h, (info, obj))
        if not todo:
            return

        def run() -> None:
            for info, obj in todo.values():
                check_object(info, obj, self.store_root)

        await asyncio.get_running_loop().run_in_executor(None, run)
        self.done.update(todo)
