"""One test per error kind: tests/data/lang/errors/<name>.recipe must fail with exactly
the message in <name>.err (file:line:col, the source line, a caret, what was expected).
Files starting with '_' are helpers imported by the others.
Regenerate after an intended change with KILN_UPDATE_EXPECTED=1."""

from __future__ import annotations

import os

import pytest
from lang_helpers import DATA, run_kiln

from kiln.lang import RecipeError, evaluate_file
from kiln.lang import errors as E

ERRORS = sorted(p.stem for p in (DATA / "errors").glob("*.recipe") if not p.name.startswith("_"))

KINDS = {
    "syntax_": E.RecipeSyntaxError,
    "unknown_name": E.UnknownName,
    "unknown_package": E.UnknownName,
    "unknown_param": E.UnknownField,
    "unknown_fetch_field": E.UnknownField,
    "type_": E.RecipeTypeError,
    "missing_": E.MissingField,
    "duplicate_": E.DuplicateField,
    "import_cycle": E.ImportCycle,
    "import_missing": E.ImportNotFound,
    "hash_": E.HashFormat,
    "recursion_": E.InfiniteRecursion,
    "select_missing": E.UnknownName,
    "rootfs_entry": E.MissingField,
    "call_not_function": E.RecipeTypeError,
    "bad_": E.BadValue,
}


@pytest.mark.parametrize("name", ERRORS)
def test_error(name: str, monkeypatch, hash_sources):
    monkeypatch.chdir(DATA / "errors")
    with pytest.raises(RecipeError) as info:
        evaluate_file(f"{name}.recipe", add_source=hash_sources).attributes()
    e = info.value
    assert e.kiln_user_error
    for prefix, cls in KINDS.items():
        if name.startswith(prefix):
            assert isinstance(e, cls), (name, type(e))
    msg = str(e) + "\n"
    expected_file = DATA / "errors" / f"{name}.err"
    if os.environ.get("KILN_UPDATE_EXPECTED") == "1":
        expected_file.write_text(msg)
    assert msg == expected_file.read_text()
    assert msg.split(":", 1)[0].endswith(".recipe")


def test_every_error_has_expectations():
    for name in ERRORS:
        assert (DATA / "errors" / f"{name}.err").is_file(), name


def test_error_message_shape(monkeypatch):
    monkeypatch.chdir(DATA / "errors")
    with pytest.raises(E.UnknownName) as info:
        evaluate_file("unknown_name.recipe").attributes()
    lines = str(info.value).splitlines()
    assert lines[0] == "unknown_name.recipe:3:27: unknown name 'verison' (did you mean 'version'?)"
    assert lines[1].endswith('build = "tar xf hello-${verison}.tar.gz"')
    assert lines[2].index("^") == lines[1].index("verison")


def test_syntax_error_says_what_was_expected(monkeypatch):
    monkeypatch.chdir(DATA / "errors")
    with pytest.raises(E.RecipeSyntaxError, match="expected '='"):
        evaluate_file("syntax_missing_equals.recipe").attributes()


def test_import_cycle_shows_chain(monkeypatch):
    monkeypatch.chdir(DATA / "errors")
    with pytest.raises(
        E.ImportCycle, match="import_cycle_a.recipe → import_cycle_b.recipe → import_cycle_a.recipe"
    ):
        evaluate_file("import_cycle_a.recipe")


def test_cli_prints_error_without_traceback(tmp_path):
    r = run_kiln(["eval", "type_list_in_string.recipe"], cwd=DATA / "errors", home=tmp_path)
    assert r.returncode == 1
    assert "Traceback" not in r.stderr
    assert r.stderr.startswith("error: type_list_in_string.recipe:4:33: expected a string, found a list")
    assert "^" in r.stderr


def test_non_utf8_recipe_is_located_and_a_bom_is_accepted(tmp_path):
    from kiln.lang import evaluate_file
    from kiln.lang.errors import RecipeError

    (tmp_path / "bad.recipe").write_bytes(b'package p {\n  build = "caf\xe9"\n}\n')
    with pytest.raises(RecipeError, match=r"bad.recipe:2:15: not valid UTF-8 \(byte 0xe9\)"):
        evaluate_file(tmp_path / "bad.recipe").attributes()
    (tmp_path / "bom.recipe").write_bytes(b'\xef\xbb\xbfpackage p { build = "x" }\n')
    assert "p" in evaluate_file(tmp_path / "bom.recipe").drv_paths


