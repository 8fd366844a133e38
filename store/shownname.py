"""File names in kiln's messages: one line, unambiguous, nothing for a terminal to obey.

A build, an archive or a tree being added chooses its file names: a newline in one
printed raw starts a line of kiln's own (``x\\nerror: forged``), an escape sequence
would reach the terminal. ``shown_name`` writes a name as ``ls -b`` does: ``\\``,
``\\n``, ``\\t``, ``\\r`` escaped, and every other byte of a character that is not
printable (controls, bidi controls, separators other than space) or of a byte that is
not UTF-8 as ``\\xNN``; printable characters are themselves, so two names never show
alike. ``kiln store ls`` shows names so; every message naming a file of an output
(an unstorable file, a stray reference, ``--check``'s differences, an output kiln could
not process) goes through it.
"""

from __future__ import annotations

import os

_ESCAPES = {"\\": "\\\\", "\n": "\\n", "\t": "\\t", "\r": "\\r"}


def shown_name(name: str | bytes) -> str:
    """``name`` (a ``str`` decoded with ``surrogateescape``, or bytes) for a one-line
    message; see the module docstring. Not idempotent: a ``\\`` doubles."""
    if isinstance(name, bytes):
        name = os.fsdecode(name)
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
