"""Parsing recipe text into ``nodes`` with lark (LALR(1)).

Theory of operation: the grammar lives in ``recipe.lark``. Lark builds the tree through
an *inline* transformer (``_Builder``), so no intermediate lark ``Tree`` is ever made:
each rule callback returns our own node straight away. Tokens come from ``lexer.FastLexer``,
one regex alternation built from the grammar's own terminals. The parser is built once
per process (about 40 ms) and only when a recipe must really be parsed: an evaluation
cache hit never imports this module.

String tokens are lexed whole (``strscan``); ``strings`` splits them, and each
``${...}`` body is parsed by the same parser with the ``expr`` start symbol. A bare
``${name}`` skips the parser.

Memory stays linear in the file however deep strings nest: every parse reads its span
of the one text of the file in place (``lexer.Span``), a string token is only where it
starts and ends, and the pieces of a string hold the positions of its interpolations,
not copies. (Each level of a nested string stays open while the next is parsed: with
a copy per level, a file of 250 KB took more than 24 GB.) Each level also takes Python
frames: a string nested deeper than the interpreter's recursion limit allows (the limit
every other nesting meets, in the evaluator) is an ``InfiniteRecursion`` error,
"expression nested too deeply", at the deepest ``${`` reached.

Lark's exceptions never escape: they become ``RecipeSyntaxError`` with the position,
the offending token and the expected tokens in words (``parseerrors``).
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lark import Lark, Token
from lark.exceptions import UnexpectedInput

from . import nodes as ast
from .errors import DuplicateField, InfiniteRecursion, RecipeSyntaxError, SourceText
from .lexer import FastLexer, LexError, Span
from .parseerrors import KEYWORDS, lex_error, syntax_error
from .strings import split_indented, split_plain
from .values import INT_MAX

_LEVELS = ({"||"}, {"&&"}, {"==", "!="}, {"+"})
_SIMPLE_VAR = re.compile(r"\s*([A-Za-z_][A-Za-z0-9_]*)\s*\Z")
_END_OF_INTERP = "end of the ${...} interpolation"


def _check_duplicates(
    fields: Iterable[ast.Binding | ast.Param | ast.Package], src: SourceText, what: str
) -> None:
    seen: dict[str, ast.Binding | ast.Param | ast.Package] = {}
    for f in sorted(fields, key=lambda f: f.pos):  # source order: the later one is the duplicate
        first = seen.get(f.name)
        if first is not None:
            line, _ = src.line_col(first.pos)
            raise DuplicateField(f"duplicate {what} '{f.name}' (first defined on line {line})", src, f.pos)
        seen[f.name] = f


def _check_shadowed_params(params: Sequence[ast.Param], body: Sequence[ast.Binding], src: SourceText) -> None:
    """Refuse a field or local ``let`` named like a parameter of its package: they share
    one scope, so it would silently replace the argument (or, as ``version = version``,
    refer to itself). Raised at the field, naming the parameter's line."""
    by_name = {p.name: p for p in params}
    for b in body:
        p = by_name.get(b.name)
        if p is not None:
            line, _ = src.line_col(p.pos)
            what, fix = "field", f"to export the parameter use another name ({b.name}Value = {b.name})"
            if isinstance(b, ast.Let):
                what, fix = "local let", "choose another name"
            raise DuplicateField(
                f"{what} '{b.name}' has the same name as a parameter (line {line}) and they share one scope; {fix}",
                src,
                b.pos,
            )


