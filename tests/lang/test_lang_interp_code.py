"""The code inside ``${...}`` is read as code, as in Nix: a ``}`` in a ``#`` comment (to
the end of its line), a ``/* */`` comment or a nested string (``"..."`` or ``''...''``,
in either kind of string) does not close the interpolation. It did: ``"${ x # }"``
closed at the comment's brace, and ``/* */`` was not a comment at all. A nested string's
escapes do not end it: a nested ``''...''`` was taken to end at its first ``''``, so
``"${ ''a''$b'' }"`` (``'''``, ``''\\<c>`` alike) broke the enclosing string.

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
from clikit import outcome_within

from kiln.lang import RecipeError, evaluate_file
from kiln.lang import errors as E
from kiln.lang.evaluator import Evaluator
from kiln.lang.parser import parse_expr, parse_module
from kiln.lang.strings import MAX_NESTING, _scan_interp

GRAMMAR = Path(__file__).resolve().parents[2] / "lang" / "recipe.lark"


def string_terminals() -> tuple[str, str]:
    """(STRING, IND_STRING) as written in recipe.lark (lark's ``/.../`` syntax: ``/`` is
    ``\\/``). Inside ``${...}``, each level is a repetition of: a plain character, a
    quoted string, an indented string, a ``#`` comment, a ``/* */`` comment, or a
    ``{...}`` one level deeper. A nested string ends at its first closing quote that is
    not part of an escape (``\\<c>`` in a quoted string; ``'''``, ``''$`` and ``''\\<c>``
    in an indented one, as in Nix), whatever else it holds: a ``${`` in it is text.
    Their first characters differ, so at most one alternative applies anywhere (and in a
    nested indented string, a ``''`` either starts an escape or closes it) and every
    repetition can be possessive (``*+``): no backtracking, and no memory kept per
    character of a long string or comment."""
    quoted = r'"(?:[^"\\]|\\.)*+"'
    indented = r"''(?:[^']|'(?!')|'''|''\$|''\\.)*+''"
    comment = r"#[^\r\n]*+"
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


#: what matters to the scan, one character each
_ALPHABET = "{}\"'#/*\n\r\\$x"
#: and runs of them that a random body of single characters seldom holds: the escapes of
#: a nested string (an indented string taken to end at its first ``''`` broke on them)
_PIECES = [*_ALPHABET, "''", "'''", "''''", "''$", "''\\", '\\"', "${", "$$", " "]


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
        yield "".join(rnd.choice(_PIECES) for _ in range(rnd.randint(2, 10)))


def _nix_interp_end(text: str, i: int) -> int | None:
    """Where Nix's lexer (lexer.l: its DEFAULT, STRING and IND_STRING states, comments)
    closes the interpolation whose ``${`` ends just before ``i``: the index of its ``}``,
    or -1 if it never closes; None if a nested string holds a ``${`` of its own (code
    that kiln reads as text, see the docs). A reference written from Nix's rules, not
    from kiln's regexes. (Nix's names may hold a ``'`` and kiln's may not: a ``''``
    after a name starts a string here, as in kiln.)"""
    depth, n = 1, len(text)
    while i < n:
        if text[i] == '"':  # STRING: \<any>, $\<any> and $<c> for c not { " \ are text
            i += 1
            while i < n and text[i] != '"':
                if text.startswith("${", i):
                    return None
                if text[i] == "\\" or (text[i] == "$" and text[i + 1 : i + 2] not in ("", '"', "\\")):
                    i += 2
                else:
                    i += 1
            if i >= n:
                return -1
            i += 1
        elif text.startswith("''", i):  # IND_STRING: ''' ''$ ''\<any> escapes; $<c> for c not { '
            i += 2
            while True:
                if i >= n:
                    return -1
                if text.startswith("''", i):
                    if text[i + 2 : i + 3] in ("'", "$"):
                        i += 3
                    elif text[i + 2 : i + 3] == "\\" and i + 3 < n:
                        i += 4
                    else:
                        i += 2
                        break
                elif text.startswith("${", i):
                    return None
                elif text[i] == "$" and text[i + 1 : i + 2] not in ("", "'"):
                    i += 2
                else:
                    i += 1
        elif text[i] == "#":  # #[^\r\n]*
            while i < n and text[i] not in "\r\n":
                i += 1
        elif text.startswith("/*", i):  # \/\*([^*]|\*+[^*/])*\*+\/
            close = text.find("*/", i + 2)
            if close < 0:
                return -1
            i = close + 2
        else:
            if text[i] == "{":  # a ${ in code counts as its {: Nix pushes a state for both
                depth += 1
            elif text[i] == "}":
                depth -= 1
                if depth == 0:
                    return i
            i += 1
    return -1


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


def test_the_brace_scan_finds_the_end_nix_finds():
    """Where Nix's lexer closes an interpolation, ``_scan_interp`` closes it too (and so
    does the grammar's regex, by the test above), nested strings' escapes included."""
    bad = []
    for body in _bodies():
        text = "${" + body
        nix = _nix_interp_end(text, 2)
        if nix is not None and _scan_interp(text, 2)[0] != nix:
            bad.append((body, nix, _scan_interp(text, 2)[0]))
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
        # a ${ in the nested string (text to the scan, code to the parser)
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
        # an escape does not end a nested string: the '}' is in it
        (
            "let x = \"${ ''a''$b }\"\n",
            "f.recipe:1:13: unterminated indented string ('' ... '') in the code of a ${...}: it "
            "takes the '}' meant to close the interpolation",
        ),
        (
            "let x = ''${ ''a'''' }''\n",
            "f.recipe:1:14: unterminated indented string ('' ... '') in the code of a ${...}: it "
            "takes the '}' meant to close the interpolation",
        ),
        (
            'let x = "${ "a\\" }"\n',
            "f.recipe:1:13: unterminated string in the code of a ${...}: it takes the '}' meant to "
            "close the interpolation",
        ),
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
    ],
)
def test_long_unterminated_escape_runs_fail_quickly_and_located(text):
    """Nested strings full of escapes that never end (or an interpolation that never
    does): a located syntax error in linear time, not a hang (the string regexes'
    repetitions are possessive: no backtracking into a nested string)."""
    e = _parse_within(30, text)
    assert isinstance(e, E.RecipeSyntaxError) and e.pos is not None, e
    assert str(e).startswith("f.recipe:1:"), str(e)[:200]
