"""Exception types shared across kiln.store, and what messages must not show.

Every error a user can cause is a ``KilnError`` subclass with a message meant to be
printed as-is (the CLI prints ``error: <message>`` and exits non-zero; no traceback).
Messages end up in CI logs: ``redact_urls`` hides the credentials of any URL in a text
and ``hide_keys`` every secret key in it (the CLI passes everything it writes to stderr
through both); ``looks_like_key`` is the looser test for text given as a key.
"""

from __future__ import annotations

import re

#: the user-info part of a URL: ``scheme://USER:PASSWORD@`` or ``scheme://TOKEN@``, up
#: to the authority's last ``@`` (as ``urlsplit`` reads it: a password may hold an ``@``)
_USERINFO = re.compile(r"(?<=://)([^\s/?#]*)@")


#: a run of base64 (either alphabet) longer than a public key's 44 characters
_KEYISH = re.compile(r"[A-Za-z0-9+/_-]{45,}")


#: what is not key text although it looks random: a store path's base (``<32
#: nix32>-name``; 32 such characters in a row never come out of base64 by chance) and an
#: SRI hash (``sha256-<base64>``)
_NOT_KEY = re.compile(r"[0-9a-df-np-sv-z]{32}-|^sha(1|256|384|512)-")


def _random_looking(run: str) -> bool:
    """Whether ``run`` mixes cases and digits as random base64 does (~40 % upper, ~40 %
    lower, ~15 % digits): hex and nix32 have no uppercase, store paths and SRI hashes are
    recognised, and CamelCase file names rarely have both a digit and 15 % capitals."""
    if _NOT_KEY.search(run):
        return False
    upper = sum(c.isupper() for c in run)
    lower = sum(c.islower() for c in run)
    return upper * 100 >= 15 * len(run) and lower * 100 >= 15 * len(run) and any(c.isdigit() for c in run)


def looks_like_key(text: str) -> bool:
    """Whether ``text``, given where a key or a key's file belongs, could hold (part of) a
    secret key, in any spelling: with or without its ``name:``, quoted, wrapped at any
    width (or shown wrapped by ``repr``), in the URL-safe alphabet. A heuristic for key
    arguments only: ordinary messages go through ``hide_keys``, which is exact."""
    compact = re.sub(r"\\[nrt]|[\s\"']", "", text)  # (a wrapped key is one run again)
    return any(_random_looking(m.group()) for t in (text, compact) for m in _KEYISH.finditer(t))


#: a stretch of text that may hold a secret key, wrapped or not (``repr``'s ``\n`` too)
_KEY_REGION = re.compile(r"(?:[A-Za-z0-9+/=_-]|\\[nrt]|[ \t\r\n])+")


def hide_keys(text: str) -> str:
    """``text`` with every ed25519 secret key in it (``<seed><public key>``, base64, either
    alphabet, wrapped or not) replaced. Exact, not a guess: 64 bytes count only when the
    second half is the public key of the first, so hashes, signatures, paths and build
    logs are never touched. Cheap when there is no such stretch of 86+ characters."""
    if len(text) < 86:
        return text
    out, last = [], 0
    for m in _KEY_REGION.finditer(text):
        if m.end() - m.start() >= 86 and _holds_secret_key(m.group()):
            out += [text[last : m.start()], " <not shown: a secret key> "]
            last = m.end()
    return "".join(out) + text[last:] if out else text


def _holds_secret_key(region: str) -> bool:
    import base64
    import binascii

    # 64 bytes are 86 base64 characters and "==": a key ends at its padding, or (padding
    # dropped) at a break (a space, a line end) or the region's end; only those windows
    # are decoded
    pieces = re.split(r"\\[nrt]|\s", region)
    compact = "".join(pieces)
    ends = {m.start() for m in re.finditer("==", compact)} | {len(compact)}
    at = 0
    for piece in pieces:
        at += len(piece)
        ends.add(at)
    for i in sorted({e - 86 for e in ends if e >= 86}):
        chunk = compact[i : i + 86] + "=="
        try:
            raw = base64.b64decode(chunk.replace("-", "+").replace("_", "/"), validate=True)
        except (binascii.Error, ValueError):
            continue
        if len(raw) == 64:
            import nacl.signing

            if bytes(nacl.signing.SigningKey(raw[:32]).verify_key) == raw[32:]:
                return True
    return False


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
