"""What keeps what alive: the edges GC follows from its roots, one definition for the
collection (``gc``) and for ``kiln store why`` (``keptby``), so the two never disagree.

From a valid path: its references, and the ``.drv`` recorded as its deriver (Nix's
``keep-derivations``: ``kiln build --check``, rebuilders and ``kiln log`` need it).
From a ``.drv``, when the store keeps outputs (config.json ``keep_outputs``, default
true; Nix's ``keep-outputs``): the valid paths whose recorded deriver it is, so a rooted
result keeps what building it again takes — the toolchain, the fetched sources and the
``.deb`` files — and a one-line recipe change does not fetch and unpack everything
again after a GC (nor fail, once a mirror no longer has a locked package). From a path
``kiln store verify --repair`` quarantined (no row): the references and deriver it
recorded (``quarantine``): only a record's path has them, and while it has no row (a
record of a path valid again adds nothing; GC deletes it in time: ``gcquarantine``).

An unsigned deriver (a path imported from a registry) can only keep more alive, never
less: edges add liveness, they never remove it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from . import db
from .quarantine import Record, closure_edges, read_records

if TYPE_CHECKING:
    from .localstore import LocalStore


@dataclass(frozen=True, slots=True)
class Edges:
    """The store's liveness graph at one moment (read under the GC lock)."""

    #: valid path -> its references
    refs: dict[str, list[str]]
    #: valid path -> its recorded deriver
    derivers: dict[str, str]
    #: quarantined path -> what it recorded (references and deriver)
    quarantined: dict[str, frozenset[str]]
    #: quarantine records that could not be read (each ``<dir>: why``)
    unread: tuple[str, ...]
    #: ``.drv`` -> the valid paths it is the recorded deriver of (empty unless keeping outputs)
    outputs_of: dict[str, list[str]]
    #: the readable quarantine records ``quarantined`` was made of (GC deletes those that
    #: no longer matter: ``gcquarantine``)
    records: tuple[Record, ...] = ()

    @property
    def known(self) -> set[str]:
        """Every path an edge may lead to: the valid and the quarantined ones."""
        return self.refs.keys() | self.quarantined.keys()

    def __call__(self, p: str) -> list[str]:
        """The paths ``p`` keeps alive directly."""
        if p not in self.refs:
            return sorted(self.quarantined.get(p, ()))
        out = list(self.refs[p])
        if (d := self.derivers.get(p)) is not None:
            out.append(d)
        out.extend(self.outputs_of.get(p, ()))
        return out


def gc_edges(store: LocalStore, keep_outputs: bool | None = None) -> Edges:
    """The edges of ``store`` now; ``keep_outputs`` None: the store's own setting."""
    keep = store.keep_outputs if keep_outputs is None else keep_outputs
    refs = db.references_map(store.conn)
    derivers = db.derivers_map(store.conn)
    records, unread = read_records(store.root)
    outputs_of: dict[str, list[str]] = {}
    if keep:
        for out, drv in derivers.items():
            outputs_of.setdefault(drv, []).append(out)
    return Edges(refs, derivers, closure_edges(records), tuple(unread), outputs_of, tuple(records))
