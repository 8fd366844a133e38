"""``Scratch``: the temp names one registration writes under the store's ``tmp/``
(see ``registration``: its tree and its object, then renamed into place)."""

from __future__ import annotations

from pathlib import Path

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
        for p in self.used:
            remove_tree(p)
