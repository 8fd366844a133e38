"""Incomplete closures: a path whose references are not all valid in the store.

A hole arises when ``kiln store verify --repair`` quarantines a path others reference,
or a path is deleted by hand. Whatever runs, describes or ships such a path would lack
a dependency, so every consumer (``kiln run``, ``push``, ``sbom``, builds) refuses it
with ``IncompleteClosure`` or a message from ``holes_text``, naming each missing path
and what references it. (Finding the holes: ``LocalStore.closure_with_holes``.)
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from pathlib import Path

from .errors import StoreError


def holes_text(holes: Mapping[str, Iterable[str]]) -> str:
    """``<path> (referenced by <a>, <b>); ...`` for ``{missing path: referrers}``
    (``LocalStore.closure_with_holes``), as every refusal of a hole names them."""
    return "; ".join(f"{h} (referenced by {', '.join(by)})" for h, by in sorted(holes.items()))


class IncompleteClosure(StoreError):
    """``path``'s closure has holes (``LocalStore.closure_with_holes``): references that are
    not valid in the store, mapped to the closure members that reference them. What such a
    path runs or describes would lack a dependency, so it is refused rather than used.

    The message names every missing path and the way back: ``verify --repair`` only ever
    quarantines, so the path has to be built or substituted again."""

    def __init__(self, path: str, holes: Mapping[str, Iterable[str]], root: Path, doing: str) -> None:
        self.path = path
        self.holes = {h: tuple(by) for h, by in holes.items()}
        missing = holes_text(self.holes)
        super().__init__(
            f"cannot {doing} {path}: its closure is incomplete, {len(self.holes)} path(s) it needs are "
            f"not valid in the store at {root} (quarantined by 'kiln store verify --repair', or "
            f"deleted): {missing}. 'kiln store verify --repair' cannot bring them back: build each again "
            "('kiln build FILE ATTR' of the attribute that makes it, or 'kiln build DRV' of its deriver, "
            "recorded in quarantine/<its base name>-<time>/info.txt) or substitute it ('kiln copy --from URL "
            "--to store PATH')"
        )