class _Builder:
    """Inline transformer: lark calls these with the children of each reduced rule."""

    def __init__(self) -> None:
        self.src: SourceText = SourceText("<none>", "")
        #: the ends of the strings nested in interpolations read so far in ``src`` (lexer.Span)
        self.ends: dict[int, int] = {}
        #: how many ``${...}`` deep the parse of ``src`` is, and the deepest (depth, position
        #: of its ``${``) it has reached
        self.depth = 0
        self.deepest = (0, 0)

    def _p(self, tok: Token) -> int:
        """Where ``tok`` starts in ``src.text`` (``FastLexer`` gives every token its start)."""
        assert tok.start_pos is not None, f"token {tok.type} without a position"
        return tok.start_pos

    # -- top level
    def start(self, items: Sequence[Any]) -> ast.Module:
        imports, lets, packages = [], [], []
        for it in items:
            if isinstance(it, ast.Import):
                imports.append(it)
            elif isinstance(it, ast.Package):
                packages.append(it)
            else:
                lets.append(it)
        _check_duplicates([*lets, *packages], self.src, "definition")
        return ast.Module(self.src, imports, lets, packages)

    def import_stmt(self, c: Sequence[Any]) -> ast.Import:
        s = self.string([c[1]])
        if not isinstance(s, ast.Const):
            raise RecipeSyntaxError("an import path cannot contain ${...}", self.src, self._p(c[1]))
        assert isinstance(s.value, str)  # (the Const of a string holds a str)
        return ast.Import(self.src, self._p(c[0]), s.value)

    def let_stmt(self, c: Sequence[Any]) -> ast.Let:
        return ast.Let(self.src, self._p(c[1]), str(c[1]), c[2])

    def package(self, c: Sequence[Any]) -> ast.Package:
        name = c[1]
        params = c[2] if isinstance(c[2], tuple) else ()
        body = [x for x in c[2:] if isinstance(x, ast.Binding)]
        fields = tuple(b for b in body if not isinstance(b, ast.Let))
        lets = tuple(b for b in body if isinstance(b, ast.Let))
        _check_duplicates([*fields, *lets], self.src, "field")
        _check_shadowed_params(params, body, self.src)
        return ast.Package(self.src, self._p(name), str(name), params, fields, lets)

    def params(self, c: Sequence[Any]) -> tuple[ast.Param, ...]:
        ps = tuple(p for p in c if p is not None)
        _check_duplicates(ps, self.src, "parameter")
        return ps

    def param(self, c: Sequence[Any]) -> ast.Param:
        return ast.Param(self.src, self._p(c[0]), str(c[0]), c[1] if len(c) > 1 else None)

    def field(self, c: Sequence[Any]) -> ast.Binding:
        return ast.Binding(self.src, self._p(c[0]), str(c[0]), c[1])

    # -- expressions
    def ifexpr(self, c: Sequence[Any]) -> ast.If:
        return ast.If(self.src, self._p(c[0]), c[1], c[2], c[3])

    def binops(self, c: Sequence[Any]) -> ast.Node:
        """Group ``a op b op c ...`` by precedence (all left-associative):
        ``||`` < ``&&`` < ``==``/``!=`` < ``+``. Recursion goes only as deep as there are
        levels: a run of one level is folded in a loop (a 400,000-term ``1 + 1 + ...``
        recursed once per term and overflowed the stack unlocated, while parsing)."""
        operands = c[0::2]
        ops = c[1::2]

        def climb(lo: int, hi: int, level: int) -> ast.Node:
            # [lo, hi] (operand indices): split at every operator of the weakest level
            # present, each part holding only stronger ones, and fold the parts leftwards
            if lo == hi:
                return operands[lo]
            for lvl in range(level, len(_LEVELS)):
                ks = [k for k in range(lo, hi) if str(ops[k]) in _LEVELS[lvl]]
                if not ks:
                    continue
                # chained only if another comparison sits in this same flat run: a
                # parenthesised one is a single operand here, and is allowed (reported at
                # the second comparison, the one that chains)
                if lvl == 2 and len(ks) > 1:
                    raise RecipeSyntaxError(
                        "comparisons cannot be chained; add parentheses", self.src, self._p(ops[ks[1]])
                    )
                node = climb(lo, ks[0], lvl + 1)
                for i, k in enumerate(ks):
                    right = climb(k + 1, ks[i + 1] if i + 1 < len(ks) else hi, lvl + 1)
                    node = ast.BinOp(self.src, self._p(ops[k]), str(ops[k]), node, right)
                return node
            raise AssertionError("unreachable")

        return climb(0, len(operands) - 1, 0)

    def not_(self, c: Sequence[Any]) -> ast.UnOp:
        return ast.UnOp(self.src, self._p(c[0]), "!", c[1])

    def neg(self, c: Sequence[Any]) -> ast.UnOp:
        return ast.UnOp(self.src, self._p(c[0]), "-", c[1])

    def select(self, c: Sequence[Any]) -> ast.Select:
        return ast.Select(self.src, self._p(c[1]), c[0], str(c[1]))

    def call(self, c: Sequence[Any]) -> ast.Call:
        args = tuple(a for a in c[1:] if a is not None)
        named = [ast.Binding(self.src, a[2], a[0], a[1]) for a in args if a[0] is not None]
        _check_duplicates(named, self.src, "argument")
        return ast.Call(
            self.src, self._p(c[0]), str(c[0]), tuple(a[:2] for a in args), {b.name: b.pos for b in named}
        )

    def call_record(self, c: Sequence[Any]) -> ast.Call:
        return ast.Call(self.src, self._p(c[0]), str(c[0]), ((None, c[1]),))

    def call_string(self, c: Sequence[Any]) -> ast.Call:
        return ast.Call(self.src, self._p(c[0]), str(c[0]), ((None, self.string([c[1]])),))

    def named_arg(self, c: Sequence[Any]) -> tuple[str, ast.Node, int]:
        return (str(c[0]), c[1], self._p(c[0]))

    def pos_arg(self, c: Sequence[Any]) -> tuple[None, ast.Node, int]:
        return (None, c[0], c[0].pos)

    def var(self, c: Sequence[Any]) -> ast.Var:
        return ast.Var(self.src, self._p(c[0]), str(c[0]))

    def number(self, c: Sequence[Any]) -> ast.Const:
        text = str(c[0])
        digits = text.lstrip("0") or "0"  # leading zeros do not make a number large
        if len(digits) > 19 or int(digits) > INT_MAX:
            shown = text if len(text) <= 30 else text[:27] + "..."
            raise RecipeSyntaxError(
                f"number {shown} is too large (integers are 64-bit: at most {INT_MAX})",
                self.src,
                self._p(c[0]),
            )
        return ast.Const(self.src, self._p(c[0]), int(digits))

    def true(self, c: Sequence[Any]) -> ast.Const:
        return ast.Const(self.src, self._p(c[0]), True)

    def false(self, c: Sequence[Any]) -> ast.Const:
        return ast.Const(self.src, self._p(c[0]), False)

    def list(self, c: Sequence[Any]) -> ast.ListExpr:
        return ast.ListExpr(self.src, self._p(c[0]), tuple(x for x in c[1:-1] if x is not None))

    def record(self, c: Sequence[Any]) -> ast.RecordExpr:
        fields = tuple(c[1:-1])
        _check_duplicates(fields, self.src, "field")
        return ast.RecordExpr(self.src, self._p(c[0]), fields)

    def string(self, c: Sequence[Any]) -> ast.Const | ast.Str:
        tok = c[0]  # (its value is only its opening quote: lexer.FastLexer)
        pos = self._p(tok)
        split = split_plain if tok.type == "STRING" else split_indented
        pieces = split(self.src.text, pos, tok.end_pos, self.ends)
        parts: list[str | ast.Node] = []
        for piece in pieces:
            if isinstance(piece, str):
                parts.append(piece)
            else:
                begin, end = piece  # (not ``*piece``: see ``_lark_parse``)
                parts.append(self._interp(begin, end))
        if len(parts) == 1 and isinstance(parts[0], str):
            return ast.Const(self.src, pos, parts[0])
        if not parts:
            return ast.Const(self.src, pos, "")
        return ast.Str(self.src, pos, tuple(parts))

    def _interp(self, begin: int, end: int) -> ast.Node:
        """The node of the code ``src.text[begin:end]`` of a ``${...}``."""
        m = _SIMPLE_VAR.match(self.src.text, begin, end)
        if m and m.group(1) not in KEYWORDS:
            return ast.Var(self.src, m.start(1), m.group(1))
        self.depth += 1
        if self.depth > self.deepest[0]:
            self.deepest = (self.depth, begin - 2)
        try:
            node = _parse(_lark(), self.src, "expr", begin, end, _END_OF_INTERP)
        finally:
            self.depth -= 1
        assert isinstance(node, ast.Node)
        return node


