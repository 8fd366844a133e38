"""A registry directory's rules for the ``CA:`` field, which no signature covers.

Invariants:

- a narinfo is published (``PUT``, ``POST /upload-batch``) only if its ``CA:`` is true of
  the object it names (``refusal``: the store's judge, ``pathadmit.ca_problem``, as
  ``kiln store verify`` and every import use); otherwise the answer is a 400 naming what
  the claim expects and what the object is, and nothing is written;
- a published narinfo whose ``CA:`` is false (published before this check, or written
  into the directory by hand) is repaired by the next admitted narinfo of the same
  content (``merged_ca``): its ``CA:`` is replaced by the new one's (checked), or
  dropped when the new one has none; a true published ``CA:`` is never replaced or
  dropped. A published ``CA:`` that does not even parse (malformed, or given twice) is
  false too (``published``), so it is repaired the same way rather than making the
  whole narinfo unmergeable. ``kiln push`` sends a narinfo again whenever the published
  ``CA:`` differs from the store's, so an honest push repairs it;
- ``kiln registry verify`` reports a false ``CA:`` as a content problem of that
  narinfo (``--delete-bad`` unpublishes it; the object, which is not at fault, stays).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator

import zstandard

from kiln.store import narinfo as ni
from kiln.store.errors import FormatError
from kiln.store.hashes import Hash

from . import layout
from .storage import Storage
from .verify import Digests, ca_refusal

CHUNK = 1 << 20


def nar_chunks(storage: Storage, file_hash: Hash) -> Iterator[bytes]:
    """The NAR inside object ``file_hash`` of ``storage``, decompressed (nothing if the
    object is gone; its digests were checked when it came in)."""
    f = storage.open(layout.nar_key(file_hash)) or storage.open(layout.blob_key(file_hash))
    if f is None:
        return
    with f, zstandard.ZstdDecompressor().stream_reader(f, read_across_frames=True) as r:
        while chunk := r.read(CHUNK):
            yield chunk


def _is_ca_line(line: str) -> bool:
    # how ``narinfo.parse`` splits a line: "CA: value", or "CA:" with nothing after
    return line.startswith("CA: ") or line == "CA:"


def published(body: bytes, store_dir: str) -> ni.NarInfo:
    """A narinfo already published in the directory, parsed to be merged with a new one.
    Its ``CA:`` lines are unsigned and may predate admission checks: when they are all
    that keeps it from parsing (a malformed value, or the field twice), it is parsed
    without them and its ``ca`` is their values joined by a newline, which no content
    address contains, so the judge finds it malformed and ``merged_ca`` replaces it.
    Any other fault raises ``FormatError`` as ``narinfo.parse`` does."""
    text = body.decode(errors="replace")
    try:
        return ni.parse(text, store_dir)
    except FormatError as e:
        lines = text.split("\n")
        cas = [line.partition(":")[2].removeprefix(" ") for line in lines if _is_ca_line(line)]
        if not cas:
            raise
        try:
            info = ni.parse("\n".join(line for line in lines if not _is_ca_line(line)), store_dir)
        except FormatError:
            raise e from None  # not (only) its CA: the original complaint
        return dataclasses.replace(info, ca="\n".join(cas))


def refusal(storage: Storage, info: ni.NarInfo, got: Digests) -> str:
    """The 400 message refusing ``info`` for its ``CA:`` ("" if it may be published);
    ``got`` are the digests of its object, already checked against ``info``."""
    assert info.file_hash is not None
    fh = info.file_hash
    why = ca_refusal(info, got, lambda: nar_chunks(storage, fh))
    return f"error: {info.path}: refusing its CA: {why}" if why else ""


def merged_ca(storage: Storage, old: ni.NarInfo, new: ni.NarInfo, got: Digests) -> tuple[str | None, str]:
    """The ``CA:`` the published ``old`` narinfo should carry after admitting ``new`` (same
    content; ``new``'s CA already checked, ``got`` the digests of ``new``'s object, which
    holds the same NAR), and what changed ("" if nothing): see the module docstring."""
    if (old.ca or None) == (new.ca or None):
        return old.ca, ""
    fh = new.file_hash
    assert fh is not None
    if old.ca and not ca_refusal(old, got, lambda: nar_chunks(storage, fh)):
        return old.ca, ""  # true: a narinfo without it (or another claim) changes nothing
    if old.ca:
        shown = old.ca if "\n" not in old.ca else repr(old.ca)  # (``published``'s join: one line)
        return new.ca, f"false CA {shown} " + (f"replaced by {new.ca}" if new.ca else "removed")
    return new.ca, f"CA {new.ca} added"
