"""Which quarantine records GC may take back (``gcside`` deletes them once old enough).

``kiln store verify --repair`` moves a path whose object and tree are both bad to
``quarantine/<base>-<time>[-<n>]/`` (``repair``): the bad tree, a copy of the bad object
and the path's attestations (evidence, for an operator to inspect) and ``info.txt``,
the only record left of the path's references and deriver once its row is gone
(``quarantine``). GC follows those as the path's edges (``gcedges``): while the path is
wanted and has no row, they keep alive the closure and ``.drv`` that building or
fetching it again takes. So a record *still matters* while, after this collection, its
path is live (a GC root, a live process's temp root or a live path leads to it) and has
no row; deleting it then would let the next GC delete what the way back needs.

A record *can no longer matter* once, after this collection, its path is either

- valid and live: built or substituted again, its row records its references and
  deriver now, and GC follows the row, never a record (``gcedges.Edges.__call__``); a
  later quarantine of it writes a record of its own; or
- not live: nothing keeps the path, so nothing follows its edges, and what only they
  kept goes in this very collection. Should a root name the path later, a rebuild is
  from its recipe; ``kiln store why`` then says it is not valid.

Such a record goes (``gcside``) once its directory is also ``keep_quarantine_days`` old
(its mtime: when the quarantine filled it; ``touch`` keeps one longer, but an mtime more
than a day ahead counts as now and is set to now, ``gcside._mtime``; 0: any age): that
is the operator's time to look at the bad bytes, counted from the quarantine, not from
when the record stopped mattering. Several records of one path are judged each by its
own age, and all stay while the path needs them (``quarantine.closure_edges`` unites
them).

Only what kiln makes is chosen: a real directory named ``<base>-<digits>`` or
``<base>-<digits>-<n>`` whose ``info.txt`` reads (``quarantine.read_records``) and names
``<store dir>/<base>``. A record that cannot be read (GC warns about it every run, and
cannot tell what it was a record of), one naming another path, and anything else in
``quarantine/`` are the operator's to inspect and delete: GC leaves them.
"""

from __future__ import annotations

import re
from collections.abc import Collection, Iterable
from dataclasses import dataclass
from pathlib import Path

from .quarantine import Record

#: the default of ``keep_quarantine_days`` (``kiln store gc --keep-quarantine``)
KEEP_QUARANTINE_DAYS = 30
#: what ``repair._new_quarantine_dir`` appends to a path's base: ``-<time>`` or ``-<time>-<n>``
_SUFFIX = re.compile(r"-[0-9]+(?:-[0-9]+)?\Z")


@dataclass(frozen=True, slots=True)
class StaleRecord:
    """A quarantine record that can no longer matter (see the module docstring)."""

    dir: Path
    #: the path it is a record of
    path: str
    #: True: that path is valid and live again; False: nothing keeps it
    valid_again: bool

    @property
    def why(self) -> str:
        return "valid again" if self.valid_again else "nothing keeps it"


def unneeded(
    records: Iterable[Record], store_dir: str, valid: Collection[str], live: Collection[str]
) -> list[StaleRecord]:
    """The ``records`` that can no longer matter (see the module docstring), by directory:
    ``valid`` are the paths with a row, ``live`` what this collection keeps (a valid path
    not in it loses its row now). Only the names and contents already read are looked
    at; ``gcside`` checks each directory's type and age."""
    records = list(records)
    needed = {r.path for r in records if r.path in live and r.path not in valid}
    out: list[StaleRecord] = []
    for r in records:
        if r.path in needed or not kilns_record(r, store_dir):
            continue
        out.append(StaleRecord(r.dir, r.path, r.path in valid and r.path in live))
    return sorted(out, key=lambda s: s.dir)


def kilns_record(r: Record, store_dir: str) -> bool:
    """Whether ``r`` is a record ``repair`` made in a store at ``store_dir``: its directory
    is named ``<base>-<time>[-<n>]`` after the path its ``info.txt`` names."""
    parent, _, base = r.path.rpartition("/")
    name = r.dir.name
    return (
        parent == store_dir
        and bool(base)
        and name.startswith(f"{base}-")
        and _SUFFIX.fullmatch(name, len(base)) is not None
    )
