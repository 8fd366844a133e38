"""Exception types shared across kiln.store, and what messages must not show.

Every error a user can cause is a ``KilnError`` subclass with a message meant to be
printed as-is (the CLI prints ``error: <message>`` and exits non-zero; no traceback).
Messages end up in CI logs: ``redact_urls`` hides the credentials of any URL in a text
and ``hide_keys`` every secret key in it (the CLI passes everything it writes to stderr
through both); ``looks_like_key`` is the looser test for text given as a key.
``url_credentials`` says what credentials one URL carries (a user name or password, a
pre-signed URL's signature, a token in its query), for those who refuse such URLs: all
that it finds, ``redact_urls`` hides.
"""

from __future__ import annotations

import re
import urllib.parse

#: the user-info part of a URL: ``scheme://USER:PASSWORD@`` (up to the last ``@``
#: before a space: a password may hold ``@``, ``/``, ``?`` or ``#``), else
#: ``scheme://TOKEN@`` (a user name alone, up to the authority's end)
_USERINFO = re.compile(r"(?<=://)(?:([^\s/?#:@]*):([^\s]*)|([^\s/?#:@]+))@")
#: what after ``host:`` is a port and a path, not a password (``h:8080/p/@v/x``) ...
_PORT_PATH = re.compile(r"[0-9]+[/?#]")
#: ... unless the ``@`` is in the path's first segment, not at its start, and the "host"
#: is a user name (``_user_like``): ``user:1234/pw@host``, a password starting with digits
_PORT_THEN_PASSWORD = re.compile(r"[0-9]+[/?#][^/?#@]+@")
#: a user name that is a token: GitHub's and GitLab's prefixes, or any before GitHub's
#: ``x-oauth-basic`` password
_TOKEN_USER = re.compile(r"(?:gh[pousr]_|github_pat_|glpat-|gldt-)|[^:]*:x-oauth-basic\Z", re.IGNORECASE)
#: a URL's scheme and authority: up to the first ``/``, ``?`` or ``#`` after ``//``
_AUTHORITY = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://([^/?#]*)")
#: schemes where a user name alone is an account to log in as, not a secret
_SSH_SCHEMES = ("ssh://", "git+ssh://", "ssh+git://")
#: a query parameter (also in the fragment; after ``;`` too: HTML's ``&amp;``) with its
#: value, up to the next ``&``, ``#`` or what ends a URL in a message (a space, a quote,
#: ``<>``, a backslash of ``repr``; and ``_param_value`` leaves punctuation at its end:
#: "...?token=***: HTTP 404")
_PARAM = re.compile(r"(?<=[?&;])([A-Za-z0-9%_.+-]{1,64})=([^&#\s\"'<>\\]*)")
#: query parameters (names in lower case, percent-decoded) whose value is a credential:
#: pre-signed S3 (SigV4; ``Signature`` of SigV2, GCS V2 and CloudFront), GCS (V4) and
#: Azure SAS (``sig``, with ``sv``) URLs, GitLab's ``private_token``/``job_token``,
#: OAuth's ``access_token``, and tokens and API keys by their usual names
SECRET_PARAMS = frozenset(
    {
        "x-amz-signature",
        "x-amz-credential",
        "x-amz-security-token",
        "x-goog-signature",
        "x-goog-credential",
        "signature",
        "sig",
        "private_token",
        "job_token",
        "access_token",
        "oauth_token",
        "token",
        "api_key",
        "apikey",
    }
)


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
    """Where ``redact_urls`` hides the credentials of a URL in ``text``, in order and not
    overlapping: each span (a password; a user name alone, or with its password when it
    is a token: ``TOKEN:@``, ``ghp_...:x@``, ``TOKEN:x-oauth-basic@``; the value of a
    ``SECRET_PARAMS`` query parameter, whatever the URL) is shown as ``***``. For text
    whose other positions matter (the caret under a recipe error's excerpt). Hides all
    that ``url_credentials`` finds in a URL, and more."""
    spans = []
    if "@" in text:
        for m in _USERINFO.finditer(text):
            if m.group(3) is not None:
                spans.append(m.span(3))
            elif m.group(1) and (m.group(2) == "" or _TOKEN_USER.match(m.group(1) + ":" + m.group(2))):
                spans.append((m.start(1), m.end(2)))  # ``TOKEN:@host``, ``TOKEN:x-oauth-basic@``
            elif not _PORT_PATH.match(m.group(2)) or (
                _user_like(m.group(1)) and _PORT_THEN_PASSWORD.match(m.group(2) + "@")
            ):  # (not a host, its port and a path with an @ in it)
                spans.append(m.span(2))
    if "=" in text:
        for m in _PARAM.finditer(text):
            value = _param_value(m)
            if value[0] < value[1] and urllib.parse.unquote_plus(m.group(1)).lower() in SECRET_PARAMS:
                spans.append(value)
    if len(spans) < 2:
        return spans
    merged = [sorted(spans)[0]]
    for start, end in sorted(spans)[1:]:
        if start <= merged[-1][1]:
            merged[-1] = (merged[-1][0], max(end, merged[-1][1]))
        else:
            merged.append((start, end))
    return merged