_LARK: Lark | None = None
_BUILDER = _Builder()


def _lark() -> Lark:
    global _LARK
    if _LARK is None:
        grammar = (Path(__file__).parent / "recipe.lark").read_text()
        _LARK = Lark(
            grammar,
            parser="lalr",
            start=["start", "expr"],
            transformer=_BUILDER,
            maybe_placeholders=True,
            lexer=FastLexer,
        )
    return _LARK


def _lark_parse(parser: Lark, text: Span, start: str) -> object:
    """``parser.parse(text, start=start)``, minus lark's front end, which calls its
    parser with ``**kw``. From Python 3.12 a call through ``*``/``**`` arguments is a
    C call, counted against a C recursion limit that ``sys.setrecursionlimit`` does not
    raise, and every level of ``${...}`` parses through here: strings read ~50,000
    levels deep on 3.11 but 371 on 3.12.1 and 2,470 on 3.13.0 (~50,000 on each without
    such calls). The front end's parts are lark internals (lark is pinned in
    ``scripts/constraints.txt``); a lark without them gets the public call. ``start``
    is one of the grammar's start rules (``_lark``), which the front end would check."""
    frontend = parser.parser
    make_stream = getattr(frontend, "_make_lexer_thread", None)
    lalr = getattr(frontend, "parser", None)
    if make_stream is None or lalr is None:
        return parser.parse(text, start=start)
    return lalr.parse(make_stream(text), start)


