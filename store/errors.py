"""Exception types shared across kiln.store, and what messages must not show.

Every error a user can cause is a ``KilnError`` subclass with a message meant to be
printed as-is (the CLI prints ``error: <message>`` and exits non-zero; no traceback).
Messages end up in CI logs: ``redact_urls`` hides the credentials of any URL in a text
and ``hide_keys`` every secret key in it (the CLI passes everything it writes to stderr
through both); ``looks_like_key`` is the looser test for text given as a key.
"""

from __future__ import annotations

import re

#: the user-info part of a URL: ``scheme://USER:PASSWORD@`` (up to the last ``@``
#: before a space: a password may hold ``@``, ``/``, ``?`` or ``#``), else
#: ``scheme://TOKEN@`` (a user name alone, up to the authority's end)
_USERINFO = re.compile(r"(?<=://)(?:([^\s/?#:@]*):([^\s]*)|([^\s/?#:@]+))@")
#: what after ``host:`` is a port and a path, not a password (``h:8080/p/@v/x``)
_PORT_PATH = re.compile(r"\d+[/?#]")


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


#: a stretch of text that may hold a secret key, wrapped or not (``repr``'s ``\n``, a
#: JSON-escaped ``\/`` too)
_KEY_REGION = re.compile(r"(?:[A-Za-z0-9+/=_-]|\\[nrt/]|[ \t\r\n])+")
#: inside a region: what is not key text (breaks between wrapped lines)
_BREAK = re.compile(r"\\[nrt]|\s+")


def hide_keys(text: str) -> str:
    """``text`` with every ed25519 secret key in it (``<seed><public key>``, base64, either
    alphabet, wrapped or not) replaced, and nothing else. Exact, not a guess: 64 bytes
    count only when the second half is the public key of the first, so hashes,
    signatures, paths and build logs are never touched."""
    if len(text) < 86:
        return text
    out, last = [], 0
    for m in _KEY_REGION.finditer(text):
        if m.end() - m.start() < 86:
            continue
        for a, b in _secret_key_spans(m.group()):
            out += [text[last : m.start() + a], "<not shown: a secret key>"]
            last = m.start() + b
    return "".join(out) + text[last:] if out else text


def _secret_key_spans(region: str) -> list[tuple[int, int]]:
    """Where in ``region`` (start, end) its secret keys are."""
    import base64
    import binascii

    # the key's characters, with where each was in the region; breaks split it in pieces
    chars: list[str] = []
    where: list[int] = []
    starts = [0]  # where each piece starts in ``chars``
    pos = 0
    for m in _BREAK.finditer(region):
        _take(region, pos, m.start(), chars, where)
        starts.append(len(chars))
        pos = m.end()
    _take(region, pos, len(region), chars, where)
    compact = "".join(chars)
    # 64 bytes are 86 base64 characters and "==": a key ends at its padding, or (padding
    # dropped) at a break or the region's end. Only those windows are decoded, and only
    # those whose inner pieces are 16 characters or more (a wrapped key; not prose)
    ends = {m.start() for m in re.finditer("==", compact)} | set(starts[1:]) | {len(compact)}
    spans: list[tuple[int, int]] = []
    done = 0
    for i in sorted({e - 86 for e in ends if e >= 86}):
        if i < done or not _wrapped_like_a_key(starts, i, i + 86):
            continue
        try:
            raw = base64.b64decode(
                (compact[i : i + 86] + "==").replace("-", "+").replace("_", "/"), validate=True
            )
        except (binascii.Error, ValueError):
            continue
        import nacl.signing

        if len(raw) == 64 and bytes(nacl.signing.SigningKey(raw[:32]).verify_key) == raw[32:]:
            end = i + 86
            while end < min(i + 88, len(compact)) and compact[end] == "=":  # its padding goes too
                end += 1
            spans.append((where[i], where[end - 1] + 1))
            done = end
    return spans


def _take(region: str, a: int, b: int, chars: list[str], where: list[int]) -> None:
    r"""Append ``region[a:b]``'s characters (a JSON ``\/`` as ``/``) and their places."""
    k = a
    while k < b:
        if region.startswith("\\/", k):
            chars.append("/")
            where.append(k)
            k += 2
        else:
            chars.append(region[k])
            where.append(k)
            k += 1


def _wrapped_like_a_key(starts: list[int], i: int, j: int) -> bool:
    """Whether the pieces that window ``[i, j)`` spans are each 16 characters or more,
    except its first and last: key text is wrapped at 40-76 columns, prose is not."""
    import bisect

    lo, hi = bisect.bisect_right(starts, i), bisect.bisect_left(starts, j)
    if hi - lo > 6:  # (86 characters hold at most 6 breaks of 16-character lines)
        return False
    inner = starts[lo:hi]
    return all(b - a >= 16 for a, b in zip(inner, inner[1:], strict=False))


def credential_spans(text: str) -> list[tuple[int, int]]:
    """Where ``redact_urls`` hides the credentials of a URL in ``text``, in order: each
    span (a password, or a user name alone: often a token) is shown as ``***``. For
    text whose other positions matter (the caret under a recipe error's excerpt)."""
    if "@" not in text:
        return []
    spans = []
    for m in _USERINFO.finditer(text):
        if m.group(3) is not None:
            spans.append(m.span(3))
        elif not _PORT_PATH.match(m.group(2)):  # (a host, its port and a path with an @ in it)
            spans.append(m.span(2))
    return spans


def redact_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it hidden: a password becomes
    ``***``, and a user name alone (often a token: ``https://ghp_...@host``) too."""
    out, last = [], 0
    for start, end in credential_spans(text):
        out += [text[last:start], "***"]
        last = end
    return "".join(out) + text[last:] if out else text


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