def test_integers_are_64_bit(tmp_path):
    from kiln.lang import evaluate_file
    from kiln.lang.errors import BadValue, RecipeSyntaxError

    (tmp_path / "big.recipe").write_text("let n = " + "9" * 5000 + '\npackage p { build = "${n}" }\n')
    with pytest.raises(RecipeSyntaxError, match=r"big.recipe:1:9: number 9+\.\.\. is too large"):
        evaluate_file(tmp_path / "big.recipe").attributes()
    (tmp_path / "ovf.recipe").write_text('let n = 9223372036854775807\npackage p { build = "${n + 1}" }\n')
    with pytest.raises(BadValue, match="ovf.recipe:2:.*integer overflow"):
        evaluate_file(tmp_path / "ovf.recipe").attributes()


def test_a_source_that_cannot_be_added_is_located(tmp_path, monkeypatch):
    from lang_helpers import source_hasher

    from kiln.lang import evaluate_file
    from kiln.lang.errors import BadValue

    scratch = tmp_path / "scratch"  # where filtered copies go; the failed one must not stay
    scratch.mkdir()
    monkeypatch.setattr("tempfile.tempdir", str(scratch))
    (tmp_path / "src").mkdir()
    os.mkfifo(tmp_path / "src" / "pipe")
    (tmp_path / "r.recipe").write_text('package p {\n  src = path "./src"\n  build = "${src}"\n}\n')
    with pytest.raises(BadValue, match=r"r.recipe:2:\d+: cannot add path './src' to the store"):
        evaluate_file(tmp_path / "r.recipe", add_source=source_hasher()).attributes()
    assert list(scratch.iterdir()) == []


def test_a_broken_binding_fails_only_what_uses_it(tmp_path):
    """Top-level bindings are lazy: a package or ``let`` that fails to evaluate fails the
    attributes that use it (and commands that take every attribute), not its neighbours."""
    from kiln.lang import evaluate_file
    from kiln.lang.errors import RecipeTypeError, UnknownName

    (tmp_path / "lazy.recipe").write_text(
        'package good { build = "ok" }\n'
        "package broken { build = nosuch }\n"
        'let alsobroken = 1 + "x"\n'
        'package user { build = "${broken}" }\n'
    )
    ev = evaluate_file(tmp_path / "lazy.recipe")
    assert ev.select("good")[1].name == "good"
    for attr in ("broken", "user", "if true then broken else good"):
        with pytest.raises(UnknownName, match=r"lazy.recipe:2:26: unknown name 'nosuch'"):
            ev.select(attr)
    with pytest.raises(RecipeTypeError, match=r"lazy.recipe:3:20: cannot add a number and a string"):
        ev.select("alsobroken")
    with pytest.raises(UnknownName, match="lazy.recipe:2:26"):  # the first in source order
        ev.attributes()
    # through the CLI: kiln path FILE good works, kiln eval FILE (every attribute) fails
    ok = run_kiln(["path", "lazy.recipe", "good"], cwd=tmp_path, home=tmp_path / "home")
    assert ok.returncode == 0 and ok.stdout.strip().endswith("-good"), ok.stderr
    bad = run_kiln(["eval", "lazy.recipe"], cwd=tmp_path, home=tmp_path / "home")
    assert bad.returncode == 1 and bad.stderr.startswith("error: lazy.recipe:2:26: unknown name 'nosuch'")


def test_an_attribute_that_is_not_utf8_is_located(tmp_path):
    """A command-line attribute with a byte that is not UTF-8 (a lone surrogate to
    Python) is a located recipe error, like such a byte in a file, not an internal one."""
    (tmp_path / "a.recipe").write_text('package p(x = "") { build = x }\n')
    r = run_kiln(["path", "a.recipe", 'p(x = "\udcff")'], cwd=tmp_path, home=tmp_path / "home")
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith("error: <attribute>:1:8: not valid UTF-8 (byte 0xff)")


def test_a_long_line_is_shown_around_the_error(tmp_path):
    """A generated or minified recipe's 5,000-character line was echoed whole under
    ``file:line:col``; the excerpt is now the part around the column, the caret on it."""
    pad = "x" * 3000
    f = tmp_path / "long.recipe"
    f.write_text(f'package p {{ build = "{pad}" version = "1" @nope build2 = "{pad}" }}\n')
    with pytest.raises(RecipeError) as info:
        evaluate_file(str(f)).attributes()
    head, code, caret = str(info.value).splitlines()
    assert head == f"{f}:1:3038: unexpected character '@'", head
    assert len(code) < 150 and code.split("| ", 1)[1].startswith("...") and code.endswith("...")
    assert code[caret.index("^") :].startswith("@nope")
