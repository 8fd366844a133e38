"""The inputs a rebuild used (a VSA's ``kiln_rebuild.inputs``) against those the path's
provenance records for the original build (``resolvedDependencies``).

Theory of operation
-------------------
An input-addressed store path names a recipe, not bytes: two machines can hold different
bytes under one input path (an input that does not reproduce, built on each, or a
tampered copy substituted from somewhere). A rebuilder that reproduces an output has
shown that *its* copies of the inputs give these bytes. Its VSA records which copies
(``intoto.vsa``'s ``inputs``: each input path's base name with its NAR sha256, the
``.drv`` with the sha256 of its text), in the shape the provenance uses for the build, so
the two lists can be compared entry by entry (``compare``). Same names, same digests:
the rebuild confirmed the build from the very inputs the provenance names. Any
difference: the output came out the same from other bytes somewhere in the closure,
which ``kiln verify`` says, and which ``[require] reproduced_same_inputs`` refuses to
count.

Invariants:

- Both lists come from signed statements but are outside input all the same: a list
  that is not a list of objects each with a name (or uri) and a digest, an entry whose
  sha256 is not 64 hex digits, or a list naming one thing twice, is unreadable
  (``digests`` returns None), never half read. An entry with digests but no sha256 is
  no store input (the recipe repository's git commit, which provenance records among
  its dependencies) and is left out of the comparison.
- Pure: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .hashes import Hash

_HEX64 = re.compile(r"[0-9a-f]{64}\Z")


def digests(entries: Any) -> dict[str, str] | None:
    """``{name: sha256 hex}`` of a ``resolvedDependencies`` or ``kiln_rebuild.inputs``
    list (a descriptor's ``name``, else its ``uri``); None if ``entries`` is not such a
    list (module doc)."""
    if not isinstance(entries, list):
        return None
    out: dict[str, str] = {}
    for e in entries:
        if not isinstance(e, dict):
            return None
        name = e.get("name") or e.get("uri")
        digest = e.get("digest")
        if not isinstance(digest, dict) or not digest:
            return None
        if "sha256" not in digest:
            continue  # (no store input: the recipe repository's ``gitCommit``, say)
        sha = digest["sha256"]
        if not isinstance(name, str) or not isinstance(sha, str) or not _HEX64.match(sha) or name in out:
            return None
        out[name] = sha
    return out


def _shown(hex_digest: str) -> str:
    return Hash("sha256", bytes.fromhex(hex_digest)).to_nix32()


@dataclass(frozen=True, slots=True)
class InputsDiff:
    """How a rebuild's inputs differ from the provenance's (all empty: they agree).
    ``changed``: ``(name, provenance sha256 hex, rebuild sha256 hex)``; ``missing``: in
    the provenance only; ``extra``: in the rebuild only."""

    total: int
    changed: tuple[tuple[str, str, str], ...] = ()
    missing: tuple[str, ...] = ()
    extra: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.changed or self.missing or self.extra)

    def describe(self, limit: int = 2) -> str:
        """One line: how many differences, and the first ``limit`` of each kind (with
        both digests for a changed one)."""
        n = len(self.changed) + len(self.missing) + len(self.extra)
        parts = [
            f"{name} (provenance {_shown(a)}, rebuild {_shown(b)})" for name, a, b in self.changed[:limit]
        ]
        parts += [f"{name} (not in the rebuild)" for name in self.missing[:limit]]
        parts += [f"{name} (not in the provenance)" for name in self.extra[:limit]]
        shown = len(parts)
        more = f", and {n - shown} more" if n > shown else ""
        return f"{n} difference(s) from the provenance's {self.total} input(s): {', '.join(parts)}{more}"


def compare(provenance: Mapping[str, str], rebuild: Mapping[str, str]) -> InputsDiff:
    """Entry by entry, in name order (module doc)."""
    return InputsDiff(
        total=len(provenance),
        changed=tuple(
            (n, provenance[n], rebuild[n])
            for n in sorted(provenance.keys() & rebuild.keys())
            if provenance[n] != rebuild[n]
        ),
        missing=tuple(sorted(provenance.keys() - rebuild.keys())),
        extra=tuple(sorted(rebuild.keys() - provenance.keys())),
    )
