"""Splitting string literals into text and ``${...}`` interpolations.

Two literal forms (as in Nix):

- ``"..."``: escapes ``\\n \\t \\r \\\\ \\" \\$``; ``\\${`` is a literal ``${``; ``$$``
  is literal text (so ``$${x}`` is the text ``$${x}``, as in Nix), in both forms.
- ``''...''`` (indented): indentation is stripped exactly as Nix strips it (Nix's
  ``stripIndentation``; ``split_indented`` says how, corners included: lines of only
  spaces, tabs, escaped newlines). Escapes: ``''$`` → ``$`` (so ``''${`` is a literal
  ``${``), ``'''`` → ``''``, ``''\\n`` / ``''\\t`` / ``''\\r`` / ``''\\<c>``.

The code inside ``${...}`` is read as code when looking for its closing ``}``: braces in
a nested string (``"..."`` or ``''...''``), a ``#`` comment or a ``/* */`` comment do
not count, and a nested string's escapes (``\\"`` in one, ``'''``, ``''$`` and
``''\\<c>`` in the other) do not end it. recipe.lark's string regexes read it so, and
``_scan_interp`` mirrors them (a test checks that the two agree on every short input,
and that both find the end Nix's lexer finds).

``split_plain`` and ``split_indented`` return a list of pieces: ``str`` for literal text
and ``(offset, code)`` for interpolations, where ``offset`` is the position of ``code``
inside the token text. ``refused_string`` words the syntax error for a string literal
the lexer refused.
"""

from __future__ import annotations

import re
from typing import Any

_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}
_EOL = re.compile(r"[\r\n]")


def _interp_end(text: str, i: int) -> int:
    """Index of the ``}`` closing the interpolation whose ``${`` ends just before ``i``.
    The token was lexed, so the interpolation is closed: -1 here would mean the lexer and
    this scan disagree, and is an internal error rather than a loop over the same text."""
    end = _scan_interp(text, i)[0]
    if end < 0:
        raise RuntimeError(f"lexed string with an unterminated interpolation at offset {i}")
    return end


#: what a nested construct in the code of an interpolation is called in an error
_NESTED = {'"': "string", "'": "indented string ('' ... '')", "/": "comment (/* ... */)"}


def _skip_nested(text: str, i: int) -> int:
    """If a quoted string, indented string, ``#`` comment or ``/* */`` comment starts at
    ``text[i]`` (in the code of an interpolation): the index just after it, or -1 if it
    runs to the end of ``text`` unterminated; else ``i`` itself. As recipe.lark's regexes
    (and Nix's lexer) read them: a quoted string ends at its first ``"`` not escaped by a
    ``\\`` (``\\<c>`` is an escape whatever ``c`` is), an indented string at its first
    ``''`` that does not start an escape (``'''``, ``''$`` or ``''\\<c>``), a ``#``
    comment at the end of its line (the end of the text closes it) and a block comment at
    its first ``*/``. A ``${`` inside a nested string is text here (Nix reads code there,
    so a quote in that code is read otherwise than Nix reads it)."""
    c = text[i]
    if c == '"':
        i, n = i + 1, len(text)
        while i < n and text[i] != '"':
            i += 2 if text[i] == "\\" else 1
        return i + 1 if i < n else -1
    if c == "'" and text.startswith("''", i):
        i, n = i + 2, len(text)
        while (close := text.find("''", i)) >= 0:
            after = text[close + 2 : close + 3]
            if after in ("'", "$"):  # the escapes ''' and ''$
                i = close + 3
            elif after == "\\" and close + 3 < n:  # ''\<c>
                i = close + 4
            else:
                return close + 2
        return -1
    if c == "#":  # to the end of the line, a lone CR ending it too (Nix: #[^\r\n]*)
        m = _EOL.search(text, i)
        return m.start() if m else len(text)
    if c == "/" and text.startswith("/*", i):
        close = text.find("*/", i + 2)
        return close + 2 if close >= 0 else -1
    return i


