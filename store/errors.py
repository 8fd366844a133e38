"""Exception types shared across kiln.store, and what messages must not show.

Every error a user can cause is a ``KilnError`` subclass with a message meant to be
printed as-is (the CLI prints ``error: <message>`` and exits non-zero; no traceback).
Messages end up in CI logs: ``redact_urls`` hides the credentials of any URL in a text
and ``hide_keys`` anything that may be key text (the CLI passes everything it writes to
stderr through both).
"""

from __future__ import annotations

import re

#: the user-info part of a URL: ``scheme://USER:PASSWORD@`` or ``scheme://TOKEN@``
_USERINFO = re.compile(r"(?<=://)([^\s@]*)@")  # (a / in an unencoded password too)


#: a run of base64 (either alphabet) longer than a public key's 44 characters
_KEYISH = re.compile(r"[A-Za-z0-9+/_-]{45,}")


#: a store path's base (``<32 nix32>-name``): 32 such characters in a row never come
#: out of base64 by chance, and a name after a hash may be CamelCase with digits
_STORE_BASE = re.compile(r"[0-9a-df-np-sv-z]{32}-")


def _random_looking(run: str) -> bool:
    """Whether ``run`` mixes cases and digits as random base64 does (~40 % upper, ~40 %
    lower, ~15 % digits): hex and nix32 have no uppercase, store paths are recognised,
    and CamelCase file names rarely have both a digit and 15 % capitals."""
    if _STORE_BASE.search(run):
        return False
    upper = sum(c.isupper() for c in run)
    lower = sum(c.islower() for c in run)
    return upper * 100 >= 15 * len(run) and lower * 100 >= 15 * len(run) and any(c.isdigit() for c in run)


def looks_like_key(text: str) -> bool:
    """Whether ``text`` could hold (part of) a secret key, in any spelling: with or
    without its ``name:``, quoted, wrapped at any width, in the URL-safe alphabet, with a
    newline. Hashes, store paths and ordinary file names do not count."""
    compact = re.sub(r"[\s\"']", "", text)  # (a key wrapped at 40 columns is one run again)
    return any(_random_looking(m.group()) for t in (text, compact) for m in _KEYISH.finditer(t))


def hide_keys(text: str) -> str:
    """``text`` with every run that may be key text replaced (see ``looks_like_key``)."""
    if not looks_like_key(text):
        return text
    out = _KEYISH.sub(
        lambda m: "<not shown: looks like key text>" if _random_looking(m.group()) else m.group(), text
    )
    # a key wrapped into short lines: no single run is long enough, hide the whole text
    return out if not looks_like_key(out) else "<not shown: looks like key text>"


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
