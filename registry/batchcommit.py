"""Publishing a batch of (narinfo, optional NAR) pairs into a registry directory:
``DirSource.commit_batch``, behind ``POST /upload-batch`` (``writeapi``) and pushes to a
``file://`` directory (``dirclient``).

Theory of operation. Every entry is judged before anything of the batch is linked in:
its narinfo admitted (``admit``: parse, the registry's rules, signatures; or already
admitted by the caller, ``BatchEntry.info``, as the server does before it reads a NAR,
so a refused narinfo's NAR is read past and never stored), the NAR it carries hashing to
its FileHash, the object's digests (the carried NAR's, or the registry's object) equal
to its claims, its ``CA:`` true of that NAR (read from the staged file when carried),
and its references published or admitted earlier in the batch. Then, with two
file-system barriers in all: NAR data and the admitted narinfos' data → (barrier) → the
NAR links → (barrier) → the narinfo links.

Invariant: a NAR this batch carries is linked in only if an admitted narinfo of the
batch names it. The NAR of an entry refused for any reason (untrusted or missing
signature, a malformed narinfo, digests or a ``CA:`` that do not match, a reference
not published) is never kept: its temp file goes with the batch's ``ExitStack``. (An
entry whose narinfo meets one published meanwhile at the link, by another upload of the
path, has had its NAR linked in already; if that narinfo names another object, or is a
409, the NAR stays unnamed: ``kiln registry verify`` counts such files.)
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import zstandard

from kiln.store import narinfo as ni
from kiln.store.errors import KilnError

from . import layout
from .admitca import refusal
from .verify import Digests, ca_refusal, expect_info

if TYPE_CHECKING:
    from .backends import BatchEntry, DirSource

CHUNK = 1 << 20

Admit = Callable[[str, str], ni.NarInfo]


def status_of(e: Exception) -> int:
    """The status of a refused narinfo: 403 when it lacks trusted signatures, else 400."""
    return 403 if type(e).__name__ == "UntrustedError" else 400


def admit_entry(e: BatchEntry, admit: Admit) -> None:
    """Admit ``e``'s narinfo: set ``e.info``, or ``e.error`` and ``e.error_status``."""
    try:
        e.info = admit(e.hash_part, e.narinfo.decode())
    except (KilnError, UnicodeDecodeError) as ex:
        e.error, e.error_status = str(ex), status_of(ex)


def commit(src: DirSource, entries: list[BatchEntry], admit: Admit) -> list[tuple[int, str]]:
    """Publish ``entries`` (module docstring); each gets its own (status, message)."""
    with contextlib.ExitStack() as stack:
        return _commit(src, entries, admit, stack)


def _commit(
    src: DirSource, entries: list[BatchEntry], admit: Admit, stack: contextlib.ExitStack
) -> list[tuple[int, str]]:
    results: list[tuple[int, str] | None] = [None] * len(entries)
    # the NARs the batch carries, by object (hex): the first entry carrying each
    carried: dict[str, BatchEntry] = {}
    for n, e in enumerate(entries):
        if e.error is None and e.info is None:
            admit_entry(e, admit)
        if e.error is not None:
            results[n] = (e.error_status, f"error: {e.error}")
            continue
        info = e.info
        assert info is not None and info.file_hash is not None
        if e.nar_digests is not None:
            if e.nar_digests.file_hash.digest != info.file_hash.digest:
                results[n] = (400, f"error: {info.path}: the NAR sent does not hash to its FileHash")
                continue
            carried.setdefault(e.nar_digests.file_hash.hex, e)
    used: set[str] = set()  # the carried NARs an admitted narinfo names
    ready: list[int] = []
    ready_hashes: set[str] = set()  # of the entries in ``ready`` (grown, never rebuilt)
    for n, e in enumerate(entries):
        info = e.info
        if results[n] is not None or info is None:
            continue
        fh = info.file_hash
        assert fh is not None
        own = carried.get(fh.hex)
        if own is not None:
            got: Digests | None = own.nar_digests
        else:
            got = src.object_digests(fh)
        if got is None:
            results[n] = (400, f"error: {info.path}: upload the NAR ({info.url}) before its narinfo")
            continue
        try:
            expect_info(info, got)
        except KilnError as ex:
            results[n] = (400, f"error: {ex}")
            continue
        refused = _ca_refusal(src, info, got, own)  # its (unsigned) CA: as for a PUT
        if refused:
            results[n] = (400, refused)
            continue
        # references: published, or earlier in this batch (published before it below)
        missing = src.missing_reference(info, ready_hashes)
        if missing is not None:
            results[n] = (409, missing)
            continue
        f, _ = stack.enter_context(src.storage.staged())
        f.write(e.narinfo)
        f.close()  # flushed; made durable by the shared barrier below
        e.narinfo_file = f
        ready.append(n)
        ready_hashes.add(e.hash_part)
        if own is not None:
            used.add(fh.hex)
    if used:
        src.group_sync()  # the NARs' data (and the narinfos') before any NAR is linked
        for h, e in carried.items():
            if h in used:
                # (a carried entry has both: ``writeapi`` sets them together)
                assert e.nar_file is not None and e.nar_digests is not None
                src.commit_object(e.nar_file, e.nar_digests, durable=False)
    if ready:
        src.group_sync()
    for n in ready:
        e = entries[n]
        info = e.info
        assert info is not None and e.narinfo_file is not None  # (staged when it was made ready)
        if src.storage.link_staged(e.narinfo_file, layout.narinfo_key(e.hash_part)):
            src.by_nar.learn(info.nar_hash.hex, e.hash_part)
            results[n] = (201, "published")
        else:  # exists: identical, mergeable or a conflict
            try:
                results[n] = src.publish_narinfo(e.hash_part, info, e.narinfo)
            except KilnError as ex:  # the published one is junk: this entry's 400, not the batch's
                results[n] = (400, f"error: {ex}")
    return [r if r is not None else (500, "error: not processed") for r in results]


def _ca_refusal(src: DirSource, info: ni.NarInfo, got: Digests, own: BatchEntry | None) -> str:
    """``admitca.refusal``, reading the NAR from the staged file of ``own`` (the entry
    carrying it, not linked in yet) when there is one."""
    if own is None or own.nar_file is None:
        return refusal(src.storage, info, got)
    name = own.nar_file.name
    why = ca_refusal(info, got, lambda: _staged_nar(name))
    return f"error: {info.path}: refusing its CA: {why}" if why else ""


def _staged_nar(path: str) -> Iterator[bytes]:
    """The NAR inside the staged object file at ``path``, decompressed."""
    with open(path, "rb") as f, zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as r:
        while chunk := r.read(CHUNK):
            yield chunk