def _scan_interp(text: str, i: int) -> tuple[int, int, int]:
    """From just after a ``${`` (in either kind of string): (index of its closing ``}``
    or -1 if unterminated, position of the first ``{`` nested more than ``MAX_NESTING``
    deep in it or -1, the nested string or comment to blame should the string turn out
    unterminated or -1).

    The code is read as code: a ``}`` inside a nested string or comment does not count
    (``_skip_nested``). A ``${`` in the code itself (not in a string: a syntax error
    there) counts as that ``{`` whatever its depth, so the error is placed at it rather
    than at some deeper brace. The one to blame is the first nested string or comment
    holding a ``}`` (``"${ x # }"``: the comment takes the brace meant to close the
    interpolation, which a later ``}`` may then close in the wrong place), else, in an
    unterminated interpolation, one running to the end of the text. Linear in the text:
    every step moves forward."""
    depth, deep, n = 1, -1, len(text)
    blame = -1
    while i < n:
        c = text[i]
        if c in "\"'#/":
            after = _skip_nested(text, i)
            if after != i:
                if blame < 0 and "}" in text[i : after if after >= 0 else n]:
                    blame = i
                if after < 0:
                    return -1, deep, blame if blame >= 0 else i
                i = after
                continue
        if c == "{" and text[i - 1] == "$" and deep < 0:
            deep = i
        if c == "{":
            depth += 1
            if depth - 1 > MAX_NESTING and deep < 0:
                deep = i
        elif c == "}":
            depth -= 1
            if depth == 0:
                return i, deep, blame
        i += 1
    return -1, deep, blame


MAX_NESTING = 6  # braces inside one ${...}: the depth recipe.lark's string regexes allow


def _string_problem(text: str, start: int) -> tuple[int, int]:
    """For a string literal starting at ``text[start]`` (``"`` or ``''``) that the lexer
    refused: (the position of the first ``{`` nested more than ``MAX_NESTING`` deep in
    one of its ``${...}``, or of a ``${`` in the code of one, provided that interpolation
    is closed further on; else -1, and the nested string or comment to blame for an
    unterminated interpolation or string, or -1). (-1, -1): the string itself is
    unterminated and nothing in its interpolations looks like the cause. Only used to
    word a syntax error."""
    indented = text.startswith("''", start)
    i, n = start + (2 if indented else 1), len(text)
    blame = -1  # the first string or comment in an interpolation that took a '}'
    while i < n:
        c = text[i]
        if indented and text.startswith("''", i):
            if i + 2 < n and text[i + 2] in "'$":
                i += 3
                continue
            if i + 2 < n and text[i + 2] == "\\":
                i += 4
                continue
            return -1, -1
        if not indented and c == '"':
            return -1, -1
        if not indented and c == "\\":
            i += 2
            continue
        if text.startswith("$$", i):  # literal text, not an interpolation
            i += 2
            continue
        if text.startswith("${", i):
            end, deep, took = _scan_interp(text, i + 2)
            blame = blame if blame >= 0 else took
            if end < 0:
                return -1, blame
            if deep >= 0:
                return deep, -1
            i = end
        i += 1
    return -1, blame


def refused_string(text: str, start: int) -> tuple[str, int]:
    """The syntax error (message, position) for a string literal at ``text[start]``
    (``"`` or ``''``) that the lexer refused: a ``${`` in an interpolation's code, a
    record nested deeper than the lexer reads, a string or comment in an interpolation's
    code that takes the ``}`` meant to close it or is unterminated, or an unterminated
    string."""
    deep, blame = _string_problem(text, start)
    if deep >= 0 and text[deep - 1] == "$":
        return "unexpected '${' in the code of an interpolation (only a string may hold one)", deep - 1
    if deep >= 0:
        return (
            f"records nested more than {MAX_NESTING} deep inside ${{...}} are not supported; "
            "bind the record with let outside the string"
        ), deep
    if blame >= 0 and text[blame] == "#":
        return (
            "the '}' closing this ${...} is inside a '#' comment (which runs to the end of the "
            "line), so the ${...} is not closed there"
        ), blame
    if blame >= 0:
        what = _NESTED[text[blame]]
        takes = ": it takes the '}' meant to close the interpolation" if "}" in text[blame:] else ""
        return f"unterminated {what} in the code of a ${{...}}{takes}", blame
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


