"""The recipe lexer lark runs (``FastLexer``): one compiled regex alternation built from
the grammar's own terminals, about twice as fast as lark's general lexer, and
``strscan.scan`` for string literals. ``parser`` plugs it into the LALR parser and turns
``LexError`` into a located syntax error.

It lexes a ``Span`` of a file's text in place (the code of a ``${...}`` is a span of its
file), and a string token holds no text, only where it starts and ends in the file: the
parser keeps every level of a nested string open while it parses the next, so a copy
per level would make memory quadratic in the depth of nesting.
"""

from __future__ import annotations

import re
from collections.abc import Iterator

from lark import Token
from lark.common import LexerConf
from lark.lexer import Lexer, LexerState

from .strscan import Unterminated, scan

#: the declared string terminals (recipe.lark) and what opens each
_STRINGS = {"STRING": '"', "IND_STRING": "''"}


class Span:
    """What to lex: ``text[begin:end]``, ``text`` being a whole file's text (token
    positions are positions in it), and the ends of the string literals nested in
    interpolations read so far in that file (``ends``, by position in the file:
    ``strscan.scan`` says why). Not a ``str``: lark hands it to the lexer as it is (as
    ``LexerState.text``)."""

    __slots__ = ("text", "begin", "end", "ends")

    def __init__(self, text: str, begin: int, end: int, ends: dict[int, int]) -> None:
        self.text, self.begin, self.end, self.ends = text, begin, end, ends


class LexError(Exception):
    """No token starts at ``pos`` (a position in the ``Span``'s text), or a string
    literal starts there that the span ends inside."""

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
    (nested strings and braces in its interpolations to any depth). The token's value is
    only the opening quote; its ``start_pos`` and ``end_pos`` say where it is in the text,
    which ``parser`` reads it from.

    It implements lark's current lexer interface (``__future_interface__``), the one
    ``Lexer.lex`` declares: lark calls it with no wrapper around it."""

    #: ``lex(lexer_state, parser_state)``, as ``Lexer`` declares it (lark >= 1.3 reads
    #: the number; older versions take any true value)
    __future_interface__ = 2

    def __init__(self, lexer_conf: LexerConf) -> None:
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

    def lex(self, lexer_state: LexerState, parser_state: object) -> Iterator[Token]:
        """The tokens of ``lexer_state.text``: what ``Lark.parse`` was given, which must
        be a ``Span`` (lark hands on any input that is not a ``str`` as it is)."""
        span: object = lexer_state.text  # (lark declares a str slice, its own lexers' input)
        if not isinstance(span, Span):
            raise TypeError(f"FastLexer lexes a lexer.Span, not {type(span).__name__}")
        match = self.master.match
        words = self.words
        text, pos, end, ends = span.text, span.begin, span.end, span.ends
        # Token() only forwards to _future_new after a deprecation check; skip the hop
        new = getattr(Token, "_future_new", Token)
        while pos < end:
            m = match(text, pos, end)
            if m is None:
                raise LexError(pos)
            kind = m.lastgroup
            assert kind is not None  # (every alternative of the master pattern is a named group)
            if kind == "_":
                pos = m.end()
            elif kind == "NAME":
                value = m.group()
                yield new(words.get(value, "NAME"), value, pos)
                pos = m.end()
            elif kind in _STRINGS:
                try:
                    after = scan(text, pos, None, ends)
                except Unterminated:
                    raise LexError(pos) from None
                if after > end:  # (cannot be: the code of a ${...} was read by the same scan)
                    raise LexError(pos)
                yield new(kind, m.group(), pos, end_pos=after)
                pos = after
            else:
                yield new(kind, m.group(), pos)
                pos = m.end()
