"""Object files of a registry directory that no narinfo names: what ``kiln registry
verify`` counts, and what ``kiln mirror sync --prune`` (its step 4, ``mirrorprune``) and
``kiln registry verify --delete-unnamed`` (``fsck``) remove (``sweep``).

An *object file* is a file named like one (``blobs/sha256:<hex>``, ``nar/<nix32>.nar.zst``;
anything else there is left alone). A narinfo *names* both files of its FileHash, and its
URL. Unnamed ones come from pushes killed between an object and its narinfo, narinfos
refused after their object was stored (servers before uploads checked the narinfo first;
a ``PUT`` refused in another worker than its object's: ``freshobjects``), failed mirror
syncs (their verified objects stay for the resume), and paths unpublished by a prune or
``--delete-bad``. Nothing serves them to anyone who does not already know the digest.

``sweep`` (the caller holds the directory's locks: a prune, its mirror's
``MIRROR_LOCK``; ``registry verify``, ``MIRROR_LOCK`` and ``NARINFO_LOCK``):

- the names are those of every narinfo there, read after the locks were taken; if one
  cannot be read (not UTF-8, a bad FileHash) or names nothing, no object is deleted
  (``Sweep.kept`` says why): it might name any of them;
- a file whose mtime is within ``young`` seconds (``YOUNG``: an hour) is not deleted,
  only counted (``Sweep.young``): a push uploads an object before the narinfo naming it
  and takes no lock, so a deletion in between would leave that narinfo naming nothing;
- just before the unlinks the narinfos are listed again (a ``stat`` each, where the
  storage is a local directory) and those added or replaced since the first read are
  read: an object one of them names is kept. The window left is between that second
  look and an unlink, for an upload that found the object present (uploaded over an
  hour ago and never named) and publishes a narinfo naming it; the next push of that
  path uploads the object again, and ``registry verify`` reports it missing meanwhile;
- bytes count each file once (``blobs/`` and ``nar/`` are hard links of one file when
  kiln wrote them); a file's digest record (``.kiln/nars/<hex>``) goes with it.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable
from dataclasses import dataclass

from kiln.store.errors import KilnError
from kiln.store.hashes import Hash

from . import dirstamps, layout
from .storage import Storage

#: object files changed this recently are not deleted (module docstring: an upload in
#: flight); an hour is far more than a push's gap between an object and its narinfo
YOUNG = 3600.0
NARINFO = ".narinfo"


@dataclass(frozen=True, slots=True)
class ObjectFile:
    """A file named like an object: its key, and (device, inode), size and mtime when
    it could be ``stat``-ed (None, 0, None when the storage has no local file: its age
    is then unknown, and ``sweep`` keeps it)."""

    key: str
    ident: tuple[int, int] | None
    size: int
    mtime: float | None


@dataclass(frozen=True, slots=True)
class Sweep:
    """What ``sweep`` did: the object keys deleted and the bytes that freed, the unnamed
    files it spared for their age, and why it deleted nothing ("" if it looked)."""

    deleted: tuple[str, ...]
    bytes_freed: int
    young: int = 0
    kept: str = ""


def narinfo_keys(storage: Storage) -> list[str]:
    """The keys of the narinfos at the top of the directory (valid hash parts only: the
    rest is never served)."""
    return [k for k in storage.list() if k.endswith(NARINFO) and layout.is_hash_part(k[: -len(NARINFO)])]


def names_of(key: str, body: bytes) -> set[str]:
    """The object keys the narinfo ``key`` with bytes ``body`` names: its URL, and both
    keys of its FileHash. ``KilnError`` if it cannot be read or names nothing."""
    url = fh = None
    try:
        for line in body.decode().splitlines():
            name, _, value = line.partition(": ")
            if name == "URL":
                url = value.strip()
            elif name == "FileHash":
                fh = Hash.parse(value.strip())
    except (UnicodeDecodeError, ValueError, KilnError) as e:
        raise KilnError(f"{key} cannot be read ({e})") from None
    if url is None and fh is None:
        raise KilnError(f"{key} names no object (no URL, no FileHash)")
    named = {url} if url is not None else set()
    if fh is not None:
        named |= {layout.blob_key(fh), layout.nar_key(fh)}
    return named


def named_objects(storage: Storage, keys: Iterable[str] | None = None) -> set[str]:
    """The object keys the narinfos ``keys`` (default: all, ``narinfo_keys``) name; one
    removed meanwhile names nothing. ``KilnError`` if one cannot be read (``names_of``)."""
    named: set[str] = set()
    for key in narinfo_keys(storage) if keys is None else keys:
        body = storage.read(key)
        if body is not None:
            named |= names_of(key, body)
    return named


def object_files(storage: Storage) -> list[ObjectFile]:
    """Every file named like an object, ``blobs/`` then ``nar/``, each sorted."""
    out: list[ObjectFile] = []
    for sub in ("blobs", "nar"):
        for key in sorted(storage.list(sub)):
            if layout.parse_key(key)[0] not in ("blob", "nar"):
                continue
            p = storage.local_path(key)
            if p is None:
                out.append(ObjectFile(key, None, 0, None))
                continue
            try:
                st = os.stat(p)
            except OSError:
                continue  # (gone since the listing: nothing to count or delete)
            out.append(ObjectFile(key, (st.st_dev, st.st_ino), st.st_size, st.st_mtime))
    return out


def unnamed(storage: Storage, named: set[str]) -> list[ObjectFile]:
    """The object files whose keys are not in ``named``."""
    return [f for f in object_files(storage) if f.key not in named]


def total_bytes(files: Iterable[ObjectFile]) -> int:
    """The bytes of ``files``, each file (device, inode) once."""
    seen: dict[tuple[int, int] | str, int] = {}
    for f in files:
        seen.setdefault(f.ident if f.ident is not None else f.key, f.size)
    return sum(seen.values())


def sweep(storage: Storage, young: float = YOUNG) -> Sweep:
    """Delete the unnamed object files older than ``young`` seconds (module docstring);
    the caller holds the directory's locks."""
    root = dirstamps.local_root(storage)
    before = dirstamps.scan(root)[0] if root is not None else {}
    try:
        named = named_objects(storage)
    except KilnError as e:
        return Sweep((), 0, kept=f"{e}: no object deleted")
    # ages by the file system's clock as well as ours, the earlier of the two: on NFS a
    # server clock behind this host's makes a file just written look old by ours
    fs_now = dirstamps.fs_clock(root) if root is not None else None
    now = time.time() if fs_now is None else min(time.time(), fs_now / 1e9)
    cutoff = now - young
    doomed: list[ObjectFile] = []
    spared = 0
    for f in unnamed(storage, named):
        # (an upload in flight: its narinfo may come next. Of an unknown age (a storage
        # without local files), every object might be one: none goes)
        if f.mtime is None or f.mtime > cutoff:
            spared += 1
        else:
            doomed.append(f)
    if doomed and root is not None:  # narinfos published since the first read name what they name
        after = dirstamps.scan(root)[0]
        changed = [h + NARINFO for h, st in after.items() if before.get(h) != st and layout.is_hash_part(h)]
        try:
            late = named_objects(storage, changed)
        except KilnError as e:
            return Sweep((), 0, spared, f"{e}: no object deleted")
        doomed = [f for f in doomed if f.key not in late]
    for f in doomed:
        storage.delete(f.key)
        kind, arg = layout.parse_key(f.key)
        # its digest record (a cache: ``DirSource.commit_object``), if it has one
        storage.delete(f"{layout.PRIVATE_DIR}/nars/{layout.file_hash_of_key(kind, arg).hex}")
    return Sweep(tuple(f.key for f in doomed), total_bytes(f for f in doomed if f.ident is not None), spared)
