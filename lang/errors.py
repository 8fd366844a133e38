"""Errors raised while reading and evaluating recipes.

Every error a user can cause is a ``RecipeError`` (a ``KilnError``, and it carries
``kiln_user_error = True`` so the CLI prints it without a traceback). When it knows
where it happened it is rendered as::

    path/to/file.recipe:3:9: unknown name 'verison' (did you mean 'version'?)
        3 |   url = "${verison}"
          |            ^

Subclasses exist per kind so tests (and callers) can tell them apart; ``kind`` is a
short stable name used in test expectation files.

Positions: ``line`` is one more than the LFs before the position, ``col`` one more than
the characters since the last (a tab, a wide or a combining character each count one).
A recipe's text holds no other line end (``reading``: a CRLF is read as LF, a lone CR is
refused), so that is the line an editor shows; the end of a file is the end of its last
line (``SourceText.line_col``). The excerpt under the message shows the line as a
terminal shows it (tabs expanded to stops of ``TAB``, control and invisible characters
made visible), and the caret is padded by the terminal columns of what precedes the
character (``_width``), so it stands under it whatever the line holds.

A message may span lines; a file's name or path it embeds goes through ``visible``
(every control character shown, a newline too), so no name can add a line of its own.
"""

from __future__ import annotations

import bisect
from collections.abc import Iterable

from kiln.store.errors import KilnError, credential_spans


class SourceText:
    """A recipe file's text plus the name it is reported under, with line lookup."""

    __slots__ = ("name", "text", "path", "_starts")

    def __init__(self, name: str, text: str, path: str | None = None) -> None:
        self.name = name
        self.text = text
        self.path = path  # absolute path of the file, None for command-line expressions
        self._starts: list[int] | None = None

    def line_col(self, pos: int) -> tuple[int, int]:
        """1-based line and column of character offset ``pos``. The end of a text that
        ends with a line end (an error at the end of the file) is the end of its last
        line: editors differ on whether a line follows the last LF (VS Code shows an
        empty one; vim, ``less`` and ``cat -n`` none), but all show that one."""
        if pos == len(self.text) and self.text.endswith("\n"):
            pos -= 1
        if self._starts is None:
            starts = [0]
            i = self.text.find("\n")
            while i != -1:
                starts.append(i + 1)
                i = self.text.find("\n", i + 1)
            self._starts = starts
        line = bisect.bisect_right(self._starts, pos) - 1
        return line + 1, pos - self._starts[line] + 1

    def line_text(self, line: int) -> str:
        lines = self.text.split("\n")
        return lines[line - 1] if 0 < line <= len(lines) else ""


#: the most characters of a source line an error shows (around the column)
EXCERPT = 120
#: Unicode's Bidi_Control characters (marks, embeddings, overrides, isolates): they change
#: the order in which a terminal shows the text around them, so an excerpt could read
#: otherwise than the code it is ("Trojan Source", CVE-2021-42574)
BIDI_CONTROLS = (0x061C, 0x200E, 0x200F, *range(0x202A, 0x202F), *range(0x2066, 0x206A))
#: C0 controls as their Unicode control pictures (U+2400...), DEL as U+2421, C1 as "?",
#: bidi controls (which have no picture) as ``\u202e``, as build logs show them
#: (``kiln.store.buildlogs``) and as Python's repr does in messages that quote a value
_VISIBLE: dict[int, int | str] = (
    {c: 0x2400 + c for c in range(32)}
    | {127: 0x2421}
    | {c: ord("?") for c in range(0x80, 0xA0)}
    | {c: f"\\u{c:04x}" for c in BIDI_CONTROLS}
)
#: the same for a message, which may span lines and be indented with tabs: so every
#: name a message embeds goes through ``visible`` first
_VISIBLE_TEXT = {c: v for c, v in _VISIBLE.items() if c not in (9, 10)}
#: the same for the excerpt, where the invisible characters a syntax error may be at (a
#: byte-order mark past the start, a zero-width space) are shown too, else the caret
#: would stand under nothing, and so are the Unicode line and paragraph separators (no
#: line end in a recipe, nor in an editor; a terminal might show them as one)
_VISIBLE_CODE: dict[int, int | str] = _VISIBLE | {c: f"\\u{c:04x}" for c in (0x200B, 0x2028, 0x2029, 0xFEFF)}
#: tab stops in the excerpt, as a terminal (and ``less``, and vim's default) sets them
TAB = 8


def _width(text: str) -> int:
    """How many terminal columns ``text`` (as shown: no control characters) takes: two
    for a wide (East Asian) character, none for a combining mark or a format character
    (U+00AD aside, which shows as a hyphen), one for any other, as ``wcwidth`` counts."""
    if text.isascii():
        return len(text)
    import unicodedata  # (only for an error)

    n = 0
    for c in text:
        if c.isascii():
            n += 1
        elif unicodedata.category(c) in ("Mn", "Me", "Cf") and c != "\xad":
            continue
        else:
            n += 2 if unicodedata.east_asian_width(c) in ("W", "F") else 1
    return n


