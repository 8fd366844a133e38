"""Reading a string literal (``"..."`` or ``''...''``) the way Nix's lexer reads it.

``scan`` is the only reader of string literals: the lexer calls it to find where a
string token ends, ``strings`` calls it again on the token to cut it into pieces, and
``refused_string`` calls it on an unterminated one to word the error. So the three
cannot disagree.

It keeps a stack of modes, as Nix's lexer (lexer.l) keeps its flex states: a quoted
string (``STRING``), an indented string (``IND_STRING``), and code inside ``${...}`` or
a ``{`` in that code (``INSIDE_DOLLAR_CURLY``). Each ``${`` pushes code, each ``{`` in
code pushes code and each ``}`` pops it; a ``"`` or ``''`` in code pushes a nested
string, which may hold interpolations of its own, to any depth. In code, a ``#``
comment (to a newline or a lone carriage return) and a ``/* */`` comment (to its first
``*/``) are skipped, so a quote or brace in one does not count. In a string, the
escapes are read as Nix reads them: ``\\<c>`` in a quoted one; ``'''``, ``''$`` and
``''\\<c>`` in an indented one; ``$$`` is text in both, so ``$${`` starts no
interpolation. The stack is a list (no recursion): nesting has no limit.

Runs of characters that change no mode are skipped by one regex match each, so a
string without interpolations costs a match or two.
"""

from __future__ import annotations

import re
from typing import Any

# No possessive quantifiers (``*+``, ``++``) in these runs: CPython before 3.11.3 (Debian
# 12's 3.11.2) gets a possessive repeat of a group holding a lookahead wrong (it read
# ``x${`` of ``"x${ "y" }"`` as text). Plain greedy repeats match the same here, and
# cannot backtrack: nothing follows them in the pattern, so their first match stands.
#: a run of text in a quoted string: up to its closing ``"``, a ``${`` or the text's end
#: (or a ``\\`` that ends the text); escapes and ``$$`` included
_STR_RUN = re.compile(r'(?:[^"\\$]+|\\.|\$\$|\$(?!\{))*', re.S).match
#: a run of text in an indented string: up to a ``''`` (an escape or its end), a ``${``
_IND_RUN = re.compile(r"(?:[^'$]+|'(?!')|\$\$|\$(?!\{))*").match
#: a run of code that opens or closes nothing: up to ``{ } " '' # /*``
_CODE_RUN = re.compile(r"""(?:[^{}"'#/]+|'(?!')|/(?!\*))*""").match
#: the end of a ``#`` comment: a newline or a lone carriage return (Nix: ``#[^\r\n]*``)
_EOL = re.compile(r"[\r\n]").search
#: what Nix's lexer takes with an opening ``''``: a first line of only spaces
_IND_FIRST_LINE = re.compile(r" *\n").match
_UNESCAPE = re.compile(r"\\(.)", re.S)


def _end(run: re.Match[str] | None) -> int:
    """Where a run (``_STR_RUN``, ``_IND_RUN``, ``_CODE_RUN``) ends: each is a repeat
    (``(...)*``), which matches anywhere, if only the empty string."""
    assert run is not None, "a repeat matched nowhere"
    return run.end()


_ESCAPES = {"n": "\n", "t": "\t", "r": "\r"}

#: the kinds of the pieces ``scan`` makes: literal text, an escape, an interpolation
LIT, ESC, HOLE = 0, 1, 2

#: the modes, and the mode each opener kept on the stack starts
_QUOTED, _INDENTED, _CODE = 0, 1, 2
_MODE = {'"': _QUOTED, "''": _INDENTED, "${": _CODE, "{": _CODE}


def _unescape(raw: str) -> str:
    """A quoted string's text with its ``\\<c>`` escapes read (``\\n \\t \\r``, else ``c``)."""
    return _UNESCAPE.sub(lambda m: _ESCAPES.get(m.group(1), m.group(1)), raw)


class Unterminated(Exception):  # noqa: N818 - what it reports, not an error of kiln's
    """The text ended inside the string literal ``scan`` was reading.

    ``open`` is what was still open then, outermost first, as (opener, position):
    ``'"'`` or ``"''"`` (a string), ``"${"`` (an interpolation), ``"{"`` (a brace in
    the code of one), ``"/*"`` (a comment in that code that never ends). ``comment`` is
    the position of the first ``#`` comment in the code of an interpolation holding a
    ``}``, or -1."""

    def __init__(self, open_: tuple[tuple[str, int], ...], comment: int) -> None:
        super().__init__("unterminated string literal")
        self.open = open_
        self.comment = comment