def _param_value(m: re.Match[str]) -> tuple[int, int]:
    """Where the value of the ``_PARAM`` match ``m`` is, without what ends a sentence
    (``.,:;)``: no token ends so) after it."""
    return m.start(2), m.start(2) + len(m.group(2).rstrip(".,:;)"))


def _user_like(host: str) -> bool:
    """Whether ``host`` (before ``:digits``) may be a user name rather than a host: one
    label with a letter, not ``localhost`` (``user``, ``x-access-token``, ``oauth2``)."""
    return (
        re.fullmatch(r"[A-Za-z0-9_-]*[A-Za-z_][A-Za-z0-9_-]*", host) is not None
        and host.lower() != "localhost"
    )


def url_credentials(url: str, *, ssh_user: bool = False, query: bool = True) -> str | None:
    """What credentials the URL ``url`` carries, for a message ("a user name, password or
    token before '@'", "the query parameters 'X-Amz-Credential', 'X-Amz-Signature'"), or
    None; ``redact_urls`` hides all of them. ``ssh_user``: a user name alone is fine in an
    ``ssh://`` URL (it names an account). ``query=False``: the query is not looked at.
    Query parameters: those in ``SECRET_PARAMS`` with a value (Azure's ``sig`` only
    beside an ``sv``), names compared percent-decoded and in any case.

    A password holding an unencoded ``/``, ``?`` or ``#`` ends the authority early: urllib
    then takes ``user:pass`` for a host and a "port" (quoting it in its errors) and the
    rest for a path. So ``host:X`` followed later by an ``@`` is a user name and password
    when X is not a number; when it is one, only if the ``@`` is in the first path segment
    (not at its start) and the host has the shape of a user name (``user:1234/pw@host``;
    not ``localhost:4873/@scope/pkg``, ``h:8080/p/@v/x``, ``proxy.golang.org:443/m/@v/x``).
    An ``@`` in a path is otherwise a path's (``https://registry.npmjs.org/@scope/pkg``)."""
    m = _AUTHORITY.match(url)
    if m is not None:
        authority, rest = m.group(1), url[m.end() :]
        if "@" in authority:
            user = authority.rpartition("@")[0]
            if user.strip(":") and not (
                ssh_user and url.lower().startswith(_SSH_SCHEMES) and ":" not in user
            ):
                return "a user name, password or token before '@'"
        elif "@" in rest and not authority.endswith("]"):
            host, colon, port = authority.rpartition(":")
            if colon and (
                not re.fullmatch("[0-9]+", port)
                or (_user_like(host) and _PORT_THEN_PASSWORD.match(port + rest))
            ):
                return "a user name and a password (holding '/', '?' or '#', which end a URL's host part)"
    if query:
        params = [(urllib.parse.unquote_plus(p.group(1)), _param_value(p)) for p in _PARAM.finditer(url)]
        azure = any(name.lower() == "sv" for name, _ in params)  # (``sig`` alone may be anything)
        found = [
            name
            for name, (start, end) in params
            if start < end and name.lower() in SECRET_PARAMS and (name.lower() != "sig" or azure)
        ]
        if found:
            return f"the query parameter{'s' if len(found) > 1 else ''} {', '.join(map(repr, found))}"
    return None


def redact_urls(text: str) -> str:
    """``text`` with the credentials of every URL in it hidden: a password becomes
    ``***``, and a user name alone (often a token: ``https://ghp_...@host``) too, and the
    value of a query parameter that carries one (``SECRET_PARAMS``)."""
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


class NoStoreError(StoreError):
    """There is no store where one was to be opened (no ``config.json``): a caller's
    mistake, unlike a store that is there but unusable (a damaged database)."""
