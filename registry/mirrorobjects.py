"""The objects (compressed NARs) a mirror sync's narinfos name: how the copy DST holds
is judged (``judge_all``) and how a verified download takes the place of a bad one
(``place``).

An object is named by its digest: ``blobs/sha256:<hex>`` and ``nar/<nix32>.nar.zst``
(hard links of one file when kiln wrote them; either may be alone, or the two may be
different files). Its content *matches its name* when the file's sha256 is that digest.

Invariants:

- an object whose content matches its name is never deleted or replaced here, whatever
  a narinfo says about it. ``FileSize`` (like ``FileHash``) is not signed, so a narinfo
  that gives another size for a good object is the wrong one: that path fails, naming
  the object and both sizes, and the object stays for every narinfo that names it
  (an unsigned narinfo, or one edited at the source, cannot make a mirror delete a good
  object that published narinfos name);
- a bad object (its content does not match its name, or it cannot be read) is replaced
  only by a download verified against the narinfo (file and NAR digests, ``mirror``),
  renamed over it: a reader finds the bad file or the good one, never none;
- a missing object is fetched, verified, and linked in (``DirSource.commit_object``, which
  records it, vouching for the files it placed: ``objstamp``).

Cost: a ``stat`` per key. A file is hashed (the sha256 of the file, which is what its
name claims; no decompression) only when its size is not the FileSize every narinfo
naming it claims, to tell a bad object from a wrong narinfo — and, with ``rehash``
(``kiln mirror sync --rehash``), every file: what finds rot that kept the size. Each file
is hashed once however many narinfos name it (``blobs/`` and ``nar/`` links told apart
by inode), ``workers`` at a time (hashlib releases the GIL).
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import os
import stat
from collections.abc import Collection
from dataclasses import dataclass
from typing import BinaryIO

from kiln.store.narinfo import NarInfo

from . import layout
from .backends import DirSource
from .storage import Storage
from .verify import Digests, nar_file_hash

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Verdict:
    """What a sync does about one narinfo's object: ``fetch`` it (verified), renamed
    over the files at ``replace`` (bad ones) and linked where DST has none; or fail the
    path (``problem``); or nothing (the object is there and fits)."""

    fetch: bool = False
    replace: tuple[str, ...] = ()
    problem: str | None = None


FITS = Verdict()
_Files = list[tuple[str, os.stat_result]]


def judge_all(dst: DirSource, infos: Collection[NarInfo], rehash: bool, workers: int) -> dict[str, Verdict]:
    """``{store path: Verdict}`` for each of ``infos`` (module docstring). Blocking (it
    may hash files): callers on an event loop run it in an executor."""
    present: dict[str, _Files] = {}
    claims: dict[str, set[int | None]] = {}
    for i in infos:
        fh = i.file_hash
        assert fh is not None  # (``check_narinfo``)
        claims.setdefault(fh.hex, set()).add(i.file_size)
        if fh.hex not in present:
            keys = (layout.blob_key(fh), layout.nar_key(fh))
            present[fh.hex] = [(k, st) for k in keys if (st := _stat(dst.storage, k)) is not None]
    hash_these: dict[tuple[int, int], str] = {}
    for hx, files in present.items():
        for key, st in files:
            if stat.S_ISREG(st.st_mode) and (rehash or claims[hx] != {st.st_size}):
                hash_these.setdefault((st.st_dev, st.st_ino), key)
    sums: dict[tuple[int, int], str | None] = {}
    if hash_these:
        with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, workers)) as pool:
            got = pool.map(lambda k: _sha256(dst.storage, k), hash_these.values())
            sums = dict(zip(hash_these, got, strict=True))
    return {i.path: _verdict(i, present[nar_file_hash(i).hex], sums) for i in infos}


def _verdict(info: NarInfo, files: _Files, sums: dict[tuple[int, int], str | None]) -> Verdict:
    if not files:
        return Verdict(fetch=True)
    fh = info.file_hash
    assert fh is not None
    bad: list[str] = []
    for key, st in files:
        if not stat.S_ISREG(st.st_mode):
            return Verdict(problem=f"{key} in the mirror is not a regular file; remove it by hand")
        ino = (st.st_dev, st.st_ino)
        if ino not in sums:
            continue  # not hashed: its size is what every narinfo naming it says (no --rehash)
        if sums[ino] != fh.hex:
            bad.append(key)  # bad bytes (or unreadable): replaced by a verified download
        elif st.st_size != info.file_size:
            return Verdict(
                problem=f"the narinfo says FileSize {info.file_size}, but the mirror's {key} has "
                f"{st.st_size} bytes and hashes to its name: the object is good and the narinfo is "
                "wrong (FileSize is not signed: changed at the source?); the object is kept"
            )
    return Verdict(fetch=True, replace=tuple(bad)) if bad else FITS


def _stat(storage: Storage, key: str) -> os.stat_result | None:
    p = storage.local_path(key)
    if p is None:
        return None
    try:
        return os.stat(p)
    except (FileNotFoundError, NotADirectoryError):
        return None


def _sha256(storage: Storage, key: str) -> str | None:
    """The sha256 (hex) of the file at ``key``; None if it cannot be read (then it is
    replaced like a bad one: a rename over it works whatever is wrong with its bytes)."""
    try:
        f = storage.open(key)
        if f is None:
            return None
        h = hashlib.sha256()
        with f:
            while chunk := f.read(CHUNK):
                h.update(chunk)
        return h.hexdigest()
    except OSError:
        return None


def place(dst: DirSource, f: BinaryIO, got: Digests, replace: Collection[str]) -> None:
    """Publish the verified staged object ``f`` (digests ``got``): renamed over each bad
    file at ``replace`` (one rename each: no moment without a file there), then linked
    where DST has no file. Not made durable (the sync's barrier does that). The links
    come first: ``commit_object`` records the file's stamp (``objstamp``) last, once no
    other link to it is made or removed (each changes its ctime), and takes ``f``'s name."""
    for key in replace:
        dest = dst.storage.local_path(key)
        assert dest is not None  # (``replace`` names files ``judge_all`` found)
        # a second name for the staged file, in the temp dir under this process's writer
        # lock (a crash leaves it for the sweep), then renamed over the bad one
        with dst.storage.staged() as (g, gpath):
            assert gpath is not None
            g.close()
            os.unlink(gpath)
            os.link(f.name, gpath)
            os.replace(gpath, dest)
    dst.commit_object(f, got, durable=False)
