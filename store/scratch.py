"""``Scratch``: the temp names one registration writes under the store's ``tmp/``
(see ``registration``: its tree and its object, then renamed into place), and ``writing``,
which hands them out under the shared GC lock."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

from .errors import StoreError
from .locks import FileLock
from .sigshield import finish
from .trees import remove_tree


class Scratch:
    """A writer's temp names: ``scratch / "object"`` is ``<scratch dir>/<rand>.object``.
    Plain names in the store object's long-lived scratch directory rather than a temp
    directory per registration: that would cost a mkdir and an rmdir (two inode
    operations) each time. GC treats every ``<pid>-…`` entry of ``tmp/`` as a writer's
    leftover, so these are cleaned up after a crash too."""

    __slots__ = ("base", "used")

    def __init__(self, base: Path) -> None:
        self.base = base
        self.used: set[Path] = set()

    def __truediv__(self, what: str) -> Path:
        p = self.base.with_name(f"{self.base.name}.{what}")
        self.used.add(p)
        return p

    def remove(self) -> None:
        """Remove every name used; one that cannot be removed does not keep the others:
        all are tried, then the first failure is raised (GC removes what is left)."""
        first: OSError | StoreError | None = None
        for p in sorted(self.used):
            try:
                remove_tree(p)
            except (OSError, StoreError) as e:
                first = first or e
        if first is not None:
            raise first


@contextlib.contextmanager
def writing(gc_lock_path: Path, scratch_dir: Path) -> Iterator[Scratch]:
    """Shared GC lock + private temp names ``tmp/<pid>-<rand>/<rand>.<what>`` (in the store
    object's ``scratch_dir``), removed on exit, to the end even if a signal comes meanwhile
    (``sigshield.finish``: the signal's exception is raised after the removal)."""
    with FileLock(gc_lock_path, shared=True):
        # GC (which excludes us now) deletes writers' scratch dirs: recreate if needed
        with contextlib.suppress(FileExistsError):
            os.mkdir(scratch_dir, 0o700)
        scratch = Scratch(scratch_dir / os.urandom(6).hex())
        try:
            yield scratch
        except BaseException:  # (a failure to remove must not replace it: GC removes the rest)
            with contextlib.suppress(OSError, StoreError):
                finish(scratch.remove)
            raise
        finish(scratch.remove)
