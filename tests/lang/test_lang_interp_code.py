"""The code inside ``${...}`` is read as code, as in Nix: a ``}`` in a ``#`` comment (to
the end of its line), a ``/* */`` comment or a nested string (``"..."`` or ``''...''``,
in either kind of string) does not close the interpolation, a nested string's escapes
do not end it, and a nested string's own ``${...}`` is code again, to any depth.

``strscan.scan`` reads every string literal, for the lexer (where the token ends) and
for ``strings`` (its pieces) alike. Here it is checked against ``_nix_end``, a reference
written from Nix's lexer rules (lexer.l), recursive where the scanner keeps a stack, on
every short input and many random ones. It replaced regexes that read a nested string to
its first closing quote (a quote in the nested string's own ``${...}`` ended it early)
and records only six deep. The same expressions against real Nix are in
test_lang_nix.py."""

from __future__ import annotations

import itertools
import random

import pytest
from clikit import outcome_within

from kiln.lang import RecipeError, evaluate_file, strscan
from kiln.lang import errors as E
from kiln.lang.evaluator import Evaluator
from kiln.lang.parser import parse_expr, parse_module
from kiln.lang.strscan import HOLE, Unterminated, scan


def _value(text: str):
    ev = Evaluator("/kiln/store", None)
    return ev.eval(parse_expr(text), ev.builtins)


#: what matters to the scan, one character each
_ALPHABET = "{}\"'#/*\n\r\\$x"
#: and runs of them that a random body of single characters seldom holds: the escapes of
#: a nested string, and nested strings opening an interpolation or closing after one
_PIECES = [*_ALPHABET, "''", "'''", "''''", "''$", "''\\", '\\"', "${", "$$", " "]
_PIECES += ['"${', "''${", '}"', "}''"]


def _bodies():
    """Every body of up to four characters of ``_ALPHABET``, then random longer ones of
    ``_PIECES`` (seeded: the same every run)."""
    for n in range(5):
        for chars in itertools.product(_ALPHABET, repeat=n):
            yield "".join(chars)
    rnd = random.Random(17)
    for _ in range(20_000):
        yield "".join(rnd.choice(_ALPHABET) for _ in range(rnd.randint(5, 14)))
    for _ in range(40_000):
        yield "".join(rnd.choice(_PIECES) for _ in range(rnd.randint(2, 12)))


def _nix_end(text: str, i: int, holes: list | None = None) -> int:
    """Where Nix's lexer (lexer.l: STRING, IND_STRING, INSIDE_DOLLAR_CURLY, comments)
    ends the string literal opening at ``text[i]``: the index just after it, or -1 if
    the text ends first. ``holes`` gets the (start, end) of the code of each of its own
    interpolations. A reference written from Nix's rules, not from kiln's scanner. (Nix's
    names may hold a ``'`` and kiln's may not: a ``''`` after a name starts a string
    here, as in kiln.)"""
    n = len(text)
    indented = text.startswith("''", i)
    i += 2 if indented else 1
    while i < n:
        if text.startswith("${", i):
            close = _nix_code(text, i + 2)
            if close < 0:
                return -1
            if holes is not None:
                holes.append((i + 2, close))
            i = close + 1
        elif indented and text.startswith("''", i):  # the escapes ''' ''$ ''\<any>; else the end
            after = text[i + 2 : i + 3]
            if after in ("'", "$") or (after == "\\" and i + 3 < n):
                i += 4 if after == "\\" else 3
            else:
                return i + 2
        elif not indented and text[i] == '"':
            return i + 1
        elif not indented and text[i] == "\\":  # \<any>
            i += 2
        elif text[i] == "$" and text[i + 1 : i + 2] not in ("", "'" if indented else '"', "\\"):
            i += 2  # $<c> is text: so $$ is, and $${ opens nothing
        else:
            i += 1
    return -1


def _nix_code(text: str, i: int) -> int:
    """From just after a ``${`` or ``{`` in code: the index of its closing ``}``, or -1."""
    n = len(text)
    while i < n:
        c = text[i]
        if c == "}":
            return i
        if c == "{":  # (a ${ in code too: Nix pushes a state for both)
            close = _nix_code(text, i + 1)
        elif c == '"' or text.startswith("''", i):
            close = _nix_end(text, i) - 1
        elif c == "#":  # #[^\r\n]*
            while i < n and text[i] not in "\r\n":
                i += 1
            continue
        elif text.startswith("/*", i):  # \/\*([^*]|\*+[^*/])*\*+\/
            close = text.find("*/", i + 2)
            close = close + 1 if close >= 0 else -1
        else:
            i += 1
            continue
        if close < 0:
            return -1
        i = close + 1
    return -1


