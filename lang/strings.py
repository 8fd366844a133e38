"""Splitting string literals into text and ``${...}`` interpolations.

Two literal forms (as in Nix):

- ``"..."``: escapes ``\\n \\t \\r \\\\ \\" \\$``; ``\\${`` is a literal ``${``.
- ``''...''`` (indented): the common leading indentation of the non-blank lines is
  removed, a first line holding only spaces is dropped, and a last line holding only
  spaces is emptied. Escapes: ``''$`` → ``$`` (so ``''${`` is a literal ``${``),
  ``'''`` → ``''``, ``''\\n`` / ``''\\t`` / ``''\\r`` / ``''\\<c>``. Interpolated values
  and escaped characters count as content (they are never stripped).

``split`` returns a list of pieces: ``str`` for literal text and ``(offset, code)`` for
interpolations, where ``offset`` is the position of ``code`` inside the token text.
"""

from __future__ import annotations

import re

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


def _interp_end(text: str, i: int) -> int:
    """Index of the ``}`` closing the interpolation whose ``${`` ends just before ``i``;
    -1 if unterminated. Skips braces inside nested quoted strings."""
    depth = 1
    n = len(text)
    while i < n:
        c = text[i]
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif c == "{":
            depth += 1
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i
        i += 1
    return -1


def split_plain(token: str) -> list:
    """Pieces of a ``"..."`` token (quotes included in ``token``)."""
    if "\\" not in token and "${" not in token:
        return [token[1:-1]]
    out: list = []
    buf: list[str] = []
    i, end = 1, len(token) - 1
    while i < end:
        c = token[i]
        if c == "\\" and i + 1 < end:
            nxt = token[i + 1]
            buf.append(_ESCAPES.get(nxt, nxt))
            i += 2
        elif c == "$" and token.startswith("${", i):
            close = _interp_end(token, i + 2)
            if buf:
                out.append("".join(buf))
                buf = []
            out.append((i + 2, token[i + 2 : close]))
            i = close + 1
        else:
            buf.append(c)
            i += 1
    if buf:
        out.append("".join(buf))
    return out


_IND_SPECIAL = re.compile(r"''(?:'|\$|\\.)|\$\{", re.S)
_HOLE = "\uffff"  # stands for an escaped character or an interpolation while stripping


def split_indented(token: str) -> list:
    """Pieces of a ``''...''`` token, with indentation stripped."""
    body = token[2:-2]
    holes: list = []
    chunks: list[str] = []
    last = 0
    for m in _IND_SPECIAL.finditer(body):
        if m.start() < last:
            continue
        chunks.append(body[last : m.start()])
        text = m.group()
        if text == "${":
            close = _interp_end(body, m.end())
            holes.append((m.end() + 2, body[m.end() : close]))
            last = close + 1
        else:
            c = text[2:]
            holes.append(c if c in ("$", "'") else _ESCAPES.get(c[1], c[1]))
            if c == "'":
                holes[-1] = "''"
            last = m.end()
        chunks.append(_HOLE)
    chunks.append(body[last:])
    lines = "".join(chunks).split("\n")
    if len(lines) > 1 and not lines[0].strip(" "):
        lines.pop(0)
    strip = min((len(x) - len(x.lstrip(" ")) for x in lines if x.strip(" ")), default=0)
    if lines and not lines[-1].strip(" "):
        lines[-1] = ""
    text = "\n".join(x[strip:] if x.strip(" ") else x[min(strip, len(x)) :] for x in lines)
    if not holes:
        return [text] if text else []
    out: list = []
    buf = ""
    for i, piece in enumerate(text.split(_HOLE)):
        buf += piece
        if i < len(holes):
            h = holes[i]
            if isinstance(h, tuple):
                if buf:
                    out.append(buf)
                buf = ""
                out.append(h)
            else:
                buf += h
    if buf:
        out.append(buf)
    return out
