"""The ``RecipeSyntaxError`` for what the parser (``parser``, lark) or its lexer
(``lexer.FastLexer``) refused: the position, the offending token and the tokens that
were expected, in words ("an expression", "a name", "';'") rather than lark's terminal
names. Nothing here parses; the parser calls these once a parse has failed.
"""

from __future__ import annotations

from collections.abc import Iterable

from lark import Lark, Token
from lark.exceptions import UnexpectedCharacters, UnexpectedEOF, UnexpectedInput, UnexpectedToken

from .errors import RecipeSyntaxError, SourceText
from .strscan import refused_string

#: words that are tokens of their own, never names
KEYWORDS = {"import", "let", "package", "if", "then", "else", "true", "false"}

_WORDS = {
    "NAME": "a name",
    "NUMBER": "a number",
    "STRING": "a string",
    "IND_STRING": "an indented string",
    "$END": "end of file",
}
_EXPR_START = {
    "NAME",
    "NUMBER",
    "STRING",
    "IND_STRING",
    "LSQB",
    "LBRACE",
    "LPAR",
    "TRUE",
    "FALSE",
    "IF",
    "BANG",
    "MINUS",
}


def _describe_expected(parser: Lark, names: Iterable[str]) -> str:
    """The terminals ``names`` in words, as one phrase ("a name, ';' or '}'"); "" if none."""
    wanted = set(names)
    words = []
    if {"NAME", "NUMBER", "STRING", "LSQB"} <= wanted:
        words.append("an expression")
        wanted -= _EXPR_START
    for n in sorted(wanted):
        if n in _WORDS:
            words.append(_WORDS[n])
            continue
        try:
            pattern = parser.get_terminal(n).pattern
        except KeyError:
            words.append(n)
            continue
        words.append(f"'{pattern.value}'" if pattern.type == "str" else n.lower())
    words = sorted(set(words), key=lambda w: (w[0] == "'", w))
    if not words:
        return ""
    if len(words) == 1:
        return words[0]
    return ", ".join(words[:-1]) + " or " + words[-1]


def _describe_token(tok: Token, end: str) -> str:
    if tok.type == "$END":
        return end
    if tok.type == "NAME":
        return f"name '{tok}'"
    if tok.type in ("STRING", "IND_STRING"):
        return "string"
    if tok.type == "NUMBER":
        return f"number {tok}"
    return f"'{tok}'"


def _tokens_before(parser: Lark, src: SourceText, begin: int, pos: int) -> list[Token]:
    """The tokens of ``src.text[begin:pos]``, lexed again (only an error pays for it);
    [] if they cannot be had."""
    from lark.lexer import LexerState

    from .lexer import LexError, Span

    lexer = getattr(parser.parser, "lexer", None)  # (lark's front end; lark is pinned)
    if lexer is None:
        return []
    try:
        # (lark declares a str slice: FastLexer lexes a Span, as the parser hands it one)
        return list(lexer.lex(LexerState(Span(src.text, begin, pos, {})), None))  # type: ignore[arg-type]
    except LexError:
        return []


def _start(tok: Token) -> int:
    """Where ``tok`` starts (``FastLexer`` sets it on every token; lark types it optional)."""
    return tok.start_pos or 0


def _open_string_note(tokens: list[Token], src: SourceText, begin: int, pos: int) -> str:
    """A note when a ``"..."`` string that runs over a line end closes on the line of
    ``pos``, before it: a missing closing quote makes the next line's opening quote close
    the string, and the parse fails a line late, at what follows (``version = "1.0``
    then ``build = "make install"`` fails at ``install``). "" otherwise."""
    text = src.text
    line_start = text.rfind("\n", begin, pos) + 1
    found = None
    for tok in tokens:
        end = tok.end_pos
        if (
            tok.type == "STRING"
            and end is not None
            and end > line_start
            and "\n" in text[tok.start_pos : end]
        ):
            found = tok
    if found is None:
        return ""
    line, col = src.line_col(_start(found))
    return f" (the string opened at {line}:{col} runs over a line end to this line: is its closing '\"' missing?)"


