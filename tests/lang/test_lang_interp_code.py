"""The code inside ``${...}`` is read as code, as in Nix: a ``}`` in a ``#`` comment (to
the end of its line), a ``/* */`` comment or a nested string (``"..."`` or ``''...''``,
in either kind of string) does not close the interpolation. It did: ``"${ x # }"``
closed at the comment's brace, and ``/* */`` was not a comment at all.

The lexer reads strings with recipe.lark's regexes and ``strings._scan_interp`` finds
each interpolation's end again when splitting the token; the two must agree, or a
string is cut in the wrong place. ``string_terminals`` generates the regexes (a regex
cannot count braces, so they are nested ``MAX_NESTING`` levels deep by hand); the
grammar must hold exactly what it makes. The same expressions against real Nix are in
test_lang_nix.py."""

from __future__ import annotations

import itertools
import random
import re
from pathlib import Path

import pytest
from lang_helpers import outcome_within

from kiln.lang import RecipeError, evaluate_file
from kiln.lang import errors as E
from kiln.lang.evaluator import Evaluator
from kiln.lang.parser import parse_expr, parse_module
from kiln.lang.strings import MAX_NESTING, _scan_interp

GRAMMAR = Path(__file__).resolve().parents[2] / "lang" / "recipe.lark"


def string_terminals() -> tuple[str, str]:
    """(STRING, IND_STRING) as written in recipe.lark (lark's ``/.../`` syntax: ``/`` is
    ``\\/``). Inside ``${...}``, each level is a repetition of: a plain character, a
    quoted string, an indented string (both without nested quotes: each ends at its
    first closing quote), a ``#`` comment, a ``/* */`` comment, or a ``{...}`` one level
    deeper. Their first characters differ, so at most one alternative applies anywhere
    and every repetition can be possessive (``*+``): no backtracking, and no memory kept
    per character of a long string or comment."""
    quoted = r'"(?:[^"\\]|\\.)*+"'
    indented = r"''(?:[^']|'(?!'))*+''"
    comment = r"#[^\n]*+"
    block = r"\/\*(?:[^*]|\*++[^*\/])*+\*++\/"
    plain = r"""[^{}"'#\/]|'(?!')|\/(?!\*)"""
    atom = "|".join([plain, quoted, indented, comment, block])
    body = f"(?:{atom})*+"
    for _ in range(MAX_NESTING):
        body = f"(?:{atom}|\\{{{body}\\}})*+"
    interp = r"\$\{" + body + r"\}"
    string = r'"(?:[^"\\$]|\\.|\$\$|\$(?!\{)|' + interp + r')*+"'
    ind_string = r"''(?:[^'$]|'(?!')|'''|''\$|''\\.|\$\$|\$(?!\{)|" + interp + r")*+''"
    return string, ind_string


def _interp_regex() -> re.Pattern:
    """The ``${...}`` part of the string terminals, as Python compiles it."""
    string = string_terminals()[0]
    return re.compile(string[string.index(r"\$\{") : -len(r')*+"')], re.S)


def _value(text: str):
    ev = Evaluator("/kiln/store", None)
    return ev.eval(parse_expr(text), ev.builtins)


def test_the_grammar_holds_the_generated_string_terminals():
    lines = GRAMMAR.read_text().splitlines()
    string, ind_string = string_terminals()
    assert f"STRING: /{string}/s" in lines
    assert f"IND_STRING: /{ind_string}/s" in lines


def _bodies():
    """Every body of up to four characters from what matters to the scan, then random
    longer ones (seeded: the same every run)."""
    alphabet = "{}\"'#/*\n\\$x"
    for n in range(5):
        for chars in itertools.product(alphabet, repeat=n):
            yield "".join(chars)
    rnd = random.Random(17)
    for _ in range(20_000):
        yield "".join(rnd.choice(alphabet) for _ in range(rnd.randint(5, 14)))


def test_the_brace_scan_agrees_with_the_lexer():
    """Where the grammar's regex closes an interpolation, ``_scan_interp`` closes it
    too; where the regex finds no end, the scan finds none either, or a brace nested
    deeper than the regex reads (which it reports)."""
    interp = _interp_regex()
    bad = []
    for body in _bodies():
        text = "${" + body
        m = interp.match(text)
        end, deep, _ = _scan_interp(text, 2)
        if (m is not None and end != m.end() - 1) or (m is None and end >= 0 and deep < 0):
            bad.append((body, m and m.end() - 1, end))
    assert not bad, bad[:10]


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
            "f.recipe:1:15: unterminated comment (/* ... */) in the code of a ${...}: it takes the "
            "'}' meant to close the interpolation",
        ),
        (
            "let x = \"${ ''x }\"\n",
            "f.recipe:1:13: unterminated indented string ('' ... '') in the code of a ${...}: it "
            "takes the '}' meant to close the interpolation",
        ),
        ('let x = "${ "x"\n', "f.recipe:1:9: unterminated string (or a '${' in it that is never closed)"),
        ("let x = 1 /* } \n", "f.recipe:1:11: unterminated comment: '/*' without a closing '*/'"),
    ],
)
def test_an_unterminated_interpolation_or_comment_is_located(text, first_line):
    """At the comment or string that took the closing brace, not just at the string."""
    e = _parse_within(30, text)
    assert isinstance(e, E.RecipeSyntaxError), e
    assert str(e).splitlines()[0] == first_line


def test_short_interpolations_with_comments_parse_or_fail_cleanly():
    """Every body of up to three characters of comment and string syntax, in both kinds
    of string: a parse or a located recipe error, never another exception or a hang."""
    alphabet = "{}\"'#/*\n$x"
    for n in range(4):
        for chars in itertools.product(alphabet, repeat=n):
            body = "".join(chars)
            for text in (f'let x = "${{{body}}}"\n', f"let x = ''${{{body}}}''\n"):
                e = _parse_within(30, text)
                assert e is None or (isinstance(e, RecipeError) and e.pos is not None), (text, e)
