"""Exception types shared across kiln.store, and what messages must not show.

Every error a user can cause is a ``KilnError`` subclass with a message meant to be
printed as-is (the CLI prints ``error: <message>`` and exits non-zero; no traceback).
Messages end up in CI logs: ``redact_urls`` hides the credentials of any URL in a text
(the CLI passes everything it writes to stderr through it).
"""

from __future__ import annotations

import re

#: the user-info part of a URL: ``scheme://USER:PASSWORD@`` or ``scheme://TOKEN@``
_USERINFO = re.compile(r"(?<=://)([^\s@]*)@")  # (a / in an unencoded password too)


def redact_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it hidden: a password becomes
    ``***``, and a user name alone (often a token: ``https://ghp_...@host``) too."""

    def hide(m: re.Match) -> str:
        user, colon, _ = m.group(1).partition(":")
        return f"{user}:***@" if colon else "***@"

    return _USERINFO.sub(hide, text) if "@" in text else text


class KilnError(Exception):
    """Base class for errors that are reported to the user without a traceback."""


class FormatError(KilnError):
    """Malformed input in one of the wire formats (NAR, narinfo, key, hash, path, drv)."""


class HashMismatch(KilnError):
    """Content did not hash to what was expected."""

    def __init__(self, what: str, expected: str, got: str) -> None:
        super().__init__(f"hash mismatch for {what}:\n  expected: {expected}\n  got:      {got}")
        self.what = what
        self.expected = expected
        self.got = got


class StoreError(KilnError):
    """An operation on the local store failed (missing path, corrupt object, lock...)."""
