"""The recipe lexer lark runs (``FastLexer``): one compiled regex alternation built from
the grammar's own terminals, about twice as fast as lark's general lexer, and
``strscan.scan`` for string literals. ``parser`` plugs it into the LALR parser and turns
``LexError`` into a located syntax error.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from lark import Token
from lark.lexer import Lexer

from .strscan import Unterminated, scan

#: the declared string terminals (recipe.lark) and what opens each
_STRINGS = {"STRING": '"', "IND_STRING": "''"}


class Span(str):
    """Text to lex that remembers where it sits in its file (``base``) and the ends of the
    string literals nested in interpolations read so far in that file (``ends``, by
    position in the file: ``strscan.scan`` says why). A plain ``str`` lexes too (base 0,
    nothing remembered)."""

    base: int
    ends: dict[int, int]

    @classmethod
    def of(cls, text: str, base: int, ends: dict[int, int]) -> Span:
        span = cls(text)
        span.base, span.ends = base, ends
        return span


class LexError(Exception):
    """No token starts at ``pos`` (relative to the text being lexed), or a string literal
    starts there that the text ends inside."""

    def __init__(self, pos: int) -> None:
        self.pos = pos


class FastLexer(Lexer):
    """One compiled alternation over all terminals of ``recipe.lark`` (names and
    patterns are read from the grammar, so the two cannot drift apart): about twice as
    fast as lark's general lexer. Keywords are names looked up in a table (so ``iffy``
    is a name), operators are tried longest first, and tokens carry only ``start_pos``
    (positions are mapped to line:col only when an error is reported).

    A string literal (the declared ``STRING`` and ``IND_STRING``) is matched by its
    opening quote only; ``strscan.scan`` then reads it whole, as Nix's lexer reads it
    (nested strings and braces in its interpolations to any depth), and the token is
    everything it read."""

    def __init__(self, lexer_conf) -> None:
        words: dict[str, str] = {}
        literals: list[tuple[str, str]] = []
        regexps: dict[str, str] = {}
        for t in lexer_conf.terminals:
            if t.pattern.type == "str":
                if t.pattern.value.isalpha():
                    words[t.pattern.value] = t.name
                else:
                    literals.append((t.name, t.pattern.value))
            else:
                regexps[t.name] = t.pattern.to_regexp()
        ignore = "|".join(f"(?:{regexps.pop(n)})" for n in lexer_conf.ignore)
        literals.sort(key=lambda x: -len(x[1]))
        alts = [f"(?P<_>{ignore})"]
        alts += [f"(?P<{n}>{re.escape(v)})" for n, v in _STRINGS.items()]
        alts += [f"(?P<{n}>{r})" for n, r in regexps.items() if n != "NUMBER"]
        alts += [f"(?P<NUMBER>{regexps['NUMBER']})"]
        alts += [f"(?P<{n}>{re.escape(v)})" for n, v in literals]
        self.master = re.compile("|".join(alts))
        self.words = words

    def lex(self, text: str) -> Iterator[Token]:
        match = self.master.match
        words = self.words
        ends: dict[int, int] | None = getattr(text, "ends", None)
        base: int = getattr(text, "base", 0)
        # Token() only forwards to _future_new after a deprecation check; skip the hop
        new = getattr(Token, "_future_new", Token)
        pos, end = 0, len(text)
        while pos < end:
            m = match(text, pos)
            if m is None:
                raise LexError(pos)
            kind = m.lastgroup
            if kind == "_":
                pos = m.end()
            elif kind == "NAME":
                value = m.group()
                yield new(words.get(value, "NAME"), value, pos)
                pos = m.end()
            elif kind in _STRINGS:
                try:
                    after = scan(text, pos, None, ends, base)
                except Unterminated:
                    raise LexError(pos) from None
                yield new(kind, text[pos:after], pos)
                pos = after
            else:
                yield new(kind, m.group(), pos)
                pos = m.end()
