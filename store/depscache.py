"""What the provenance of a build looks up about its dependencies, kept across the builds
of one command (``attestations.build_dependencies``, the build loop's signing hook).

Theory of operation
-------------------
Every build's provenance lists the closure of its inputs with each path's NAR hash, and
the URL of a fixed-output path whose deriver genuinely defines it (``derivers``). Looked
up afresh per build, that is O(closure) database reads per build, and checking a
deriver hashes its whole input closure: a chain of N derivations cost O(N²) hashes.
``DependencyCache`` answers each question once per store object:

- ``closure(paths)``: ``store.closure(paths)``, from each start path's own closure,
  memoized. The same list in the same order: ``store.closure`` walks the starts in
  sorted order, depth first, emitting a path after its references and each path once;
  a start's walk skips only paths an earlier start emitted, and those come with their
  whole closure, so it emits the remaining paths of the start's own closure in that
  closure's order.
- ``query(path)``: ``store.query(path)``, memoized (only the NAR hash and deriver are
  read from it, and a valid path's row keeps both while it is valid);
- ``derivers``: one ``derivers.Derivers`` (its hashes modulo memoized).

Invariant: the answers stay true while the paths stay valid. The build loop keeps them
so: ``Builder.realise`` temp-roots every derivation of its graph and every output, and a
GC keeps a temp root's closure. A cache is for one command and one store object.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from .derivers import Derivers


class DependencyCache:
    """See the module docstring. ``get_drv``: as ``Derivers``' ``parse_drv``."""

    def __init__(self, store: Any, get_drv: Callable[[str], Any] | None = None) -> None:
        self.store = store
        self.derivers = Derivers(store, get_drv)
        self._infos: dict[str, Any] = {}
        self._closures: dict[str, list[str]] = {}

    def query(self, path: str) -> Any:
        """``store.query(path)``; an answer of None (not valid) is not kept."""
        info = self._infos.get(path)
        if info is None:
            info = self.store.query(path)
            if info is not None:
                self._infos[path] = info
        return info

    def closure(self, paths: Iterable[str]) -> list[str]:
        """``store.closure(paths)`` (raises as it does for a start path not valid)."""
        out: list[str] = []
        seen: set[str] = set()
        for start in sorted(set(map(str, paths))):
            if start in seen:
                continue
            own = self._closures.get(start)
            if own is None:
                own = self._closures[start] = self.store.closure([start])
            for p in own:
                if p not in seen:
                    seen.add(p)
                    out.append(p)
        return out
