"""Errors raised while reading and evaluating recipes.

Every error a user can cause is a ``RecipeError`` (a ``KilnError``, and it carries
``kiln_user_error = True`` so the CLI prints it without a traceback). When it knows
where it happened it is rendered as::

    path/to/file.recipe:3:9: unknown name 'verison' (did you mean 'version'?)
        3 |   url = "${verison}"
          |            ^

Subclasses exist per kind so tests (and callers) can tell them apart; ``kind`` is a
short stable name used in test expectation files.

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
        """1-based line and column of character offset ``pos``."""
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
        shown."""
        if self.src is None:
            return self.message.translate(_VISIBLE_TEXT)
        name = visible(self.src.name)  # (a newline in a file's name too)
        if self.pos is None:
            return f"{name}: {self.message.translate(_VISIBLE_TEXT)}"
        line, col = self.src.line_col(self.pos)
        code, at = _hide_userinfo(self.src.line_text(line).replace("\t", " "), col - 1)
        cut_head = cut_tail = ""
        if len(code) > EXCERPT:  # a long (generated, minified) line: the part around col
            start = max(0, min(at - EXCERPT // 2, len(code) - EXCERPT))
            cut_head = "..." if start > 0 else ""
            cut_tail = "..." if start + EXCERPT < len(code) else ""
            code = code[start : start + EXCERPT]
            at -= start
        # control characters shown as visible ones (a lone CR would garble the terminal
        # line, an escape sequence act on it, a bidi override reorder it); a bidi control
        # shows as several characters, so the caret moves by what precedes it as shown
        at = len(cut_head) + len(code[:at].translate(_VISIBLE))
        code = cut_head + code.translate(_VISIBLE) + cut_tail
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


def did_you_mean(name: str, candidates: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest candidate, or ``""``."""
    import difflib  # only for an error: a cached evaluation must not pay for it

    near = difflib.get_close_matches(name, sorted(set(candidates)), n=2, cutoff=0.6)
    if not near:
        return ""
    if len(near) == 1:
        return f" (did you mean '{near[0]}'?)"
    return f" (did you mean '{near[0]}' or '{near[1]}'?)"
