"""Splitting string literals into text and ``${...}`` interpolations.

Two literal forms (as in Nix):

- ``"..."``: escapes ``\\n \\t \\r \\\\ \\" \\$``; ``\\${`` is a literal ``${``; ``$$``
  is literal text (so ``$${x}`` is the text ``$${x}``, as in Nix), in both forms.
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


def _interp_end(text: str, i: int, indented: bool) -> int:
    """Index of the ``}`` closing the interpolation whose ``${`` ends just before ``i``
    (in a ``''`` string if ``indented``, else in a ``"`` string). Skips braces inside
    nested quoted strings. The token was lexed, so the interpolation is closed: -1 here
    would mean the lexer and this scan disagree, and is an internal error rather than
    a loop over the same text."""
    end = _scan_interp(text, i, indented)[0]
    if end < 0:
        raise RuntimeError(f"lexed string with an unterminated interpolation at offset {i}")
    return end


def _scan_interp(text: str, i: int, indented: bool) -> tuple[int, int]:
    """From just after a ``${``: (index of its closing ``}`` or -1 if unterminated,
    position of the first ``{`` nested more than ``MAX_NESTING`` deep in it or -1).
    Braces inside nested quoted strings do not count: ``"..."``, and ``''...''`` only in
    an interpolation of an indented string (``indented``), as recipe.lark's regexes
    read them (in a ``"`` string's interpolation ``''`` is two characters, and ``"${''}"``
    is a string whose code ``''`` is then refused). A ``${`` in the code itself (not
    in a string: a syntax error there) counts as that ``{`` whatever its depth, so the
    error is placed at it rather than at some deeper brace."""
    depth, deep, n = 1, -1, len(text)
    while i < n:
        c = text[i]
        if c == "{" and text[i - 1] == "$" and deep < 0:
            deep = i
        if c == '"':
            i += 1
            while i < n and text[i] != '"':
                i += 2 if text[i] == "\\" else 1
        elif indented and text.startswith("''", i):  # a plain indented string (the lexer allows no more)
            close = text.find("''", i + 2)
            i = n if close < 0 else close + 1
        elif c == "{":
            depth += 1
            if depth - 1 > MAX_NESTING and deep < 0:
                deep = i
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i, deep
        i += 1
    return -1, deep


MAX_NESTING = 6  # braces inside one ${...}: the depth recipe.lark's string regexes allow


def too_deep_brace(text: str, start: int) -> int:
    """For a string literal starting at ``text[start]`` (``"`` or ``''``) that the lexer
    refused: the position of the first ``{`` nested more than ``MAX_NESTING`` deep inside
    one of its ``${...}``, provided that interpolation is closed further on; else -1 (the
    string really is unterminated). Only used to word a syntax error."""
    indented = text.startswith("''", start)
    i, n = start + (2 if indented else 1), len(text)
    while i < n:
        c = text[i]
        if indented and text.startswith("''", i):
            if i + 2 < n and text[i + 2] in "'$":
                i += 3
                continue
            if i + 2 < n and text[i + 2] == "\\":
                i += 4
                continue
            return -1
        if not indented and c == '"':
            return -1
        if not indented and c == "\\":
            i += 2
            continue
        if text.startswith("${", i):
            end, deep = _scan_interp(text, i + 2, indented)
            if end < 0:
                return -1
            if deep >= 0:
                return deep
            i = end
        i += 1
    return -1


def refused_string(text: str, start: int) -> tuple[str, int]:
    """The syntax error (message, position) for a string literal at ``text[start]``
    (``"`` or ``''``) that the lexer refused: a ``${`` in an interpolation's code, a
    record nested deeper than the lexer reads, or an unterminated string."""
    deep = too_deep_brace(text, start)
    if deep >= 0 and text[deep - 1] == "$":
        return "unexpected '${' in the code of an interpolation (only a string may hold one)", deep - 1
    if deep >= 0:
        return (
            f"records nested more than {MAX_NESTING} deep inside ${{...}} are not supported; "
            "bind the record with let outside the string"
        ), deep
    if text[start] == '"':
        return "unterminated string (or a '${' in it that is never closed)", start
    return "unterminated indented string ('' ... '') (or a '${' in it that is never closed)", start


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
        elif c == "$" and token.startswith("$$", i):  # literal, as in Nix: "$${x}" is $${x}
            buf.append("$$")
            i += 2
        elif c == "$" and token.startswith("${", i):
            close = _interp_end(token, i + 2, False)
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


_IND_SPECIAL = re.compile(r"''(?:'|\$|\\.)|\$\$|\$\{", re.S)


def _line_indent(line: list) -> int | None:
    """Leading spaces of ``line`` (items: literal ``str`` or ``int`` hole index), or
    None if it holds only spaces. A hole (an escape or an interpolation) is content."""
    n = 0
    for item in line:
        if isinstance(item, int):
            return n
        rest = item.lstrip(" ")
        n += len(item) - len(rest)
        if rest:
            return n
    return None


def _dedent(line: list, strip: int) -> list:
    """``line`` without up to ``strip`` leading spaces (taken from literal text only)."""
    out = []
    for item in line:
        if strip and isinstance(item, str):
            rest = item.lstrip(" ")
            cut = min(strip, len(item) - len(rest))
            strip = strip - cut if not rest else 0
            item = item[cut:]
            if not item:
                continue
        else:
            strip = 0
        out.append(item)
    return out


def split_indented(token: str) -> list:
    """Pieces of a ``''...''`` token, with indentation stripped.

    Escapes and interpolations are kept apart from the literal text while stripping
    (as ``int`` indices into ``holes``), so no character of the input, whatever it is,
    can be mistaken for one."""
    body = token[2:-2]
    holes: list = []  # escaped text (str) or an interpolation (offset, code)
    lines: list[list] = [[]]  # per line: literal str pieces and hole indices

    def add_text(text: str) -> None:
        first, *rest = text.split("\n")
        if first:
            lines[-1].append(first)
        lines.extend([r] if r else [] for r in rest)

    last = 0
    for m in _IND_SPECIAL.finditer(body):
        if m.start() < last:
            continue  # inside an interpolation already taken whole
        add_text(body[last : m.start()])
        text = m.group()
        if text == "$$":  # literal (``$${x}`` is the text ``$${x}``), as in Nix
            add_text(text)
            last = m.end()
            continue
        if text == "${":
            close = _interp_end(body, m.end(), True)
            holes.append((m.end() + 2, body[m.end() : close]))
            last = close + 1
        else:
            c = text[2:]
            holes.append("''" if c == "'" else "$" if c == "$" else _ESCAPES.get(c[1], c[1]))
            last = m.end()
        lines[-1].append(len(holes) - 1)
    add_text(body[last:])

    if len(lines) > 1 and _line_indent(lines[0]) is None:
        lines.pop(0)
    strip = min((i for i in map(_line_indent, lines) if i is not None), default=0)
    if lines and _line_indent(lines[-1]) is None:
        lines[-1] = []

    out: list = []
    buf: list[str] = []
    for n, line in enumerate(lines):
        if n:
            buf.append("\n")
        for item in _dedent(line, strip):
            h = holes[item] if isinstance(item, int) else item
            if isinstance(h, tuple):
                if buf:
                    out.append("".join(buf))
                    buf = []
                out.append(h)
            else:
                buf.append(h)
    text = "".join(buf)
    if text:
        out.append(text)
    return out
