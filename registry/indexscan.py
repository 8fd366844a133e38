"""The path table of a new index, from the previous one plus what changed (``publish``).

``publish.collect_paths`` reads every narinfo and every attestation listing: at 20,000
paths that is most of a push's time, and publication is serialised. ``collect`` reads
only what changed since the last publish, told by file stamps (``dirstamps``): the
previous index's entry is reused for a narinfo whose stamp (and whose listing's stamp)
is the one remembered when that entry was computed. The result is the table
``collect_paths`` would build, entry for entry (``tests/registry/test_index_incremental.py``
compares them after every kind of change), because:

- the stamps are remembered in ``.kiln/index-stamps.json`` together with the sha256 of
  the index they describe; if the registry's current index is not that one (another
  publisher, a restore, a crash between the two writes) nothing is reused;
- a stamp is remembered only once settled (``dirstamps.settled``), so a file written
  around the last publish is read again;
- a narinfo whose store path's hash part is not its file name (which ``collect_paths``
  indexes under the store path, so two files could claim one path) makes the whole
  table be read afresh by ``collect_paths`` itself;
- the whole table is read afresh anyway once every ``FULL_EVERY_S`` (a net under the
  stamps' theory: a clock stepped back, a file system that does not keep ctimes), and
  whenever the caller asks (``full``).

A storage that is not a local directory has no stamps: ``collect_paths`` there.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Any

from . import dirstamps
from .storage import Storage

STAMPS_KEY = ".kiln/index-stamps.json"
#: every narinfo is read again when the last publish that read them all is this old
FULL_EVERY_S = 24 * 3600.0


@dataclass(slots=True)
class Collected:
    """A path table, how many narinfos were read to build it, and the stamps record to
    keep once the index that lists it is published (``remember``)."""

    paths: dict[str, dict[str, Any]]
    read: int
    record: dict[str, Any] | None = None


def collect(
    storage: Storage, prev_paths: dict[str, Any] | None, prev_sha256: str | None, *, full: bool = False
) -> Collected:
    """The path table for ``storage`` (see the module docstring). ``prev_paths`` is the
    table of the registry's current index, whose file hashes to ``prev_sha256``."""
    from .attest_transfer import listing
    from .publish import collect_paths, narinfo_entry

    root = dirstamps.local_root(storage)
    if root is None:
        paths = collect_paths(storage)
        return Collected(paths, len(paths))
    now = time.time()
    rec = None if full or prev_paths is None else dirstamps.load(storage, STAMPS_KEY)
    known: dict[str, Any] = {}
    full_at = now
    if rec is not None and rec.get("index_sha256") == prev_sha256:
        at = rec.get("full_at")
        if isinstance(at, (int, float)) and 0 <= now - at < FULL_EVERY_S:
            known, full_at = rec["stamps"], at
    clock = dirstamps.fs_clock(root)  # before the scan: stamps are compared with it
    stamps, names = dirstamps.scan(root)
    paths = {}
    keep: dict[str, list[int]] = {}
    read = 0
    for stem, nar in stamps.items():
        att = dirstamps.att_stamp(root, stem, names)
        packed = dirstamps.pack(nar, att)
        # (``known`` is only filled from a record of ``prev_paths``)
        if known and prev_paths is not None and known.get(stem) == packed and stem in prev_paths:
            paths[stem] = prev_paths[stem]
            keep[stem] = packed
            continue
        key = stem + dirstamps.NARINFO
        data = storage.read(key)
        read += 1
        if not data:
            continue
        h, entry = narinfo_entry(data, key)
        if h != stem:  # indexed under another name than its file's: the plain way, for all
            paths = collect_paths(storage)
            return Collected(paths, len(paths))
        kinds = listing(storage, h)
        if kinds:
            entry["attestations"] = kinds
        paths[h] = entry
        if dirstamps.settled(nar, clock) and (att is None or dirstamps.settled(att, clock)):
            keep[h] = packed
    return Collected(paths, read, {"full_at": full_at, "stamps": keep})


def remember(storage: Storage, collected: Collected, index_sha256: str) -> None:
    """Keep ``collected``'s stamps for the next publish, tied to the index now current
    (the file that hashes to ``index_sha256``, whose table is ``collected.paths``)."""
    if collected.record is not None:
        dirstamps.save(storage, STAMPS_KEY, {**collected.record, "index_sha256": index_sha256})