_IND_SPECIAL = re.compile(r"''(?:'|\$|\\.)|\$\$|\$\{", re.S)
#: what the lexer drops after the opening ``''``: a first line of only spaces
_IND_FIRST_LINE = re.compile(r" *\n")
#: ``split_indented``'s token kinds: literal text, an escape, an interpolation
_LIT, _ESC, _HOLE = 0, 1, 2
#: Nix's "no line sets the indentation" (every line is blank): strip every leading space
_NO_INDENT = 1 << 62


def _indented_tokens(body: str) -> list[tuple[int, Any]]:
    """The tokens of an indented string's ``body`` as Nix's lexer cuts them: maximal
    runs of literal text (``$$`` included), each escape apart (its text), each
    interpolation apart (``(offset in the token, code)``). A first line of only spaces
    is dropped, as Nix's lexer drops it with the opening ``''``."""
    tokens: list[tuple[int, Any]] = []
    m = _IND_FIRST_LINE.match(body)
    last = m.end() if m else 0
    for m in _IND_SPECIAL.finditer(body, last):
        if m.start() < last:
            continue  # inside an interpolation already taken whole
        text = m.group()
        if text == "$$":  # literal (``$${x}`` is the text ``$${x}``), as in Nix: part of the run
            continue
        if m.start() > last:
            tokens.append((_LIT, body[last : m.start()]))
        if text == "${":
            close = _interp_end(body, m.end())
            tokens.append((_HOLE, (m.end() + 2, body[m.end() : close])))
            last = close + 1
        else:
            c = text[2:]
            tokens.append((_ESC, "''" if c == "'" else "$" if c == "$" else _ESCAPES.get(c[1], c[1])))
            last = m.end()
    if last < len(body):
        tokens.append((_LIT, body[last:]))
    return tokens


def _min_indent(tokens: list[tuple[int, Any]]) -> int:
    """The indentation to strip: the fewest leading spaces of a line that holds anything
    but spaces, where an escape or interpolation ends the leading spaces (it is content,
    even an escaped space or newline) and a tab is content, not indentation. Lines of
    only spaces, the last one included, do not count; ``_NO_INDENT`` if none counts."""
    at_start, indent, least = True, 0, _NO_INDENT
    for kind, value in tokens:
        if kind != _LIT:
            if at_start:
                at_start, least = False, min(least, indent)
            continue
        for k, seg in enumerate(value.split("\n")):
            if k:  # after a newline
                at_start, indent = True, 0
            if at_start:
                rest = seg.lstrip(" ")
                indent += len(seg) - len(rest)
                if rest:
                    at_start, least = False, min(least, indent)
    return least


def split_indented(token: str) -> list:
    """Pieces of a ``''...''`` token, with indentation stripped exactly as Nix does
    (``stripIndentation`` in Nix's parser, checked against nix-instantiate in the tests).

    ``_min_indent`` finds the indentation; then at the start of every line up to that
    many leading spaces are dropped, from literal text and from escapes alike (so a line
    of only spaces keeps those beyond it, and after an escaped newline ``''\\n`` the
    next characters count as a line start here though they did not for the
    indentation); an interpolation ends a line start. Finally, if the last token is
    literal text holding a newline and only spaces follow its last newline, those spaces
    go. Escapes and interpolations are tokens apart from the literal text, so no
    character of the input, whatever it is, can be mistaken for one."""
    tokens = _indented_tokens(token[2:-2])
    strip = _min_indent(tokens)
    out: list = []
    buf: list[str] = []
    at_start, dropped = True, 0
    last = len(tokens) - 1
    for n, (kind, value) in enumerate(tokens):
        if kind == _HOLE:
            at_start, dropped = False, 0
            if buf:
                out.append("".join(buf))
                buf = []
            out.append(value)
            continue
        segs = value.split("\n")
        for k, seg in enumerate(segs):
            if k:
                at_start, dropped = True, 0
            if at_start:
                rest = seg.lstrip(" ")
                spaces = len(seg) - len(rest)
                segs[k] = seg[max(0, min(spaces, strip - dropped)) :]
                dropped += spaces
                if rest:
                    at_start, dropped = False, 0
        if n == last and kind == _LIT and len(segs) > 1 and not segs[-1].strip(" "):
            segs[-1] = ""  # the last line, of only spaces (or nothing), is emptied
        buf.append("\n".join(segs))
    text = "".join(buf)
    if text:
        out.append(text)
    return out
