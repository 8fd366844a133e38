"""Strings nested deep in ``${...}`` are read in memory linear in the file, and a string
nested deeper than kiln reads is a located "expression nested too deeply" error.

Each level of a nested string stays open while the parser reads the next one. Each level
kept its own copies of the string's text and of its interpolation's code: memory was
quadratic in the depth (a 40 KB file, 8,000 levels, took 850 MB; a 250 KB one more than
24 GB). Now every level reads the one text of the file in place. The memory checks run
``kiln`` in a subprocess under ``RLIMIT_AS`` (1.25 GiB: the evaluation thread's 512 MiB
stack is reserved address space too), which the copying parser exceeded."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path

import pytest
from lang_helpers import run_kiln

from kiln.lang import RecipeError, evaluate_file
from kiln.lang import errors as E
from kiln.lang.parser import parse_module

#: address space a ``kiln`` subprocess may take (the copying parser needed ~1.5 GiB at
#: 8,000 levels; the in-place one takes ~0.8 GiB at the deepest it reads)
_AS_LIMIT = 1280 << 20


def _nested(depth: int, inner: str = '"1"', sep: str = "") -> str:
    """``"a${"a${ ... inner ... }"}"``, ``depth`` strings deep (``sep`` after each ``${``)."""
    return ('"a${' + sep) * depth + inner + '}"' * depth


def _kiln_limited(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return run_kiln(args, cwd, home=cwd / "home", mem=_AS_LIMIT, timeout=300)


def test_deep_strings_evaluate_in_bounded_memory(tmp_path):
    """8,000 levels (a 48 KB file) evaluate under the address-space limit, to the right
    value; the copying parser ran out of memory there ("evaluation went out of memory")."""
    depth = 8000
    (tmp_path / "d.recipe").write_text(f"package p {{ build = {_nested(depth)}; }}\n")
    r = _kiln_limited(["show-derivation", "d.recipe", "p", "--no-cache"], tmp_path)
    assert r.returncode == 0, r.stderr[-2000:]
    (drv,) = json.loads(r.stdout).values()
    assert drv["env"]["build"] == "a" * depth + "1"


def test_too_deep_strings_are_a_located_error_in_bounded_memory(tmp_path):
    """60,000 levels (360 KB) are deeper than kiln reads: an ``InfiniteRecursion`` error
    at the ``${`` of the deepest level reached, not a crash or the machine's memory."""
    text = f"let x = {_nested(60_000)};\n"
    (tmp_path / "d.recipe").write_text(text)
    r = _kiln_limited(["eval", "d.recipe", "--no-cache"], tmp_path)
    assert r.returncode == 1, r.stderr[-2000:]
    m = re.match(
        r"error: d\.recipe:1:(\d+): expression nested too deeply: strings nested ([\d,]+) deep", r.stderr
    )
    assert m, r.stderr[:2000]
    col, depth = int(m.group(1)), int(m.group(2).replace(",", ""))
    assert 1000 < depth < 60_000
    # the caret is at the ${ of level `depth` (levels count from 1, the outermost)
    assert text[col - 1 : col + 1] == "${"
    assert col - 1 == len("let x = ") + 4 * depth - 2
    assert "Traceback" not in r.stderr


def test_errors_deep_in_nested_strings_are_located(tmp_path):
    """A syntax error and an unknown name 3,000 levels deep, on the last line of a file
    nesting one level per line, are reported at their line and column."""
    depth = 3000
    body = _nested(depth, inner='"x" + ', sep="\n")
    (tmp_path / "syn.recipe").write_text(f"let x = {body};\n")
    with pytest.raises(E.RecipeSyntaxError) as info:
        evaluate_file(tmp_path / "syn.recipe")
    where = f"{tmp_path / 'syn.recipe'}:{depth + 1}:7"
    assert str(info.value).startswith(f"{where}: unexpected end of the ${{...}} interpolation")

    body = _nested(depth, inner="  nope", sep="\n")
    (tmp_path / "name.recipe").write_text(f"let x = {body};\n")
    with pytest.raises(E.UnknownName) as info:
        evaluate_file(tmp_path / "name.recipe").attributes()
    assert str(info.value).startswith(f"{tmp_path / 'name.recipe'}:{depth + 1}:3: unknown name 'nope'")


def test_nested_string_positions_are_file_positions():
    """Nodes inside nested interpolations carry their positions in the file (each level
    reads the file's text in place; nothing shifts positions any more)."""
    text = 'let x = "a${ "b${ y + "c${ z }" }" }";'
    mod = parse_module(text, "t.recipe")
    outer = mod.lets[0].expr
    inner = outer.parts[1].parts[1]  # "b${ y + ... }" -> the BinOp y + "c..."
    assert inner.op == "+" and text[inner.left.pos] == "y"
    assert text[inner.right.parts[1].pos] == "z"


@pytest.mark.parametrize(
    ("code", "bad", "message"),
    [
        ("1 ? 2", "?", "unexpected character '?'"),
        ("${ a }", "${", "unexpected '${' in the code of an interpolation (only a string may hold one)"),
    ],
)
def test_lex_errors_in_nested_code_are_located(code, bad, message):
    """What no token starts, in the code of a nested ``${...}``, is reported at its own
    column (the lexer reads the code where it is in the file)."""
    text = f'let x = "${{ "${{ {code} }}" }}";'
    with pytest.raises(RecipeError) as info:
        parse_module(text, "t.recipe")
    col = text.index(code) + code.index(bad) + 1
    assert str(info.value).startswith(f"t.recipe:1:{col}: {message}")