def _parse(
    parser: Lark, src: SourceText, start: str, begin: int, stop: int, end: str = "end of file"
) -> object:
    """Parse ``src.text[begin:stop]`` from rule ``start``: what ``_Builder`` made of it (an
    ``ast.Module`` for ``start``, an ``ast.Node`` for ``expr``; lark's types say a tree, as
    without an inline transformer). Errors say ``end`` for ``stop``
    (an interpolation's or attribute's end is not the file's). The ends of strings read in
    ``src`` are remembered while it is parsed (``lexer.Span``), and how deep in ``${...}``
    the parse is (``_Builder.depth``)."""
    b = _BUILDER
    outer = src is not b.src  # a new text (not an interpolation in this one)
    if outer:
        saved = b.src, b.ends, b.depth, b.deepest
        b.src, b.ends, b.depth, b.deepest = src, {}, 0, (0, 0)
    try:
        return _lark_parse(parser, Span(src.text, begin, stop, b.ends), start)
    except UnexpectedInput as e:
        raise syntax_error(parser, e, src, begin, stop, end) from None
    except LexError as e:
        # (a copy of the span, once, for the error: what is left open is read in it alone)
        raise lex_error(src.text[begin:stop], src, begin, e.pos - begin, end == _END_OF_INTERP) from None
    except RecursionError:
        # unwound to the parse of the whole text, where there is room to report it
        if not outer or b.deepest[0] == 0:
            raise
        depth, at = b.deepest
        raise InfiniteRecursion(
            f"expression nested too deeply: strings nested {depth:,} deep in ${{...}}, deeper than kiln reads",
            src,
            at,
        ) from None
    finally:
        if outer:
            b.src, b.ends, b.depth, b.deepest = saved


def parse_module(text: str, name: str, path: str | None = None) -> ast.Module:
    """Parse a whole recipe file; ``name`` is how errors refer to it, ``path`` its
    absolute location (imports and ``path "..."`` are relative to its directory)."""
    src = SourceText(name, text, path)
    module = _parse(_lark(), src, "start", 0, len(text))
    assert isinstance(module, ast.Module)
    return module


def parse_expr(text: str, name: str = "<expression>", path: str | None = None) -> ast.Node:
    """Parse one expression (e.g. an attribute argument on the command line)."""
    src = SourceText(name, text, path)
    node = _parse(_lark(), src, "expr", 0, len(text), "end of the attribute expression")
    assert isinstance(node, ast.Node)
    return node
