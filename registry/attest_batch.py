"""Admitting many uploaded attestations at once (``admit_many``): what ``POST
/attestation-upload-batch`` and ``file://`` pushes use instead of ``admit`` per file.

Each entry is judged exactly as ``attest_transfer.admit`` judges a single upload (the
same functions: ``check_upload`` — size, published narinfo, envelope, subject,
predicate, signer, no future time — then, under the directory's attestation lock,
``check_replace`` against the stored one), and gets its own ``(status, message)``; a
refused entry does not stop the others and leaves nothing behind. What differs is the
cost of the writes: instead of an fsync and a lock and a rebuilt listing per file,

1. every admitted envelope, and the new listing of every path it belongs to, is
   written to a temp file (``Storage.staged``, in ``.kiln/tmp``) without an fsync;
2. one barrier (the server's group commit, ``DirSource.group_sync``, or
   ``Storage.barrier``) makes all of them durable;
3. each is renamed into place: the envelopes, then the listings.

All of 1-3 happen under ``attest_transfer.LOCK_KEY``, held once for the batch, so no
other upload (another worker's single PUT included) slips between a check and its
write, and each listing is computed from the directory as it is under that lock plus
this batch. A crash before 3 leaves only temp files (swept as any other upload's);
during 3, files that are each whole (only durable bytes are renamed into place), and at
worst a listing not yet rewritten: the listing is a convenience that the next upload
of that path rebuilds from the files, as after a crash between a single PUT's write and
its listing. A (path, kind) given twice in one batch is refused the second time (400).

``place_many`` is steps 1-3 alone, for files the caller has verified otherwise (a mirror
sync: against the signed index), replacing what is stored; ``staged_many`` splits it so
that the caller's own barrier serves (no extra one).
"""

from __future__ import annotations

import contextlib
import dataclasses
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import BinaryIO

from kiln.store.perms import make_dir
from kiln.store.signing import PublicKey

from . import layout
from .attest_transfer import (
    LOCK_KEY,
    admit,
    check_replace,
    check_upload,
    listing_body,
    rebuild_listing,
    sha256_hex,
    stored_kinds,
)
from .dirlock import dir_lock
from .storage import FileStorage, Storage

#: at most this many attestations per ``POST /attestation-upload-batch``
MAX_UPLOAD_ENTRIES = 2_000
#: largest ``POST /attestation-upload-batch`` body (held in memory while admitted)
MAX_UPLOAD_BODY = 64 << 20


@dataclasses.dataclass(slots=True)
class Upload:
    """One attestation of a batch: its path's hash part, kind and bytes, or the answer
    it already got while the batch was read (``refused``: e.g. 413, too big)."""

    hash_part: str
    kind: str
    data: bytes = b""
    refused: tuple[int, str] | None = None


def admit_many(
    storage: Storage,
    store_dir: str,
    entries: Sequence[Upload],
    trusted: list[PublicKey] | None,
    attesters: Sequence[PublicKey] = (),
    *,
    now: datetime | None = None,
    barrier: Callable[[], None] | None = None,
) -> list[tuple[int, str]]:
    """``admit`` for every entry (module docstring), with one lock and one barrier
    (``barrier``, default ``storage.barrier``). Returns each entry's ``(status,
    message)``, in order: 201 published, 200 identical, or ``admit``'s refusal."""
    now = now or datetime.now(UTC)
    if not isinstance(storage, FileStorage):  # (no rename into place: one by one)
        return [
            e.refused or admit(storage, store_dir, e.hash_part, e.kind, e.data, trusted, attesters, now=now)
            for e in entries
        ]
    results: list[tuple[int, str] | None] = [None] * len(entries)
    seen: set[tuple[str, str]] = set()
    for n, e in enumerate(entries):
        if e.refused is not None:
            results[n] = e.refused
        elif not layout.is_hash_part(e.hash_part):
            results[n] = (400, f"error: invalid hash part {e.hash_part[:40]!r}")
        elif (e.hash_part, e.kind) in seen:
            results[n] = (400, f"error: {e.kind[:80]!r} of {e.hash_part} is given twice in this batch")
        else:
            seen.add((e.hash_part, e.kind))
            results[n] = check_upload(
                storage, store_dir, e.hash_part, e.kind, e.data, trusted, attesters, now
            )
    todo = [n for n, r in enumerate(results) if r is None]
    if todo:
        with dir_lock(storage, LOCK_KEY), contextlib.ExitStack() as stack:
            _commit(storage, entries, todo, results, trusted, attesters, now, barrier, stack)
    return [r if r is not None else (500, "error: not processed") for r in results]


def _commit(
    storage: FileStorage,
    entries: Sequence[Upload],
    todo: list[int],
    results: list[tuple[int, str] | None],
    trusted: list[PublicKey] | None,
    attesters: Sequence[PublicKey],
    now: datetime,
    barrier: Callable[[], None] | None,
    stack: contextlib.ExitStack,
) -> None:
    """Steps 1-3 of the module docstring, for the entries ``todo`` that
    ``check_replace`` lets through (the caller holds the lock; ``stack`` removes the
    temp files at its end)."""
    chosen: list[int] = []
    for n in todo:
        e = entries[n]
        decided = check_replace(
            storage.read(layout.att_key(e.hash_part, e.kind)), e.data, e.kind, trusted, attesters, now
        )
        if decided is not None:
            results[n] = decided
        else:
            chosen.append(n)
    _place(
        storage, [(entries[n].hash_part, entries[n].kind, entries[n].data) for n in chosen], barrier, stack
    )
    for n in chosen:
        results[n] = (201, "published")


