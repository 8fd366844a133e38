"""``kiln mirror sync --prune``: take out of a mirror the paths its source no longer lists.

A sync only adds: a path removed at the source stays in the mirror, published, until
it is pruned. ``stale`` counts such paths (the sync prints a note when there are any);
``prune``, run by a sync after it has published the source's new index, removes them:

1. each narinfo ``<h>.narinfo`` of DST whose hash part the signed index does not list
   is deleted, holding ``dirlock.NARINFO_LOCK`` (a signature merge — a read-modify-write
   of the file by ``DirSource.publish_narinfo`` — must not write one back);
2. then the attestations of every path without a narinfo that the index does not list
   (``<h>.att/``, holding ``attest_transfer.LOCK_KEY``): those of step 1, and any a
   pruning cut short left behind;
3. a file-system barrier: the unlinks above are durable before any object goes;
4. every object file (``blobs/sha256:<hex>``, ``nar/<nix32>.nar.zst``: only files
   named like objects) that no narinfo then in DST names, by its FileHash or its URL
   (``unnamedobjects.sweep``, which ``kiln registry verify --delete-unnamed`` runs too).
   Every narinfo is read for that; if one cannot be read, no object is deleted; those
   published meanwhile are read again just before the unlinks.

``refuse_held``: a sync with ``--trusted-key`` that finds narinfos DST held refused by
the keys trusted now fails (``mirror``); with ``--prune`` it also takes them out, as step
1 does (holding ``NARINFO_LOCK``, each only if DST still holds the bytes refused: a
signature merge meanwhile may have made it pass). Nothing else goes: the path is still
listed, so its attestations stay, and its object is named by nothing only until the
source's re-signed narinfo is fetched; a later ``prune`` collects it if it never is.

Crash safety: a narinfo goes before anything it names, so a client never finds a
published path whose object is gone; a prune cut short leaves only unpublished files,
which the next prune finds (steps 2 and 4 look at DST as it is, not at step 1's list).

Who else writes: the caller holds the mirror's lock (``MIRROR_LOCK``: no other sync).
A ``kiln serve`` may serve DST meanwhile: it checks each narinfo against its file on
every request (``DirSource.narinfo``) and opens objects per request, so a pruned path
is a miss at once (as with nginx; a CDN or client cache may still hold its narinfo for
its TTL, and then gets a 404 for the object, as after any removal). Uploads into a
mirror (a ``kiln push`` to it) take no lock a prune could wait for, and are no part of
a mirror: their narinfos are not in the source's index, so a prune removes them. But
a push uploads an object before the narinfo that names it, so step 4 spares object
files written in the last ``YOUNG`` seconds (by mtime): a prune between a push's
object and its narinfo would otherwise publish a narinfo whose object it had just
deleted. They are counted (``objects_young``) and go at a later prune if still unnamed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
from collections.abc import Collection
from dataclasses import dataclass

from . import dirstamps, layout, unnamedobjects
from .attest_transfer import LOCK_KEY as ATT_LOCK
from .backends import DirSource
from .dirlock import NARINFO_LOCK, dir_lock
from .storage import Storage

NARINFO = ".narinfo"
#: object files changed this recently are not pruned (module docstring; ``unnamedobjects``)
YOUNG = unnamedobjects.YOUNG
ATT_DIR = ".att"


@dataclass(frozen=True, slots=True)
class PruneReport:
    #: the store paths unpublished (a hash part where the narinfo did not say)
    paths: tuple[str, ...]
    #: object files deleted, and the bytes that freed
    objects: int
    bytes_freed: int
    #: why no object was deleted ("" if objects were collected)
    objects_kept: str = ""
    #: unnamed object files spared because they were written within ``YOUNG`` seconds
    objects_young: int = 0


def published(storage: Storage) -> set[str]:
    """The hash parts of the narinfos at the top of DST."""
    return {
        k[: -len(NARINFO)]
        for k in storage.list()
        if k.endswith(NARINFO) and layout.is_hash_part(k[: -len(NARINFO)])
    }


def stale(storage: Storage, listed: Collection[str]) -> int:
    """How many paths DST publishes that the index (``listed`` hash parts) does not."""
    return len(published(storage).difference(listed))


def prune(dst: DirSource, listed: Collection[str], young: float = YOUNG) -> PruneReport:
    """Remove from DST what the index (``listed`` hash parts) does not list (module
    docstring). The caller holds DST's mirror lock. ``young``: spare object files written
    in the last that many seconds (``YOUNG``)."""
    storage = dst.storage
    listed = set(listed)
    gone: list[str] = []
    with dir_lock(storage, NARINFO_LOCK):
        for h in sorted(published(storage) - listed):
            key = layout.narinfo_key(h)
            gone.append(_store_path(storage.read(key)) or h)
            storage.delete(key)
    with dir_lock(storage, ATT_LOCK):
        left = published(storage)
        for h in sorted(_att_dirs(storage) - listed - left):
            _remove_att_dir(storage, h)
    storage.barrier()  # (every unlink above is durable before an object goes)
    res = unnamedobjects.sweep(storage, young)
    return PruneReport(tuple(gone), len(res.deleted), res.bytes_freed, res.kept, res.young)


def refuse_held(dst: DirSource, refused: dict[str, str], unpublish: bool) -> dict[str, str]:
    """What becomes of the narinfos DST held that a sync's trusted keys refused
    (``refused``: hash part -> the sha256 of the bytes refused), said per hash part: with
    ``unpublish`` (``--prune``) each is deleted if DST still holds exactly those bytes
    (module docstring), else it stays published. The caller holds DST's mirror lock."""
    storage = dst.storage
    gone: set[str] = set()
    if unpublish:
        with dir_lock(storage, NARINFO_LOCK):
            for h, sha in sorted(refused.items()):
                body = storage.read(key := layout.narinfo_key(h))
                if body is not None and hashlib.sha256(body).hexdigest() == sha:
                    storage.delete(key)
                    gone.add(h)
    return {
        h: "held by the mirror from an earlier sync: "
        + (
            "unpublished (--prune)"
            if h in gone
            else "still published (kiln mirror sync --prune unpublishes it)"
        )
        for h in refused
    }


def _store_path(body: bytes | None) -> str | None:
    for line in (body or b"").decode(errors="replace").splitlines():
        if line.startswith("StorePath: "):
            return line[len("StorePath: ") :].strip()
    return None


def _att_dirs(storage: Storage) -> set[str]:
    root = dirstamps.local_root(storage)
    if root is None:
        return set()
    with os.scandir(root) as it:
        return {
            e.name[: -len(ATT_DIR)]
            for e in it
            if e.name.endswith(ATT_DIR) and layout.is_hash_part(e.name[: -len(ATT_DIR)]) and e.is_dir()
        }


def _remove_att_dir(storage: Storage, h: str) -> None:
    """``<h>.att/``: its files (the listing last), then the directory if that left it empty."""
    keys = sorted(storage.list(f"{h}{ATT_DIR}"), key=lambda k: k.endswith(f"/{layout.ATT_LISTING}"))
    for key in keys:
        storage.delete(key)
    d = storage.local_path(f"{h}{ATT_DIR}")
    if d is not None:
        with contextlib.suppress(OSError):
            os.rmdir(d)
