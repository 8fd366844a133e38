"""What a local store remembers of the signed indexes it copied paths through (``kiln
copy --to store --index-root ROOT``), so that older media are refused after newer ones.

Where: ``<store root>/index-state/<sha256 of ROOT's bytes>.json``, one file per pinned
root, holding ``index.TrustState`` exactly as a mirror keeps it in
``.kiln/mirror-state.json``: the newest root the chain from ROOT reached (rotations
are followed through ``index/<v>.root.json``) and the highest timestamp and snapshot
versions seen. Keyed by the root the user pins, not by the source's URL: the media of
one publisher, a mirror of them and its registry all carry the same index (a mirror
republishes it verbatim), so any of them newer than what was seen moves the versions
on and any older one is a rollback, whatever path or URL it is read from; another
registry has its own root (each registry's first ``publish-index`` makes one), so its
versions never mix with these.

How (``verified_index``): under an exclusive ``flock`` on ``<name>.lock`` beside it
(two copies must not each read version v and one then write back an older one), the
state is read, or pinned from ROOT on first use (ROOT must be a self-signed root: a
typo'd file is an error, not a new trust anchor), ``index.update`` walks the source's
root chain, timestamp, snapshot and index (signatures, rollback, freeze,
mix-and-match), and the advanced state is written (temp file, fsync, rename, fsync of
the directory) before the lock is let go. It is written once the index verifies,
before any path is copied: having seen a validly signed, fresh index of version v is
a fact whatever the copy does next, and TUF clients keep what they verified the same
way. Deleting the file forgets the versions (the next copy trusts ROOT afresh).
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from kiln.store.errors import KilnError, redact_urls
from kiln.store.nar_restore import fsync_dir, write_all
from kiln.store.perms import FILE_MODE, PRIVATE_FILE_MODE, give_to_owner_of, make_dir

from . import index as ix
from .indexcheck import IndexedClient

#: the store root's entry holding the states
STATE_DIR = "index-state"


def root_fingerprint(root_bytes: bytes) -> str:
    """The sha256 (hex) of a pinned root file's bytes: what ``sha256sum ROOT`` prints,
    and the name of its state file."""
    return hashlib.sha256(root_bytes).hexdigest()


def state_path(store_root: Path, root_bytes: bytes) -> Path:
    """The state file of the pinned root ``root_bytes`` in the store at ``store_root``."""
    return Path(store_root) / STATE_DIR / f"{root_fingerprint(root_bytes)}.json"


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path.with_suffix(".lock"), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE_MODE)
    try:
        give_to_owner_of(fd, path.parent)
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # (closing releases the lock)


def _write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, FILE_MODE)
        try:
            give_to_owner_of(fd, path.parent)
            write_all(fd, data)  # (one os.write may write less: a file size limit, a signal)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(tmp, path)
    except BaseException:  # a full disk, a signal: no temp file left (GC does not look here)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    fsync_dir(path.parent)


async def verified_index(client: Any, store_root: Path, root_bytes: bytes) -> ix.VerifiedIndex:
    """The source's signed index, verified against the state the store keeps for the
    pinned root ``root_bytes`` (module docstring), which it then advances. Raises
    ``index.IndexError_`` (naming what failed: a signature, "expired ... frozen",
    "older than the last seen ... (rollback)", a mix-and-match, no index at all) and
    leaves the state as it was."""
    try:
        pinned = ix.TrustState.pin(root_bytes)
    except ix.IndexError_ as e:
        raise ix.IndexError_(f"--index-root: not a usable pinned root: {e}") from None
    path = state_path(store_root, root_bytes)
    make_dir(path.parent)
    with _locked(path):
        try:
            prev = path.read_bytes()
        except FileNotFoundError:
            prev = None
        if prev is None:
            state = pinned
        else:
            try:
                state = ix.TrustState.from_json(prev)
            except ix.IndexError_ as e:
                raise KilnError(f"{path}: {e} (delete it to trust the pinned root afresh)") from None
        try:
            verified = await ix.update(client.get, state)
        except ix.NoIndex as e:
            raise ix.NoIndex(f"{e}, so --index-root cannot check it") from None
        _write(path, state.to_json())
    return verified


async def indexed(client: Any, store_root: Path, root_bytes: bytes) -> IndexedClient:
    """``client`` (a copy's source) seen through its signed index (``indexcheck``),
    verified by ``verified_index``; its errors name the source."""
    if not client.store_dir:
        await client.cache_info()  # (first: a directory that is no registry says so)
    try:
        v = await verified_index(client, store_root, root_bytes)
    except ix.IndexError_ as e:
        raise type(e)(f"the signed index of {redact_urls(client.url)}: {e}") from None
    return IndexedClient(client, v.index["paths"], v.index["version"])