def scan(
    text: str,
    start: int,
    pieces: list[tuple[int, Any]] | None = None,
    ends: dict[int, int] | None = None,
    base: int = 0,
) -> int:
    """The index just after the string literal starting at ``text[start]`` (``"`` or
    ``''``), read as Nix's lexer reads it (the module docstring says how). Raises
    ``Unterminated`` if the text ends inside it.

    If ``pieces`` is a list, the literal's own pieces are appended to it, as Nix's lexer
    cuts them: ``(LIT, text)`` for a maximal run of literal text (a quoted string's
    escapes already read in it; ``$$`` is text), ``(ESC, text)`` for each escape of an
    indented string (apart: indentation stripping treats it as content), ``(HOLE,
    (begin, end))`` for each interpolation, its code being ``text[begin:end]`` (positions,
    not a copy: a string nested ``n`` deep would otherwise be copied at each of its ``n``
    levels, memory quadratic in the depth). An indented string's first line, when only
    spaces, is not a piece (Nix's lexer takes it with the opening ``''``).

    ``ends`` (with ``base``, the position of ``text`` in its file) remembers the end of
    every string nested in an interpolation, by position in the file: ``scan`` records
    each one it reads and jumps over each one it knows. The lexer and the splitter read
    every ``${...}`` again at each level of nesting; with ``ends`` they read a nested
    string's text only once, so reading a file stays linear in its length however deep
    its strings nest. (Where a string ends depends only on the text from its start on,
    so an end read at one level holds at every other.)"""
    if ends is not None and pieces is None and (known := ends.get(base + start)) is not None:
        return known - base
    if pieces is None and text[start] == '"':  # the usual one: no ${...}, read by one match
        i = _end(_STR_RUN(text, start + 1))
        if text.startswith('"', i):
            return i + 1
    n = len(text)
    if text.startswith("''", start):
        stack, mode, i = [("''", start)], _INDENTED, start + 2
        if pieces is not None and (m := _IND_FIRST_LINE(text, i)):
            i = m.end()
    else:
        stack, mode, i = [('"', start)], _QUOTED, start + 1
    comment = -1
    while True:
        if mode == _QUOTED:
            j = _end(_STR_RUN(text, i))
            if pieces is not None and j > i and len(stack) == 1:
                raw = text[i:j]
                pieces.append((LIT, _unescape(raw) if "\\" in raw else raw))
            i = j
            if i >= n or text[i] == "\\":  # (a backslash is in a run, but as the last character)
                break
            if text[i] == '"':
                at = stack.pop()[1]
                i += 1
                if not stack:
                    return i
                if ends is not None:
                    ends[base + at] = base + i
                mode = _MODE[stack[-1][0]]
                continue
            stack.append(("${", i))  # the run stops only at '"', '${' or the end
            mode, i = _CODE, i + 2
        elif mode == _INDENTED:
            j = _end(_IND_RUN(text, i))
            if pieces is not None and j > i and len(stack) == 1:
                pieces.append((LIT, text[i:j]))
            i = j
            if i >= n:
                break
            if text[i] == "$":  # '${' (the run stops only at '${', "''" or the end)
                stack.append(("${", i))
                mode, i = _CODE, i + 2
                continue
            after = text[i + 2 : i + 3]
            if after == "'" or after == "$" or (after == "\\" and i + 3 < n):
                if pieces is not None and len(stack) == 1:
                    if after == "\\":
                        c = text[i + 3]
                        pieces.append((ESC, _ESCAPES.get(c, c)))
                    else:
                        pieces.append((ESC, "''" if after == "'" else "$"))
                i += 4 if after == "\\" else 3
                continue
            at = stack.pop()[1]  # "''" that starts no escape closes it
            i += 2
            if not stack:
                return i
            if ends is not None:
                ends[base + at] = base + i
            mode = _MODE[stack[-1][0]]
        else:
            i = _end(_CODE_RUN(text, i))
            if i >= n:
                break
            c = text[i]
            if c == "{":  # '${' in code too (a syntax error, but Nix pushes code for it)
                stack.append(("{", i))
                i += 1
            elif c == "}":
                opener, at = stack.pop()
                if opener == "${":
                    mode = _MODE[stack[-1][0]]
                    if pieces is not None and len(stack) == 1:
                        pieces.append((HOLE, (at + 2, i)))
                i += 1
            elif ends is not None and (known := ends.get(base + i)) is not None:
                i = known - base  # a string read before (c is '"' or "'")
            elif c == '"':
                stack.append(('"', i))
                mode, i = _QUOTED, i + 1
            elif c == "'":  # "''" (the run takes a lone "'")
                stack.append(("''", i))
                mode, i = _INDENTED, i + 2
            elif c == "#":
                m = _EOL(text, i)
                end = m.start() if m else n
                if comment < 0 and "}" in text[i:end]:
                    comment = i
                i = end
            else:  # '/*' (the run takes a lone '/')
                close = text.find("*/", i + 2)
                if close < 0:
                    stack.append(("/*", i))
                    break
                i = close + 2
    raise Unterminated(tuple(stack), comment)


#: what a nested construct in the code of an interpolation is called in an error
_NESTED = {'"': "string", "''": "indented string ('' ... '')", "/*": "comment (/* ... */)"}


def refused_string(text: str, start: int) -> tuple[str, int]:
    """The syntax error (message, position in ``text``) for the string literal at
    ``text[start]`` (``"`` or ``''``), which the lexer refused as unterminated. It blames
    what is left open at the end of the text, innermost first: a nested string or
    ``/* */`` comment in the code of an interpolation; else a ``#`` comment in such code
    that holds a ``}`` (it took the ``}`` meant to close the interpolation); else the
    innermost ``${`` (or ``{`` in its code) that no ``}`` closes; else the string. A
    nested string that is closed is never blamed, whatever it holds."""
    try:
        scan(text, start)
    except Unterminated as u:
        opener, at = u.open[-1]
        if len(u.open) > 1 and opener in _NESTED:
            takes = ": it takes the '}' meant to close the interpolation" if "}" in text[at:] else ""
            return f"unterminated {_NESTED[opener]} in the code of a ${{...}}{takes}", at
        if u.comment >= 0:
            return (
                "the '}' closing this ${...} is inside a '#' comment (which runs to the end of the "
                "line), so the ${...} is not closed there"
            ), u.comment
        if opener == "${":
            return "unterminated ${...}: no '}' closes this '${'", at
        if opener == "{":
            return "unterminated record in the code of a ${...}: no '}' closes this '{'", at
        if opener == '"':
            return "unterminated string: no '\"' closes it", at
        return "unterminated indented string ('' ... ''): no '' closes it", at
    return f"unexpected character {text[start]!r}", start
