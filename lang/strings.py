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

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}


class _Opaque:
    """A character that indentation stripping must treat as content."""

    __slots__ = ("value",)

    def __init__(self, value: object) -> None:
        self.value = value


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


def split_indented(token: str) -> list:
    """Pieces of a ``''...''`` token, with indentation stripped."""
    chars: list = []
    i, end = 2, len(token) - 2
    while i < end:
        c = token[i]
        if c == "'" and token.startswith("''", i):
            if token.startswith("'''", i):
                chars.append(_Opaque("''"))
                i += 3
            elif token.startswith("''$", i):
                chars.append(_Opaque("$"))
                i += 3
            elif token.startswith("''\\", i) and i + 3 < len(token):
                nxt = token[i + 3]
                chars.append(_Opaque(_ESCAPES.get(nxt, nxt)))
                i += 4
            else:  # cannot happen: the lexer ends the token here
                chars.append(c)
                i += 1
        elif c == "$" and token.startswith("${", i):
            close = _interp_end(token, i + 2)
            chars.append(_Opaque((i + 2, token[i + 2 : close])))
            i = close + 1
        else:
            chars.append(c)
            i += 1
    lines: list[list] = [[]]
    for c in chars:
        if c == "\n":
            lines.append([])
        else:
            lines[-1].append(c)

    def blank(line: list) -> bool:
        return all(c == " " for c in line)

    if len(lines) > 1 and blank(lines[0]):
        lines.pop(0)
    indents = []
    for line in lines:
        if not blank(line):
            n = 0
            while line[n] == " ":
                n += 1
            indents.append(n)
    strip = min(indents, default=0)
    if lines and blank(lines[-1]):
        lines[-1] = []
    out: list = []
    buf: list[str] = []
    for k, line in enumerate(lines):
        if k:
            buf.append("\n")
        for c in line[strip:] if not blank(line) else line[min(strip, len(line)) :]:
            if isinstance(c, _Opaque):
                if isinstance(c.value, tuple):
                    if buf:
                        out.append("".join(buf))
                        buf = []
                    out.append(c.value)
                else:
                    buf.append(c.value)
            else:
                buf.append(c)
    if buf:
        out.append("".join(buf))
    return out