def _kiln_end(text: str) -> tuple[int, list]:
    """``scan``'s end of the literal at ``text[0]`` (-1: unterminated) and hole spans."""
    pieces: list = []
    try:
        end = scan(text, 0, pieces)
    except Unterminated:
        return -1, []
    assert scan(text, 0) == end  # as the lexer calls it (no pieces: its fast path too)
    return end, [span for kind, span in pieces if kind == HOLE]  # (begin, end) of each code


def test_the_scanner_ends_strings_where_nix_does():
    """Quoted and indented strings, with an interpolation opened at their start or not,
    around every short body and many random ones: ``scan`` ends each where Nix's lexer
    does (or finds it unterminated where Nix does) and cuts the same interpolations."""
    bad = []
    for body in _bodies():
        for text in ('"' + body, "''" + body, '"${' + body, "''${" + body, '"${' + body + '}"'):
            holes: list = []
            nix = _nix_end(text, 0, holes)
            kiln, kiln_holes = _kiln_end(text)
            if kiln != nix or (nix >= 0 and kiln_holes != holes):
                bad.append((text, nix, holes, kiln, kiln_holes))
    assert not bad, bad[:10]


def _nested(depth: int) -> str:
    """A string ``depth`` strings deep, the two kinds in turn, each nested one in the
    ``${...}`` of the one around it and quotes around each: ``''["${ "({${ ...``."""
    s = '"x"'
    for k in range(depth):
        s = f'"({{${{ {s} }}}}"' if k % 2 else f"''[\"${{ {s} }}\"]''"
    return s


def _nested_value(depth: int) -> str:
    s = "x"
    for k in range(depth):
        s = f"({{{s}}}" if k % 2 else f'["{s}"]'
    return s


@pytest.mark.parametrize("depth", [1, 2, 3, 20])
def test_strings_nest_in_interpolations_to_any_depth(depth):
    """A nested string's own ``${...}`` holding a quote ended that string early (the
    regexes read a nested string to its first closing quote): a syntax error."""
    assert _value(_nested(depth)) == _nested_value(depth)


def test_records_nest_in_interpolations_to_any_depth():
    """Six levels were the most (a regex cannot count braces); a seventh was refused."""
    for depth in (7, 20, 100):
        text = '"${ ' + "{ a = " * depth + '"v"' + "; }" * depth + ".a" * depth + ' }"'
        assert _value(text) == "v", depth
        assert _value("''${ " + text + " }''") == "v", depth


def test_deep_nesting_in_a_file_reads_in_linear_time(tmp_path, monkeypatch):
    """Strings nested 1,000 deep in a file evaluate, and the scanner reads each character
    a few times, not once per level of nesting (the lexer and the splitter meet each
    ``${...}`` again at each level: ``strscan.scan``'s ``ends`` remember what they read)."""
    read = [0]

    def counting(run):
        def counted(text: str, i: int):
            m = run(text, i)
            read[0] += m.end() - i + 1
            return m

        return counted

    for name in ("_STR_RUN", "_IND_RUN", "_CODE_RUN"):
        monkeypatch.setattr(strscan, name, counting(getattr(strscan, name)))
    text = f"package p {{ build = {_nested(1000)} }}\n"
    (tmp_path / "d.recipe").write_text(text)
    got = outcome_within(120, lambda: evaluate_file(tmp_path / "d.recipe"), "deep nesting")
    assert not isinstance(got, BaseException), got
    assert dict(got.packages["p"].env)["build"] == _nested_value(1000)
    assert read[0] < 10 * len(text), (read[0], len(text))  # ~500 times over without ends


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # a quote in a nested string's own ${...}: Nix reads code there
        ('"${ "a${ "b" }c" }"', "abc"),
        ("''x ${ \"${ ''y ${ \"''\" } z'' }\" } w''", "x y '' z w"),
        ("\"${ ''x ${ \"''\" } y'' }\"", "x '' y"),
        ("''${ ''x ${ \"''\" } y'' }''", "x '' y"),
        ('"${ "${ "}" }" }"', "}"),
        ("\"${ ''${ ''}'' }'' }\"", "}"),
        # comments holding quotes and braces in a nested string's ${...}
        ('"${ "a${ "b" # " } \'\'\n}c" }"', "abc"),
        ('"${ "a${ /* " } \'\' { */ "b" }c" }"', "abc"),
        ("''${ \"a${ \"b\" # }\r}c\" }''", "abc"),
        # records in a nested string's ${...}, holding strings
        ('"${ "<${ { a = "}"; }.a }>" }"', "<}>"),
    ],
)
def test_quotes_in_nested_interpolations_end_nothing(text, value):
    assert _value(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ('"${ "a" # }\n}"', "a"),
        ("''${ \"a\" # }\n}''", "a"),
        ('"${ "a" # "\n}"', "a"),  # a quote in a comment starts no string
        ("''${ \"a\" # ''\n}''", "a"),
        ('"${ "a" /* } */ }"', "a"),
        ("''${ \"a\" /* '' } */ }''", "a"),
        ('"${ "a" /* " */ }"', "a"),
        ('"${ { a = "x"; /* } */ }.a }"', "x"),
        ('"<${ "}" }>"', "<}>"),
        ("\"<${ ''}'' }>\"", "<}>"),  # an indented string in a quoted string's ${...}
        ("''<${ ''a}'' }>''", "<a}>"),
        ("''\n  a\n  ${ \"b\" # }\n  }\n''", "a\nb\n"),
        ('/* a } */ "b" /**/ + /* * / **/ "c" # }', "bc"),
    ],
)
def test_braces_in_comments_and_nested_strings_do_not_count(text, value):
    assert _value(text) == value


