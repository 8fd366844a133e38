"""Which roots keep a store path alive, and through which chain of references
(``kiln store why PATH``; Nix's ``nix-store -q --roots`` with ``nix why-depends``).

The roots are GC's: every ``gcroots/`` entry (``roots.each_root``) and the temp roots of
live processes (``temproots/<pid>`` files whose owner holds its lock), and the edges are
GC's too (``gcedges``: references, recorded derivers, the outputs of live ``.drv``
files when the store keeps outputs, quarantine records). So a path no
root reaches is exactly one the next collection deletes (unless its tree is another
user's, which GC keeps and warns about).

Each root's closure is walked by ``closurequery.walk`` (depth first, sorted); the first
edge found to each path is remembered, so the chain given for a root is the first one
found from it, not necessarily the shortest. A walk stops expanding once it has found
the path. Everything is read under the shared GC lock: no collection runs meanwhile, and
the answer is one state of the store (registrations may add paths and roots meanwhile,
but remove none).
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from .closurequery import walk
from .errors import StoreError
from .gcedges import gc_edges
from .locks import FileLock
from .lockwait import describe_process
from .roots import each_root
from .temprootscan import temp_root_files

if TYPE_CHECKING:
    from .localstore import LocalStore


@dataclass(frozen=True, slots=True)
class Keeper:
    """A root that keeps the path alive: ``root`` says which (``root NAME``, ``temp root of
    process PID (...)``), ``chain`` the store paths from the rooted one to the path."""

    root: str
    chain: tuple[str, ...]


def kept_by(store: LocalStore, path: str) -> list[Keeper]:
    """The roots that keep ``path`` alive, each with its chain (see the module docstring):
    the ``gcroots/`` ones by name, then live processes' by pid; empty when none does (the
    next GC deletes it). Raises ``StoreError`` if ``path`` is neither valid nor
    quarantined. This process's own temp roots do not count."""
    with FileLock(store.gc_lock_path, shared=True):
        edges = gc_edges(store)  # (what GC follows, keep-outputs included)
        known = edges.known
        if path not in known:
            raise StoreError(f"path {path} is not valid in the store at {store.root}")
        out = [
            Keeper(f"root {r.name}", chain)
            for r in each_root(store)
            if r.path is not None and (chain := _chain([r.path], path, edges, known)) is not None
        ]
        me = str(os.getpid())
        temp: list[tuple[int, list[str]]] = []
        for entry, lines in temp_root_files(store.root / "temproots", fcntl.LOCK_SH):
            if lines is not None and entry.name != me and entry.name.isdigit():
                temp.append((int(entry.name), [line.decode("utf-8", "replace") for line in lines]))
        for pid, starts in sorted(temp):
            if (chain := _chain(starts, path, edges, known)) is not None:
                out.append(Keeper(f"temp root of {describe_process(pid)}", chain))
    return out


def _chain(
    starts: Iterable[str], target: str, edges: Callable[[str], list[str]], known: set[str]
) -> tuple[str, ...] | None:
    """The first chain of ``edges`` found from one of ``starts`` to ``target``, None if
    none reaches it."""
    parent: dict[str, str | None] = {s: None for s in starts if s in known}

    def nexts(p: str) -> list[str]:
        if target in parent:
            return []  # found: the walk need go no further
        out = edges(p)
        for r in out:
            if r in known:
                parent.setdefault(r, p)
        return out

    walk(list(parent), nexts, known.__contains__)
    if target not in parent:
        return None
    chain = [target]
    while (up := parent[chain[-1]]) is not None:
        chain.append(up)
    return tuple(reversed(chain))