def _expand_tabs(code: str, at: int) -> tuple[str, int]:
    """``code`` with each tab as the spaces up to the next tab stop (``TAB``), counted in
    columns as shown (``_width``), and ``at`` (an index into it) moved with its character:
    the line looks as an editor shows it, and the caret stays under the column."""
    if "\t" not in code:
        return code, at
    if code.isascii() and "\r" not in code:  # one column a character (str.expandtabs restarts at CR)
        return code.expandtabs(TAB), len(code[:at].expandtabs(TAB)) + max(0, at - len(code))
    out: list[str] = []
    shown = width = 0  # len("".join(out)), and its columns as shown
    new_at = None
    for i, c in enumerate(code):
        if i == at:
            new_at = shown
        if c == "\t":
            c = " " * (TAB - width % TAB)
            width += len(c)
        else:
            width += _width(c.translate(_VISIBLE_CODE))
        out.append(c)
        shown += len(c)
    return "".join(out), shown + at - len(code) if new_at is None else new_at


def _hide_userinfo(code: str, at: int) -> tuple[str, int]:
    """``code`` with each URL's credentials shown as ``***``, as ``redact_urls`` shows
    them on stderr (a password, or a user name alone: often a token), and ``at`` (an
    index into it) moved with the character it points at (onto the ``***`` if inside
    one): redacting after rendering would shift the text under the caret."""
    out: list[str] = []
    shown = 0  # len("".join(out))
    last = 0
    new_at = at
    for start, end in credential_spans(code):
        piece = code[last:start] + "***"
        if start <= at < end:
            new_at = shown + len(piece) - 3
        elif at >= end:
            new_at -= end - start - 3
        out.append(piece)
        shown += len(piece)
        last = end
    if not out:
        return code, at
    out.append(code[last:])
    return "".join(out), new_at


def visible(text: str) -> str:
    """``text`` as a message may embed it when it did not come from kiln (a file's name or
    path, an expression from the command line): every control character shown as a
    visible one, a newline and a tab included (``␊``, ``␉``), bidi controls as
    ``\\u202e``. A message keeps its own newlines (``RecipeError.render``), so a name with a
    newline embedded raw would start a line of its own, looking like kiln's
    (``kiln: verified 3 signatures``)."""
    return text.translate(_VISIBLE)


class RecipeError(KilnError):
    """A user error in a recipe, optionally located at ``src``/``pos``."""

    kiln_user_error = True
    kind = "error"

    def __init__(self, message: str, src: SourceText | None = None, pos: int | None = None) -> None:
        self.message = message
        self.src = src
        self.pos = pos
        super().__init__(self.render())

    def render(self) -> str:
        """``file:line:col: message``, the line and a caret; control characters in any of
        it (a file's name comes from a tarball), bidi controls included, shown as visible
        ones, not sent to the terminal. The caret is under the character at ``col`` as
        shown: tabs are expanded to stops every ``TAB`` columns (as a terminal shows
        them), and wide and zero-width characters are counted as the terminal counts
        them. ``col`` itself counts characters (a tab is one), as the line's text does."""
        if self.src is None:
            return self.message.translate(_VISIBLE_TEXT)
        name = visible(self.src.name)  # (a newline in a file's name too)
        if self.pos is None:
            return f"{name}: {self.message.translate(_VISIBLE_TEXT)}"
        line, col = self.src.line_col(self.pos)
        code, at = _expand_tabs(*_hide_userinfo(self.src.line_text(line), col - 1))
        cut_head = cut_tail = ""
        if len(code) > EXCERPT:  # a long (generated, minified) line: the part around col
            start = max(0, min(at - EXCERPT // 2, len(code) - EXCERPT))
            cut_head = "..." if start > 0 else ""
            cut_tail = "..." if start + EXCERPT < len(code) else ""
            code = code[start : start + EXCERPT]
            at -= start
        # control characters shown as visible ones (a lone CR would garble the terminal
        # line, an escape sequence act on it, a bidi override reorder it); a bidi control
        # shows as several characters, a wide one takes two columns, a combining one
        # none: so the caret moves by the columns what precedes it takes as shown
        at = _width(cut_head + code[:at].translate(_VISIBLE_CODE))
        code = cut_head + code.translate(_VISIBLE_CODE) + cut_tail
        gutter = f"{line:>5} | "
        caret = " " * (len(gutter) - 2) + "| " + " " * at + "^"
        head = f"{name}:{line}:{col}: {self.message.translate(_VISIBLE_TEXT)}"
        return f"{head}\n{gutter}{code}\n{caret}"


class RecipeSyntaxError(RecipeError):
    kind = "syntax"


class UnknownName(RecipeError):
    kind = "unknown-name"


class RecipeTypeError(RecipeError):
    kind = "type"


class MissingField(RecipeError):
    kind = "missing-field"


class UnknownField(RecipeError):
    kind = "unknown-field"


class DuplicateField(RecipeError):
    kind = "duplicate"


class ImportCycle(RecipeError):
    kind = "import-cycle"


class ImportNotFound(RecipeError):
    kind = "import-missing"


class HashFormat(RecipeError):
    kind = "hash-format"


class InfiniteRecursion(RecipeError):
    kind = "recursion"


class BadValue(RecipeError):
    kind = "value"


class TooLarge(BadValue):
    """A string or list that would grow past ``kiln.lang.limits`` (a bad value too)."""

    kind = "too-large"


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""``."""
    import difflib  # only for an error: a cached evaluation must not pay for it

    near = difflib.get_close_matches(name, sorted(set(candidates)), n=2, cutoff=0.6)
    if not near:
        return ""
    if len(near) == 1:
        return f" (did you mean '{near[0]}'?)"
    return f" (did you mean '{near[0]}' or '{near[1]}'?)"