def place_many(
    storage: Storage, files: Sequence[tuple[str, str, bytes]], barrier: Callable[[], None] | None = None
) -> None:
    """Publish attestation files (hash part, kind, bytes) that the caller has verified
    (a mirror: against the signed index) over whatever is stored, with their paths'
    rebuilt listings: steps 1-3 of the module docstring under the lock, one barrier
    (``barrier``, default ``storage.barrier``)."""
    with staged_many(storage, files) as place:
        (barrier or storage.barrier)()
        place()


@contextlib.contextmanager
def staged_many(storage: Storage, files: Sequence[tuple[str, str, bytes]]) -> Iterator[Callable[[], None]]:
    """``place_many`` in two halves, for a caller with a barrier of its own to share (a
    mirror sync's): on entry the files and their paths' new listings are staged, under
    the lock (held until exit); the ``place()`` yielded renames them into place, and
    must be called only after a barrier that *began after entry* (else a crash could
    leave a torn file in place). What is not placed by exit is removed."""
    if not isinstance(storage, FileStorage):  # (no rename into place: written at place())
        yield lambda: _put_each(storage, files)
        return
    with dir_lock(storage, LOCK_KEY), contextlib.ExitStack() as stack:
        placed = _stage(storage, files, stack)
        yield lambda: _rename(storage, placed)


@contextlib.contextmanager
def staged_files(storage: Storage, files: Sequence[tuple[str, bytes]]) -> Iterator[Callable[[], None]]:
    """``(key, data)`` files staged on entry (each in a temp file; an error, such as a full
    file system, while staging leaves nothing placed); the ``place()`` yielded renames them
    over their keys, to be called only after a barrier that began after entry. What is
    not placed by exit is removed. Other storage: written at ``place()``."""
    if not isinstance(storage, FileStorage):

        def put() -> None:
            for key, data in files:
                storage.put_bytes(key, data, durable=False)

        yield put
        return
    with contextlib.ExitStack() as stack:
        placed = [(_staged_file(storage, data, stack), key) for key, data in files]
        yield lambda: _rename(storage, placed)


def _put_each(storage: Storage, files: Sequence[tuple[str, str, bytes]]) -> None:
    for h, kind, data in files:
        storage.put_bytes(layout.att_key(h, kind), data)
    for h in dict.fromkeys(h for h, _, _ in files):
        rebuild_listing(storage, h)


def _place(
    storage: FileStorage,
    files: Sequence[tuple[str, str, bytes]],
    barrier: Callable[[], None] | None,
    stack: contextlib.ExitStack,
) -> None:
    """Stage ``files`` and the new listings of their paths, one barrier, then rename
    them into place (the caller holds the lock; ``stack`` removes the temp files)."""
    placed = _stage(storage, files, stack)
    if placed:
        (barrier or storage.barrier)()
        _rename(storage, placed)


def _stage(
    storage: FileStorage, files: Sequence[tuple[str, str, bytes]], stack: contextlib.ExitStack
) -> list[tuple[BinaryIO, str]]:
    """Temp files (removed by ``stack``) holding ``files`` and then the new listing of
    each of their paths, with the keys they go to; nothing is fsynced."""

    placed: list[tuple[BinaryIO, str]] = []
    kinds: dict[str, dict[str, str]] = {}
    for h, kind, data in files:
        placed.append((_staged_file(storage, data, stack), layout.att_key(h, kind)))
        if h not in kinds:
            kinds[h] = stored_kinds(storage, h)
        kinds[h][kind] = sha256_hex(data)
    return placed + [
        (_staged_file(storage, listing_body(k), stack), layout.att_listing_key(h)) for h, k in kinds.items()
    ]


def _staged_file(storage: FileStorage, data: bytes, stack: contextlib.ExitStack) -> BinaryIO:
    """A temp file holding ``data`` (removed by ``stack`` unless renamed away); flushed,
    made durable by the caller's barrier."""
    f, _ = stack.enter_context(storage.staged())
    f.write(data)
    f.close()
    return f


def _rename(storage: FileStorage, placed: list[tuple[BinaryIO, str]]) -> None:
    for f, key in placed:  # the envelopes first, then the listings
        _replace(storage, f, key)


def _replace(storage: FileStorage, f: BinaryIO, key: str) -> None:
    """Rename staged file ``f`` over ``key`` (its directory made if missing)."""
    dest = storage.local_path(key)
    assert dest is not None
    try:
        os.replace(f.name, dest)
    except FileNotFoundError:
        make_dir(dest.parent, exact=True)  # (0755 whatever the umask: docs/registry.md)
        os.replace(f.name, dest)