@pytest.mark.parametrize(
    ("text", "value"),
    [
        # an indented string nested in ${...} ended at its first '' (escapes broke it)
        ("\"${ ''a''$b'' }\"", "a$b"),
        ("\"${ if true then ''echo ''${HOME}'' else \"\" }\"", "echo ${HOME}"),
        ("\"${ ''a'''b'' }\"", "a''b"),
        ("\"${ ''a''\\nb'' }\"", "a\nb"),
        ("\"${ ''''$ '' }\"", "$ "),
        ("\"${ ''a''\\}b'' }\"", "a}b"),
        ("\"${ ''a'''''$b'' }\"", "a''$b"),
        ("''${ ''a''$b'' }''", "a$b"),
        ("'' ${ ''a'''b'' } ''", "a''b "),
        ("''\n  x ${ ''a''\\\n'' } y\n''", "x a\n y\n"),
        # a ${ in the nested string: code, to the scanner as to the parser
        ("\"${ ''x ${ \"}\" } y'' }\"", "x } y"),
        # a quoted string nested in ${...}: \<c> is an escape
        ('"${ "a\\"}" }"', 'a"}'),
        ('"${ "\\${" }"', "${"),
        ('"${ "a\\\\" }"', "a\\"),
        ("''${ \"\\\"}\" }''", '"}'),
    ],
)
def test_escapes_in_nested_strings_do_not_end_them(text, value):
    """In the code of a ``${...}``, a nested string's escapes (``''$``, ``'''`` and
    ``''\\<c>`` in an indented one, ``\\<c>`` in a quoted one) are read as escapes, not
    as its end: the same values as Nix gives (test_lang_nix.py checks them against it)."""
    assert _value(text) == value


def test_a_comment_in_an_interpolation_in_a_file(tmp_path):
    (tmp_path / "c.recipe").write_text(
        "/* a block comment\n   over lines } */\n"
        "package p {\n"
        '  flags = "--a ${ "x" # the value }\n  }"\n'
        "  build = ''\n    echo ${ /* } */ flags }\n  ''\n"
        "}\n"
    )
    env = dict(evaluate_file(tmp_path / "c.recipe").packages["p"].env)
    assert (env["flags"], env["build"]) == ("--a x", "echo --a x\n")


def _parse_within(seconds: float, text: str) -> BaseException | None:
    """The error parsing ``text`` raises (None if it parses); fails the test on a hang."""
    got = outcome_within(seconds, lambda: parse_module(text, "f.recipe"), f"parsing {text!r}")
    return got if isinstance(got, BaseException) else None


_UNCLOSED = "unterminated ${...}: no '}' closes this '${'"
_TAKES = "it takes the '}' meant to close the interpolation"


