"""Writing many attestations into a local store with group sync (``GroupWriter``).

``attestations.write`` makes each file durable on its own: fsync of the temp file,
rename, fsync of the directory; for the thousands of attestations a copy or a
substitution fetches, those two fsyncs each were most of the time. A ``GroupWriter``
keeps the same guarantees (``attestations``' invariants) for a whole group:

1. ``add`` checks the envelope exactly as ``write`` does (``attestations.check_writable``:
   a valid kind, a subject naming the path, signed) and writes it to a temp file in the
   path's attestation directory, named as ``write`` names its own
   (``.<kind>-<pid>-XXXXXXXX.tmp``: the GC's ``stale_temp`` removes what a killed writer
   left). Nothing is fsynced yet and nothing is visible;
2. ``commit``: one barrier makes the bytes of every temp file durable; then each is
   renamed over its target, so a reader sees the old envelope or the new one, never a
   torn file (only durable bytes are ever renamed into place); then a second barrier
   makes the renames and any new directory durable before ``commit`` returns.

A crash before the renames leaves temp files only; during them, some targets new and
some old, each whole. The barrier is ``objects.sync_filesystem`` (``syncfs``: one journal
commit) for a group, and fsyncs of each file and directory for a group of at most
``FSYNC_MAX`` files, where a syncfs of a busy file system would cost more than they do.

Used as a context manager, the group is committed when the block ends normally or with
an ``Exception`` (what was added is whole and checked, as with ``write`` called one by
one before the failure), and discarded (temp files removed) on anything else (a
``KeyboardInterrupt``, a cancelled task).
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from pathlib import Path
from types import TracebackType
from typing import Any

from . import attestations
from .dsse import Envelope
from .nar_restore import fsync_dir
from .objects import sync_filesystem
from .paths import StorePath

#: groups of at most this many files are made durable by fsyncs, larger ones by syncfs
FSYNC_MAX = 4


class GroupWriter:
    """Stage attestations of a store (``add``), then make them all visible and durable
    at once (``commit``); see the module docstring."""

    def __init__(self, store: Any) -> None:
        self.root = Path(store.root)
        #: every file committed so far, in order
        self.written: list[Path] = []
        self._staged: list[tuple[str, Path]] = []  # (temp file, target)

    def __len__(self) -> int:
        return len(self._staged)

    def add(self, path: str | StorePath, kind: str, envelope: Envelope) -> Path:
        """Stage ``envelope`` as ``path``'s attestation of ``kind`` (checked as
        ``attestations.write`` checks it: ``StoreError``/``FormatError`` and nothing
        staged if it may not be stored). Returns the file it will be."""
        sp = path if isinstance(path, StorePath) else StorePath.parse(str(path))
        attestations.check_writable(sp, kind, envelope)
        d = self.root / "attestations" / sp.hash_part
        d.mkdir(parents=True, exist_ok=True)
        target = d / f"{kind}{attestations.SUFFIX}"
        fd, tmp = tempfile.mkstemp(prefix=f".{kind}-{os.getpid()}-", suffix=".tmp", dir=d)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(envelope.dumps().encode())
            os.chmod(tmp, 0o644)
        except BaseException:
            _unlink(tmp)
            raise
        self._staged.append((tmp, target))
        return target

    def commit(self) -> list[Path]:
        """Make everything staged visible and durable (module docstring); returns the
        files written, in the order they were added."""
        staged, self._staged = self._staged, []
        if not staged:
            return []
        done: list[Path] = []
        try:
            self._barrier(staged, files=True)
            for tmp, target in staged:
                os.replace(tmp, target)
                done.append(target)
                self.written.append(target)
        finally:
            for tmp, _ in staged[len(done) :]:
                _unlink(tmp)
        self._barrier(staged, files=False)
        return done

    def discard(self) -> None:
        """Drop everything staged (its temp files)."""
        staged, self._staged = self._staged, []
        for tmp, _ in staged:
            _unlink(tmp)

    def _barrier(self, staged: list[tuple[str, Path]], *, files: bool) -> None:
        if len(staged) > FSYNC_MAX:
            sync_filesystem(self.root / "attestations")
            return
        if files:
            for tmp, _ in staged:
                fd = os.open(tmp, os.O_RDONLY | os.O_CLOEXEC)
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
            return
        for d in dict.fromkeys(t.parent for _, t in staged):
            fsync_dir(d)
        fsync_dir(self.root / "attestations")  # (a directory made by ``add``)

    def __enter__(self) -> GroupWriter:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if exc is None or isinstance(exc, Exception):
            self.commit()
        else:
            self.discard()


def _unlink(p: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(p)
