"""``kiln store cat``, ``ls`` and ``dump``: reading a store path's verified object to
stdout.

Invariant: nothing unverified reaches stdout as if it were good. ``cat`` spools the file
(in memory up to ``CAT_IN_MEMORY``, then in the store's ``tmp/``) until the whole archive
has verified; ``dump`` streams one piece behind, so a corrupt object ends in a truncated
NAR (which ``kiln store restore`` and ``nix-store --restore`` refuse) and a failure. Every
write to stdout is checked: a short write (a file size limit, a full disk) is an error,
never a silent truncation. Names are printed with backslash escapes (``shown``).
"""

from __future__ import annotations

import os
import sys
from typing import TYPE_CHECKING

from .common import WRITE_LIMIT_ERRNOS

if TYPE_CHECKING:
    from kiln.store.localstore import LocalStore

#: ``store cat`` keeps this much of a file in memory; the rest is spooled to the store's
#: ``tmp/`` until the archive is verified (no unverified byte reaches stdout)
CAT_IN_MEMORY = 32 << 20


def cat(store: LocalStore, path: str, subpath: str) -> None:
    """Write the file at ``subpath`` inside ``path`` to stdout, once all of it verified."""
    import tempfile

    from kiln.store import nar

    spool = store.root / "tmp"
    with tempfile.SpooledTemporaryFile(CAT_IN_MEMORY, dir=spool, prefix=f"{os.getpid()}-cat-") as f:
        try:
            nar.cat_into(store.nar(path), subpath, f.write)
        except OSError as e:  # the spool's disk is full: not the store's contents
            if e.filename is not None or e.errno not in WRITE_LIMIT_ERRNOS:
                raise
            from kiln.store.errors import StoreError

            raise StoreError(f"cannot hold {path} in {spool} while it is verified: {e.strerror}") from None
        f.seek(0)
        for piece in iter(lambda: f.read(1 << 20), b""):
            write_stdout(piece)


def ls(store: LocalStore, path: str, subpath: str, recursive: bool) -> None:
    """Print the entries under ``subpath`` inside ``path``, one line each."""
    from kiln.store import nar

    for e in nar.ls(store.nar(path), subpath, recursive=recursive):
        extra = (
            f" -> {shown(e.target or '')}"
            if e.type == "symlink"
            else (f" {e.size}" if e.type != "directory" else "")
        )
        print(f"{e.type:<10} {shown(e.path) if e.path else '.'}{extra}")


def dump(store: LocalStore, path: str) -> None:
    """Write the NAR of ``path`` to stdout, one piece behind its verification."""
    sys.stdout.flush()
    held = None
    for chunk in store.nar(path):
        if held is not None:
            write_stdout(held)
        held = chunk
    if held is not None:
        write_stdout(held)


def write_stdout(data: bytes | memoryview) -> None:
    """Write all of ``data`` to stdout, or raise (``sys.stdout.buffer.write`` may return
    a short count for a big buffer, e.g. at a file size limit, and say nothing)."""
    from kiln.store.nar_restore import write_all

    write_all(sys.stdout.fileno(), data)


_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def shown(name: str) -> str:
    """A name on one line, unambiguously (as ``ls -b``): ``\\``, ``\\n``, ``\\t``,
    ``\\r``, and every other byte of an unprintable character, or a byte that is not
    UTF-8, as ``\\xNN``. Printable characters are themselves, so two names never show
    alike: the escapes spell the name's bytes."""
    if name.isprintable() and "\\" not in name:
        return name
    out = []
    for c in name:
        if c in _ESCAPES:
            out.append(_ESCAPES[c])
        elif c.isprintable():
            out.append(c)
        else:  # its bytes (a surrogate from surrogateescape is the raw byte)
            out.extend(f"\\x{b:02x}" for b in c.encode("utf-8", "surrogateescape"))
    return "".join(out)