@pytest.mark.parametrize(
    ("text", "first_line"),
    [
        (
            'let x = "${ x # }"\nlet y = 1\n',
            "f.recipe:1:15: the '}' closing this ${...} is inside a '#' comment (which runs to the "
            "end of the line), so the ${...} is not closed there",
        ),
        (
            "let x = ''${ x # }''\n",
            "f.recipe:1:16: the '}' closing this ${...} is inside a '#' comment (which runs to the "
            "end of the line), so the ${...} is not closed there",
        ),
        (
            'let x = "${ x /* }"\n',
            f"f.recipe:1:15: unterminated comment (/* ... */) in the code of a ${{...}}: {_TAKES}",
        ),
        (
            "let x = \"${ ''x }\"\n",
            f"f.recipe:1:13: unterminated indented string ('' ... '') in the code of a ${{...}}: {_TAKES}",
        ),
        ("let x = 1 /* } \n", "f.recipe:1:11: unterminated comment: '/*' without a closing '*/'"),
        ('let x = "a${ "b" }\n', "f.recipe:1:9: unterminated string: no '\"' closes it"),
        ("let x = ''a\n", "f.recipe:1:9: unterminated indented string ('' ... ''): no '' closes it"),
        # the '${' left open, not a closed nested string holding a '}' (or quotes) after it
        ('let x = "${ "x"\n', f"f.recipe:1:10: {_UNCLOSED}"),
        ('let x = "${ "}"\n', f"f.recipe:1:10: {_UNCLOSED}"),
        ('let x = "${ "a${ "b" }c" \n', f"f.recipe:1:10: {_UNCLOSED}"),
        ("let x = ''${ ''a'''' }''\n", f"f.recipe:1:11: {_UNCLOSED}"),  # ('''' are escapes)
        ('let x = "${ "a\\" }"\n', f"f.recipe:1:10: {_UNCLOSED}"),
        # the innermost thing left open: a nested string's ${, a record, a nested string
        ('let x = "${ "a${ b c" }"\n', f"f.recipe:1:15: {_UNCLOSED}"),
        (
            'let x = "${ {a = "}";\n',
            "f.recipe:1:13: unterminated record in the code of a ${...}: no '}' closes this '{'",
        ),
        (
            "let x = ''${ \"a${ ''b\n",
            "f.recipe:1:19: unterminated indented string ('' ... '') in the code of a ${...}",
        ),
    ],
)
def test_an_unterminated_interpolation_or_comment_is_located(text, first_line):
    """At what is left open (the innermost), or at the comment that took the closing
    brace; never at a nested string that is closed (one holding a '}' was blamed)."""
    e = _parse_within(30, text)
    assert isinstance(e, E.RecipeSyntaxError), e
    assert str(e).splitlines()[0] == first_line


def test_short_interpolations_with_comments_parse_or_fail_cleanly():
    """Every body of up to three characters of comment and string syntax, in both kinds
    of string: a parse or a located recipe error, never another exception or a hang."""
    alphabet = "{}\"'#/*\n\\$x"
    for n in range(4):
        for chars in itertools.product(alphabet, repeat=n):
            body = "".join(chars)
            for text in (f'let x = "${{{body}}}"\n', f"let x = ''${{{body}}}''\n"):
                e = _parse_within(30, text)
                assert e is None or (isinstance(e, RecipeError) and e.pos is not None), (text, e)


@pytest.mark.parametrize(
    "text",
    [
        "let x = \"${ ''" + "''$''\\x'''" * 100_000 + "\n",
        "let x = ''${ ''" + "''$''\\x'''{" * 100_000 + "\n",
        'let x = "${ "' + '\\"\\$' * 100_000 + "\n",
        'let x = "${ ' + "''a''$''\\}'' " * 100_000 + "\n",
        "let x = ''${ " + "{ ''a''$'' " * 100_000 + "\n",
        'let x = "' + '${ "' * 100_000 + "\n",  # 200,000 things left open
        "let x = ''${ " + "{ ''${ " * 100_000 + "\n",
    ],
)
def test_long_unterminated_escape_runs_fail_quickly_and_located(text):
    """Nested strings full of escapes that never end (or an interpolation that never
    does, or nesting that never closes): a located syntax error in linear time, not a
    hang (the scanner only moves forward, and its runs are possessive regexes)."""
    e = _parse_within(30, text)
    assert isinstance(e, E.RecipeSyntaxError) and e.pos is not None, e
    assert str(e).startswith("f.recipe:1:"), str(e)[:200]
