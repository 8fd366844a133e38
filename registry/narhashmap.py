"""NAR hash → hash part over a registry directory's narinfos: what ``DirSource`` answers
``by_nar_hash`` lookups (``POST /narinfo-batch``, ``POST /verify``) from.

A process learns what it publishes itself at once (``learn``). What others publish
(other server workers, ``kiln push --to file://``, a mirror sync, ``nix copy``) it
learns on a miss, by a *refresh*: but only when the directory's top level changed since
the last one (every narinfo published, replaced or removed is an entry added, renamed
or unlinked there: ``dirstamps.dir_stamp``, one ``stat``), so a flood of unknown hashes
against an unchanged registry costs a ``stat`` each, and at most once per ``RESCAN_S``.
A refresh reads only the narinfos whose file stamps changed since it last read them
(``dirstamps``; a ``stat`` per narinfo, no read), so it costs ~5 µs a path rather than
a read and parse of every narinfo. A narinfo rewritten in place (no rename: never by
kiln) is seen at the next refresh that the directory's other changes cause.
"""

from __future__ import annotations

import threading
import time

from kiln.store import narinfo as ni
from kiln.store.errors import KilnError

from . import dirstamps
from .storage import Storage

#: a refresh (when the directory changed) happens at most this often
RESCAN_S = 1.0


def _nar_hex(storage: Storage, key: str, store_dir: str) -> str | None:
    data = storage.read(key)
    try:
        return ni.parse(data.decode(), store_dir).nar_hash.hex if data else None
    except (KilnError, UnicodeDecodeError):
        return None


def scan_nar_hashes(storage: Storage, store_dir: str) -> dict[str, str]:
    """``{NarHash sha256 hex: hash part}`` over every narinfo, each read (a storage that
    is not a local directory has no stamps)."""
    out: dict[str, str] = {}
    for key in storage.list(""):
        if key.endswith(".narinfo"):
            nar = _nar_hex(storage, key, store_dir)
            if nar is not None:
                out[nar] = key[:32]
    return out


class NarHashMap:
    def __init__(self, storage: Storage, store_dir: str) -> None:
        self.storage, self.store_dir = storage, store_dir
        self._map: dict[str, str] = {}
        #: per narinfo file (by stem): its stamp when read (None: read it again) and NarHash
        self._files: dict[str, tuple[list[int] | None, str | None]] = {}
        self._dir: dirstamps.Stamp | None = None  # the directory at the last refresh, if settled
        self._at = float("-inf")  # time.monotonic() of the last refresh
        self._lock = threading.Lock()
        #: narinfos read by refreshes (tests read it)
        self.reads = 0

    def learn(self, nar_hex: str, hash_part: str) -> None:
        """This process published ``hash_part`` with that NarHash."""
        self._map[nar_hex] = hash_part

    def forget(self, nar_hex: str, hash_part: str) -> None:
        """``hash_part`` no longer serves that NarHash (its narinfo is gone): drop it, so
        the next ``lookup`` refreshes and may find another path with the same NAR."""
        with self._lock:
            if self._map.get(nar_hex) == hash_part:
                del self._map[nar_hex]

    def lookup(self, nar_hex: str) -> str | None:
        """The hash part of a served narinfo with this NarHash (hex), if any; may refresh
        (see the module docstring), so it may block: run it off an event loop."""
        h = self._map.get(nar_hex)
        if h is not None:
            return h
        with self._lock:  # one refresh at a time; those waiting then see its result
            h = self._map.get(nar_hex)
            if h is None and self._refresh():
                h = self._map.get(nar_hex)
        return h

    def _refresh(self) -> bool:
        root = dirstamps.local_root(self.storage)
        if root is not None and self._dir is not None and dirstamps.dir_stamp(root) == self._dir:
            return False  # nothing published, replaced or removed since the last refresh
        if time.monotonic() - self._at < RESCAN_S:
            return False
        self._at = time.monotonic()
        if root is None:
            self._map = scan_nar_hashes(self.storage, self.store_dir)
            return True
        clock = dirstamps.fs_clock(root)
        d = dirstamps.dir_stamp(root)  # before the scan: a change during it shows next time
        stamps, _ = dirstamps.scan(root)
        files: dict[str, tuple[list[int] | None, str | None]] = {}
        for stem, st in stamps.items():
            packed = list(st)
            old = self._files.get(stem)
            if old is not None and old[0] == packed:
                files[stem] = old
                continue
            self.reads += 1
            nar = _nar_hex(self.storage, stem + dirstamps.NARINFO, self.store_dir)
            files[stem] = (packed if dirstamps.settled(st, clock) else None, nar)
        self._files = files
        self._map = {nar: stem[:32] for stem, (_, nar) in files.items() if nar is not None}
        self._dir = d if dirstamps.settled(d, clock) else None
        return True
