"""A ``.deb``'s control file: what the package says it is (``debpin.DebIdentity``).

Theory of operation
-------------------
The ``control.tar[.gz|.xz|.zst|.bz2]`` member is read with the same decoders and bounded
tar reader as the data member (``debstreams``, ``debarchive``), but nothing is written:
its ``control`` file (``./control``) is read into memory, at most
``MAX_CONTROL_FILE`` bytes, and the other members (``md5sums``, maintainer scripts...)
are skipped, at most ``MAX_CONTROL_MEMBERS`` of them with ``MAX_CONTROL_BYTES`` of data
in all, so a small control archive cannot make the reader decompress gigabytes. The
archive must end with tar's end-of-archive blocks and nothing but NUL padding.

The file's first paragraph is parsed as deb822 (``Field: value`` lines, continuation
lines starting with a space or tab, field names case-insensitive). ``Package``,
``Version`` and ``Architecture`` must be there: a package that does not say what it is
cannot be checked against its pin, so it is refused. Everything is a ``FormatError``
naming the package; an ``OSError`` with an errno (reading the ``.deb`` failed) passes
through as it is.
"""

from __future__ import annotations

import tarfile
from collections.abc import Sequence
from pathlib import Path, PurePosixPath
from typing import BinaryIO

from .debarchive import ArMember, Window, check_tail, next_member, open_data, open_tar
from .debpin import DebIdentity
from .errors import FormatError

#: largest control file read (real ones have a few KB; long Provides lists some tens)
MAX_CONTROL_FILE = 1 << 20
#: members of a control archive (real ones have up to a dozen)
MAX_CONTROL_MEMBERS = 1000
#: data of all control archive members together (the largest md5sums are a few MB)
MAX_CONTROL_BYTES = 64 << 20

_REQUIRED = ("Package", "Version", "Architecture")


def read_control(f: BinaryIO, members: Sequence[ArMember], deb: Path) -> DebIdentity:
    """What the ``.deb`` open as ``f`` (with ``ar`` members ``members``) says it is."""
    found = [m for m in members if m.name.startswith("control.tar")]
    if len(found) != 1:
        raise FormatError(f"{deb.name}: expected one control.tar member, found {len(found)}")
    member = found[0]
    what = f"{deb.name}: {member.name}"
    stream = open_data(member.name, Window(f, member.offset, member.size), deb)
    text: bytes | None = None
    count = total = 0
    try:
        with open_tar(stream) as tar:
            while (m := next_member(tar)) is not None:
                count += 1
                total += max(m.size, 0)
                if count > MAX_CONTROL_MEMBERS or total > MAX_CONTROL_BYTES:
                    raise FormatError(
                        f"{what}: more than {MAX_CONTROL_MEMBERS} members or {MAX_CONTROL_BYTES} bytes "
                        f"(at {m.name!r}; real control archives hold a few files of a few KB)"
                    )
                if PurePosixPath(m.name).parts not in (("control",), (".", "control")):
                    continue
                if not m.isreg():
                    raise FormatError(
                        f"{what}: expected 'control' to be a regular file, found type {m.type!r}"
                    )
                if text is not None:
                    raise FormatError(f"{what}: expected one control file, found a second one ({m.name!r})")
                if m.size > MAX_CONTROL_FILE:
                    raise FormatError(
                        f"{what}: control file of {m.size} bytes (expected at most {MAX_CONTROL_FILE})"
                    )
                src = tar.extractfile(m)
                assert src is not None
                text = src.read()
            if not tar.kiln_ended:  # type: ignore[attr-defined]
                raise FormatError(f"{what}: truncated control archive (no end-of-archive marker)")
            check_tail(tar, what)
    except (tarfile.TarError, EOFError) as e:
        raise FormatError(f"{deb.name}: corrupt control archive: {e}") from None
    if text is None:
        raise FormatError(
            f"{what}: no control file (expected ./control, saying the package's "
            "Package, Version and Architecture)"
        )
    return parse_control(text, f"{deb.name}: control file")


def parse_control(data: bytes, what: str) -> DebIdentity:
    """``Package``, ``Version`` and ``Architecture`` of the first deb822 paragraph of
    ``data``; ``FormatError`` starting with ``what`` if it is not UTF-8, malformed, or
    lacks one of them (or gives one twice, or empty)."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise FormatError(f"{what}: expected UTF-8 text, found {e.reason} at byte {e.start}") from None
    fields: dict[str, str] = {}
    last: str | None = None
    for line in text.split("\n"):
        if not line.strip():
            if fields:
                break  # the end of the first paragraph
            continue
        if line[0] in " \t":
            if last is None:
                raise FormatError(f"{what}: expected a field before the continuation line {line[:80]!r}")
            fields[last] += "\n" + line.strip()
            continue
        key, colon, value = line.partition(":")
        if not colon or not key or any(c.isspace() for c in key):
            raise FormatError(f"{what}: expected 'Field: value', found {line[:80]!r}")
        last = key.lower()  # deb822 field names are case-insensitive
        if last in fields:
            raise FormatError(f"{what}: field {key!r} is given twice")
        fields[last] = value.strip()
    missing = [k for k in _REQUIRED if not fields.get(k.lower())]
    if missing:
        raise FormatError(
            f"{what}: lacks {', '.join(missing)} (expected Package, Version and Architecture, "
            f"found fields {sorted(fields) or 'none'})"
        )
    return DebIdentity(*(fields[k.lower()] for k in _REQUIRED))
