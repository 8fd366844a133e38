"""Outputs a build loop has placed and not yet committed (``Pending``), and input
closures that count them as valid (``closure``, ``closure_parts``). Split out of
``stagedbuild``, which re-exports them.

Invariant: a path is in ``Pending`` from its ``stagedbuild.place`` until its commit, or
until the build loop drops it (``buildcommit``); a closure walk treats such a path as
valid and walks its recorded references, and only that pending part of a closure can
stop being usable before the build that asked for it runs.
"""

from __future__ import annotations

import contextlib
import threading
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

from .errors import StoreError

if TYPE_CHECKING:
    from .stagedbuild import Placed

Queued = tuple[list["Placed"], contextlib.ExitStack, float | None, Callable[[], None] | None]


class Pending:
    """Outputs placed by this builder and not yet committed: ``path -> references``,
    shared by the builder's threads (the build threads add, the committer removes).
    Each derivation's outputs are queued with the seconds their archiving may take
    (what its ``--timeout`` left; None: no limit) and what the committer is to do
    before it commits them (``before_commit``, or None)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._refs: dict[str, tuple[str, ...]] = {}
        self._queue: list[Queued] = []

    def add(
        self,
        placed: list[Placed],
        locks: contextlib.ExitStack,
        budget: float | None = None,
        before_commit: Callable[[], None] | None = None,
    ) -> None:
        """Queue ``placed`` (one derivation's outputs) with the locks to release once
        they are committed, the seconds archiving them may take (``budget``) and
        ``before_commit``, for the committing thread to call before it archives and
        commits them (the build loop holds its signing hook's markers there)."""
        with self._lock:
            for p in placed:
                self._refs[p.path] = p.references
            self._queue.append((placed, locks, budget, before_commit))

    def take(self) -> list[Queued]:
        with self._lock:
            q, self._queue = self._queue, []
            return q

    def done(self, paths: Iterable[str]) -> None:
        with self._lock:
            for p in paths:
                self._refs.pop(p, None)

    def get(self, path: str) -> tuple[str, ...] | None:
        """The references of pending ``path``, or None if it is not pending."""
        with self._lock:
            return self._refs.get(path)

    def __bool__(self) -> bool:
        with self._lock:
            return bool(self._refs)


def closure(store: Any, paths: Iterable[str], pending: Pending | None) -> list[str]:
    """The closure of ``paths`` over references, counting pending outputs as valid
    (``store``: a ``LocalStore`` or the builder's serialising proxy of one). A valid path
    may reference a pending one too: an input registered long ago whose dependency this
    builder has just made again (``buildholes.with_holes``), which ``store.closure`` skips
    as not valid."""
    valid, pending_part = closure_parts(store, paths, pending)
    return valid + pending_part


def closure_parts(store: Any, paths: Iterable[str], pending: Pending | None) -> tuple[list[str], list[str]]:
    """``closure``'s paths in two parts: those the store's closure walk found valid (in
    its order), then the pending ones it did not (sorted). Only the second part can stop
    being usable before the build runs (a pending output dropped, ``Builder._drop``):
    ``sandboxrun.make_spec`` checks just that part again."""
    paths = sorted(set(map(str, paths)))
    if not pending:
        out, holes = store.closure_with_holes(paths)
        _no_holes(holes)
        return out, []
    seen: set[str] = set()
    valid: set[str] = set()
    stack = list(paths)
    while True:
        while stack:
            p = stack.pop()
            if p in seen:
                continue
            seen.add(p)
            refs = pending.get(p)
            if refs is None:
                valid.add(p)
            else:
                stack.extend(r for r in refs if r not in seen)
        # (the last walk is of the final ``valid``: its closure is the answer, not walked twice)
        out, holes = store.closure_with_holes(sorted(valid)) if valid else ([], {})
        missing = {}
        for h, by in holes.items():
            # pending, or committed since (then valid): walk it; else it is missing
            if h not in seen and (pending.get(h) is not None or store.is_valid(h)):
                stack.append(h)
            elif h not in seen:
                missing[h] = by
        if not stack:
            _no_holes(missing)
            break
    have = set(out)
    return out, sorted(p for p in seen if p not in have)


def _no_holes(holes: dict[str, tuple[str, ...]]) -> None:
    """A build's input closure must be whole (``buildholes.with_holes`` makes what is
    missing again before planning): a hole left is a ``StoreError`` naming it, never a
    sandbox quietly missing a dependency."""
    if holes:
        from .holes import holes_text

        raise StoreError(f"the input closure is incomplete: {holes_text(holes)} is not valid in the store")