def _juxtaposed_names_note(tokens: list[Token], src: SourceText, pos: int) -> str:
    """A note when the two tokens before ``pos`` are names side by side on an earlier
    line (``src = path srcdir``): no call (a call's argument is in parentheses, or a
    string or record literal), so the second name began a new field and the parse fails
    a line late, at the next. "" otherwise."""
    if len(tokens) < 2 or tokens[-2].type != "NAME" or tokens[-1].type != "NAME":
        return ""
    fn, arg = tokens[-2], tokens[-1]
    line = src.line_col(_start(fn))[0]
    if src.line_col(_start(arg))[0] != line or line == src.line_col(pos)[0]:
        return ""
    return (
        f" (`{fn} {arg}` on line {line} is no call: a function takes its argument in parentheses, "
        f"`{fn}({arg})`, or as a string or record literal)"
    )


def lex_error(text: str, src: SourceText, base: int, pos: int, interp: bool) -> RecipeSyntaxError:
    """The error for ``text[pos]``, where no token starts (``interp``: ``text`` is the
    code of an interpolation)."""
    ch = text[pos]
    if ch == '"' or text.startswith("''", pos):
        msg, at = refused_string(text, pos)
        return RecipeSyntaxError(msg, src, base + at)
    if text.startswith("${", pos):
        where = " in the code of an interpolation" if interp else ""
        return RecipeSyntaxError(f"unexpected '${{'{where} (only a string may hold one)", src, base + pos)
    if text.startswith("/*", pos):  # the only way a block comment fails to lex
        return RecipeSyntaxError("unterminated comment: '/*' without a closing '*/'", src, base + pos)
    return RecipeSyntaxError(f"unexpected character {ch!r}", src, base + pos)


def syntax_error(
    parser: Lark, e: UnexpectedInput, src: SourceText, begin: int, stop: int, end: str
) -> RecipeSyntaxError:
    """The error for lark's ``e``, raised parsing ``src.text[begin:stop]`` (its tokens'
    positions are positions in ``src.text``); ``end`` is what to call ``stop`` (the end
    of the file, an interpolation, an attribute)."""
    if isinstance(e, UnexpectedToken):
        tok = e.token
        pos = tok.start_pos if tok.type != "$END" and tok.start_pos is not None else stop
        expected = _describe_expected(parser, e.accepts or e.expected)
        msg = f"unexpected {_describe_token(tok, end)}"
        if tok.type == "NAME" and str(tok) in KEYWORDS:
            msg = f"unexpected keyword '{tok}'"
        names = set(e.accepts or e.expected)
        if tok.type == "IF" and "IF" not in names and {"NAME", "NUMBER"} <= names:
            # an operand is expected, and `if` is one only in parentheses (as in Nix)
            return RecipeSyntaxError(
                "an 'if' must be in parentheses here: (if ... then ... else ...)", src, pos
            )
        msg += f"; expected {expected}" if expected else ""
        tokens = _tokens_before(parser, src, begin, pos)
        notes = _open_string_note(tokens, src, begin, pos) or _juxtaposed_names_note(tokens, src, pos)
        return RecipeSyntaxError(msg + notes, src, pos)
    if isinstance(e, UnexpectedCharacters):  # (lark's own lexers: FastLexer raises LexError)
        # (lark declares pos_in_stream as the base class's `= None`, unannotated; the
        # lexer's error sets it to where no token starts)
        at: int = e.pos_in_stream  # type: ignore[assignment]
        ch = src.text[at] if at < len(src.text) else ""
        expected = _describe_expected(parser, e.allowed or ())
        return RecipeSyntaxError(
            f"unexpected character {ch!r}" + (f"; expected {expected}" if expected else ""), src, at
        )
    if isinstance(e, UnexpectedEOF):
        return RecipeSyntaxError(f"unexpected {end}", src, stop)
    return RecipeSyntaxError(str(e), src, begin)
