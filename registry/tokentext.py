"""Keeping registry credentials out of the text kiln shows.

Two rules, both exact (nothing is guessed at):

- ``hide_tokens``: every kiln token (``kiln_<8 hex>_<secret>``, ``auth.TokenStore.create``'s
  shape) in a text becomes ``kiln_<id>_***``. The id stays (it is not secret: ``token
  list`` shows it, the access log records it) and says which token was pasted. A secret
  counts from ``MIN_SECRET`` characters on, fewer than the 43 of a whole one, so a token
  a message cut short is hidden too. kiln's stderr filter (``cli/common._Quiet``) applies
  it to every message.
- ``scrub``: the credentials a client sent (``sent_secrets``: its bearer token, the
  value of its Basic ``Authorization`` header and the password in it, each also as JSON
  or a URL would escape it) become ``***`` in text a server chose (an error body, the
  per-path messages of a batch answer): a server or a proxy that quotes the request's
  ``Authorization`` header back ("denied for Bearer kiln_...") must not put the token in
  kiln's output, which ends up in CI logs; a Basic password need not be kiln-shaped,
  so the pattern above would not find it. A text that ends inside one (a quote cut at a
  size cap) loses that start too (from ``MIN_CUT`` characters). Every secret is
  replaced whatever its length: a one-letter password garbles the message rather than
  shows.

Clients without credentials (``DirClient``) have no ``sent_secrets``; ``sent_by`` gives
``()`` for them.
"""

from __future__ import annotations

import re
from collections.abc import Collection

#: the shortest run of secret characters after ``kiln_<id>_`` that is hidden as a token
MIN_SECRET = 16
#: a kiln token, or its start from ``MIN_SECRET`` secret characters on; group 1 is the id
TOKEN = re.compile(rf"kiln_([0-9A-Fa-f]{{8}})_[A-Za-z0-9_-]{{{MIN_SECRET},}}")
#: a whole token (``auth``'s secrets are 43 characters; some slack for other generators)
WHOLE_TOKEN = re.compile(r"kiln_([0-9A-Fa-f]{8})_[A-Za-z0-9_-]{40,}")
#: the shortest start of a secret hidden where a text ends inside it
MIN_CUT = 8


def hide_tokens(text: str) -> str:
    """``text`` with every kiln token in it replaced by ``kiln_<id>_***``."""
    if "kiln_" not in text:  # (the common case, on every write to stderr)
        return text
    return TOKEN.sub(lambda m: f"kiln_{m.group(1)}_***", text)


def looks_like_token(text: str) -> bool:
    """Whether ``text`` is (only) a kiln token: given where a URL, a directory or a file
    belongs, it is a pasted token, never a name to create or to show."""
    return WHOLE_TOKEN.fullmatch(text.strip()) is not None


def shown_token(text: str) -> str:
    """How a message names a token ``looks_like_token`` found: ``kiln_<id>_***``."""
    return hide_tokens(text.strip())


def sent_secrets(token: str | None, basic: str | None) -> tuple[str, ...]:
    """What must never be quoted back from a server that was sent bearer ``token`` and
    the Basic ``Authorization`` header value ``basic`` (``"Basic <base64>"``): each, the
    base64 alone, the password it holds, and their JSON and percent-escaped spellings.
    Longest first, so a longer secret is replaced before a shorter one inside it."""
    import base64
    import binascii
    import json
    from urllib.parse import quote

    raw: list[str] = [token] if token else []
    if basic:
        value = basic.partition(" ")[2]
        raw.append(value)
        try:
            password = base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            password = ""
        if password:
            raw.append(password)
    out: set[str] = set()
    for s in raw:
        escaped = json.dumps(s)[1:-1]
        out |= {s, escaped, escaped.replace("/", "\\/"), quote(s, safe="")}
    return tuple(sorted(out, key=len, reverse=True))


def sent_by(client: object) -> tuple[str, ...]:
    """``client``'s ``sent_secrets`` (an ``HttpClient``'s), or ``()`` for one that sends
    no credentials."""
    return getattr(client, "sent_secrets", ())


def scrub(text: str, secrets: Collection[str]) -> str:
    """``text`` (a server's) with each of ``secrets`` replaced by ``***``, and a start of
    one at least ``MIN_CUT`` characters long that ends the text (a cut quote) too."""
    for s in secrets:
        text = text.replace(s, "***")
    for s in secrets:
        for k in range(len(s) - 1, MIN_CUT - 1, -1):
            if text.endswith(s[:k]):
                text = text[:-k] + "***"
                break
    return text
