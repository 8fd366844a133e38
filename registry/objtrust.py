"""Which object files ``kiln serve`` may call immutable (``GET/HEAD /nar/...``,
``/blobs/sha256:...``).

An object is served with ``ETag: "sha256:<hex>"`` and ``Cache-Control: public,
max-age=31536000, immutable``: an HTTP cache (a CDN, a proxy) then keeps it a year
without asking again, and answers ``If-None-Match`` with that tag by 304. Both are
promises that the bytes hash to their name. A file that does not (written by a tool
that does not verify, edited, truncated, rotted) would be pinned in such caches even
after ``kiln registry verify --delete-bad`` removes it and a push or sync brings the
good bytes back under the same name; clients would fail its digest check for a year.

So the promise is made only for a file this server knows to be good since it was
written (``ObjectTrust.judge``):

- an object under ``backends.RECORD_MIN`` (1 MiB) is hashed (sha256 of the file, no
  decompression: ~1 ms) the first time this process serves it, and the verdict is
  remembered with the file's stamp (device, inode, size, mtime, ctime): a file replaced
  or changed in place is hashed again;
- a larger one is trusted when the directory holds its digest record
  (``.kiln/nars/<hex>``, written by kiln when it verified the object: an upload, a
  mirror sync, an admission that hashed it) for the file's size that vouches for this
  very file: the record holds the file's stamp as kiln left it (``objstamp``: device,
  inode, size, mtime, ctime) and the file still has it. Not "mtime not later than the
  record": a clock stepped back, ``touch``, ``cp -p``, ``rsync -t`` or a tar restore
  set an old mtime on other bytes; ctime cannot be set. A record older than stamps
  vouches for nothing (the object is served revalidated until kiln verifies it again):
  hashing gigabytes on a GET is not cheap;
- a store's objects (``kiln serve --store``) are trusted: the store verifies every
  object it imports (``kiln store verify`` is its check).

Otherwise the file is served with aiohttp's own ETag (mtime and size: it changes when
the file is replaced) and ``Cache-Control: public, max-age=<narinfo TTL>``, so a cache
asks again within the hour; a file known not to hash to its name (a small one) gets
``no-store``, and the server says so once on stderr. Limits: rot that keeps the stamp
after the verdict (or after a large object's record) is not seen here; ``kiln registry
verify`` finds it, and a cache that fetched the object meanwhile must be purged.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
from pathlib import Path

from kiln.store.hashes import Hash

from . import layout, objstamp
from .backends import RECORD_MIN
from .storage import Storage
from .verify import Digests

#: verdicts remembered per process (the table is emptied when full)
MAX_KNOWN = 200_000
_READ = 1 << 20


def _sha256_file(path: Path) -> bytes | None:
    try:
        with open(path, "rb") as f:
            h = hashlib.sha256()
            while chunk := f.read(_READ):
                h.update(chunk)
            return h.digest()
    except OSError:
        return None


class ObjectTrust:
    """Verdicts on object files (module docstring); ``storage`` None: a store's objects,
    all trusted."""

    def __init__(self, storage: Storage | None) -> None:
        self.storage = storage
        #: hex digest -> (file stamp, verdict)
        self._known: dict[str, tuple[tuple[int, ...], bool | None]] = {}
        #: files hashed (tests read it)
        self.hashed = 0

    async def judge(self, path: Path, digest: Hash) -> bool | None:
        """True: the file at ``path`` is known to hash to ``digest`` (immutable); False:
        known not to; None: not known (too large to hash here, and no record)."""
        if self.storage is None:
            return True
        try:
            st = os.stat(path)
        except OSError:
            return None
        stamp = objstamp.stamp_of(st)
        hit = self._known.get(digest.hex)
        if hit is not None and hit[0] == stamp:
            return hit[1]
        loop = asyncio.get_running_loop()
        if st.st_size < RECORD_MIN:
            self.hashed += 1
            got = await loop.run_in_executor(None, _sha256_file, path)
            verdict: bool | None = None if got is None else got == digest.digest
            if verdict is False:
                print(
                    f"kiln serve: {path.name} does not hash to its name (corrupt): served uncached; "
                    "kiln registry verify --delete-bad unpublishes it",
                    file=sys.stderr,
                    flush=True,
                )
        else:
            verdict = await loop.run_in_executor(None, self._recorded, digest, st)
            if verdict is None:
                # not remembered: a record may vouch for it later without the file
                # changing (``kiln registry verify`` read it whole and found it good)
                return None
        if len(self._known) >= MAX_KNOWN:
            self._known.clear()
        self._known[digest.hex] = (stamp, verdict)
        return verdict

    def _recorded(self, digest: Hash, st: os.stat_result) -> bool | None:
        """True if kiln's digest record of ``digest`` vouches for this very file: a
        record for its size holding its stamp (``objstamp``: device, inode, size, mtime,
        ctime, all equal); else None (unknown). A record written before stamps vouches
        for nothing (the file is not hashed here: served revalidated, not immutable)."""
        assert self.storage is not None
        rec = self.storage.read(f"{layout.PRIVATE_DIR}/nars/{digest.hex}")  # (``backends._record_key``)
        if rec is None:
            return None
        got = Digests.from_record(rec, digest)
        if got is None or got.file_size != st.st_size or objstamp.stamp_of(st) not in objstamp.stamps_of(rec):
            return None
        return True
