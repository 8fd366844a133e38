"""The file stamps a large object's digest record (``.kiln/nars/<hex>``) vouches for.

A digest record says "kiln verified these bytes". ``kiln serve`` calls a large object
immutable on its word (``objtrust``), so the record must name the very file it speaks
for, unchanged since: the record carries ``stamps``, the (device, inode, size, mtime_ns,
ctime_ns) of each file kiln verified and published under the object's names, and a
file is vouched for only while its stamp is equal to one of them.

Why ctime: mtime can be set from user space (``touch``, ``cp -p``, ``rsync -t``, a tar
restore) and follows the clock when it steps back, so "not modified since the record"
judged by mtime is fooled by any of them. ctime cannot be set (any write, chmod, link or
unlink sets it to the current time); a replaced file is another inode. Equality, not
"not later": a clock stepped back makes a later change look earlier.

Invariants:

- a stamp is recorded only for a file known to hold the verified bytes: one whose inode
  is the staged file kiln hashed as it streamed in (``current``, after every link and
  after the temp name is gone: each of those changes the ctime), or a file whose stamp
  an earlier record of the same object held and still has (``still_vouched``);
- a record without ``stamps`` (written before them) vouches for nothing: the object is
  served with a revalidated ETag, not immutable, until kiln verifies it again;
- a change that keeps the bytes but not the stamp (a chmod, another hard link, a copy)
  loses the promise: the safe direction.

The record stays readable by ``Digests.from_record`` (extra fields are ignored).
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterable

from .verify import Digests

Stamp = tuple[int, int, int, int, int]


def stamp_of(st: os.stat_result) -> Stamp:
    """(device, inode, size, mtime_ns, ctime_ns) of a stat result."""
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def fstamp(f: object) -> Stamp | None:
    """The stamp of open file ``f``; None if it has no descriptor (not a local file)."""
    fileno = getattr(f, "fileno", None)
    if fileno is None:
        return None
    try:
        return stamp_of(os.fstat(fileno()))
    except (OSError, AttributeError, ValueError):
        return None


def record(got: Digests, stamps: Iterable[Stamp]) -> bytes:
    """``got``'s digest record (``Digests.to_record``) vouching for ``stamps``."""
    d = json.loads(got.to_record())
    d["stamps"] = sorted({tuple(s) for s in stamps})
    return json.dumps(d).encode()


def stamps_of(rec: bytes | None) -> frozenset[Stamp]:
    """The stamps a record vouches for; empty for a record without them (older than
    stamps), or one torn or malformed."""
    if not rec:
        return frozenset()
    try:
        raw = json.loads(rec).get("stamps")
    except (ValueError, AttributeError, RecursionError):
        return frozenset()
    if not isinstance(raw, list):
        return frozenset()
    out = set()
    for s in raw:
        if isinstance(s, list) and len(s) == 5 and all(type(n) is int for n in s):
            out.add((s[0], s[1], s[2], s[3], s[4]))
    return frozenset(out)


def current(
    paths: Iterable[os.PathLike[str] | str], inode: tuple[int, int] | None, old: frozenset[Stamp]
) -> list[Stamp]:
    """The stamps of the files at ``paths`` to record now: each that is the verified
    ``inode`` (device, inode), or that still has a stamp in ``old`` (an earlier record's)."""
    out = []
    for p in paths:
        try:
            st = os.stat(p)
        except OSError:
            continue
        s = stamp_of(st)
        if (inode is not None and (st.st_dev, st.st_ino) == inode) or s in old:
            out.append(s)
    return out
