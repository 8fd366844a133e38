"""Exception types shared across kiln.store.

Every error a user can cause is a ``KilnError`` subclass with a message meant to be
printed as-is (the CLI prints ``error: <message>`` and exits non-zero; no traceback).
"""

from __future__ import annotations


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
