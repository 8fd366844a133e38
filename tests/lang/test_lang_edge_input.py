"""Unusual input must give a clean, located recipe error or the documented value, never
an internal error or a hang: deep ATTR expressions, odd import paths, U+FFFF and CRLF in
strings, a non-UTF-8 .kilnignore, records nested in ${...}, leading zeros."""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

import pytest
from clikit import outcome_within
from lang_helpers import run_kiln, source_hasher

from kiln.lang import RecipeError, evaluate_file
from kiln.lang import errors as E


@pytest.fixture(autouse=True)
def _in_tmp(tmp_path, monkeypatch):
    """Every test works in its tmp_path, so errors name files as relative paths."""
    monkeypatch.chdir(tmp_path)


def _write(path: Path, text: str | bytes) -> str:
    """Write ``text`` to ``path``; returns its name (relative to the test's cwd)."""
    if isinstance(text, bytes):
        path.write_bytes(text)
    else:
        path.write_text(text, encoding="utf-8")
    return path.name


def _evaluate_within(seconds: float, file: str):
    """evaluate_file(file), failing the test instead of hanging (a FIFO must not block)."""
    got = outcome_within(seconds, lambda: evaluate_file(file), f"evaluating {file}")
    if isinstance(got, BaseException):
        raise got
    return got


def _env(ev, attr: str) -> dict[str, str]:
    return dict(ev.packages[attr].env)


# -- 1. ATTR expressions recurse like file expressions ------------------------------------
def test_attr_recursion_is_a_recipe_error_on_the_command_line(tmp_path):
    _write(
        tmp_path / "r.recipe",
        'package p(n) {\n  x = if n == 1000000000 then "" else p(n = n + 1).build\n  build = "x"\n}\n',
    )
    r = run_kiln(["eval", "--no-cache", "r.recipe", "p(n = 0)"], cwd=tmp_path, home=tmp_path / "home")
    assert r.returncode == 1
    assert "internal error" not in r.stderr
    assert r.stderr.startswith(
        "error: r.recipe:2:7: evaluation went too deep: unbounded recursion through package variants"
    )


def test_huge_attr_expressions_evaluate_or_fail_cleanly(tmp_path):
    ev = evaluate_file(_write(tmp_path / "a.recipe", 'package a(n = 0) { build = "${n}" }\n'))
    # 3,000 terms: deeper than the interpreter's default limit, fine in a file too
    _, drv = ev.select("a(n = " + "+".join(["1"] * 3000) + ")")
    assert dict(drv.env)["build"] == "3000"
    # (deeper than the recursion limit on every Python: 3.11 takes three frames a level,
    # 3.12 and later two, their list comprehensions being inlined)
    deep = "a(n = length(" + "[" * 250_000 + "]" * 250_000 + "))"
    with pytest.raises(E.InfiniteRecursion, match=r"^<attribute>:1:\d+: expression nested too deeply"):
        ev.select(deep)


# -- 2. parentheses count for the chained-comparison rule ---------------------------------
def test_parenthesised_comparison_is_not_a_chain(tmp_path):
    f = _write(
        tmp_path / "c.recipe",
        "package p {\n"
        '  a = if (1 == 1) == true then "y" else "n"\n'
        '  b = if true == (1 != 1) then "y" else "n"\n'
        '  c = if (1 == 1) != (2 == 3) && 1 + 1 == 2 then "y" else "n"\n'
        '  build = "x"\n'
        "}\n",
    )
    env = _env(evaluate_file(f), "p")
    assert (env["a"], env["b"], env["c"]) == ("y", "n", "y")


# -- 3. a field named like a parameter ----------------------------------------------------
def test_a_field_cannot_replace_a_parameter(tmp_path):
    f = _write(tmp_path / "p.recipe", 'package p(flag = false) { flag = true\n  build = "" }\n')
    with pytest.raises(E.DuplicateField) as info:
        evaluate_file(f).attributes()
    assert str(info.value).splitlines()[0] == (
        "p.recipe:1:27: field 'flag' has the same name as a parameter (line 1) and they share "
        "one scope; to export the parameter use another name (flagValue = flag)"
    )


# -- 4. U+FFFF is an ordinary character ----------------------------------------------------
def test_uffff_in_an_indented_string_is_kept(tmp_path):
    f = _write(
        tmp_path / "u.recipe",
        'let x = "X"\n'
        "package a {\n"
        "  build = ''a\uffffb${x}c''\n"
        "  esc = ''a''\\tb\uffffc''\n"
        "  ind = ''\n    \uffff\n      ${x}\n  ''\n"
        "}\n",
    )
    env = _env(evaluate_file(f), "a")
    assert env["build"] == "a\uffffbXc"
    assert env["esc"] == "a\tb\uffffc"
    assert env["ind"] == "\uffff\n  X\n"


# -- 5. a .kilnignore that is not UTF-8 -----------------------------------------------------
def test_kilnignore_that_is_not_utf8_is_located(tmp_path):
    (tmp_path / "src").mkdir()
    _write(tmp_path / "src" / ".kilnignore", b"ok\na\xff\n")
    f = _write(tmp_path / "s.recipe", 'package a {\n  src = path "./src"\n  build = "" }\n')
    for add in (None, source_hasher()):
        with pytest.raises(E.BadValue) as info:
            evaluate_file(f, add_source=add).attributes()
        assert str(info.value).splitlines()[0] == (
            f"s.recipe:2:14: cannot add path './src' to the store: {tmp_path.resolve()}/src/.kilnignore "
            "is not valid UTF-8 (byte 0xff on line 2)"
        )


# -- 6. import paths that cannot be read ----------------------------------------------------
def _bad_target(tmp_path: Path, case: str) -> tuple[str, str]:
    """(import path, expected message) for one kind of unreadable import."""
    if case == "loop":
        os.symlink("loop2.recipe", tmp_path / "loop1.recipe")
        os.symlink("loop1.recipe", tmp_path / "loop2.recipe")
        return "loop1.recipe", "cannot read imported file loop1.recipe: Too many levels of symbolic links"
    if case == "notdir":
        _write(tmp_path / "f.recipe", "")
        return "f.recipe/x.recipe", "cannot read imported file f.recipe/x.recipe: Not a directory"
    if case == "toolong":
        name = "x" * 300 + ".recipe"
        return name, f"cannot read imported file {name}: File name too long"
    if case == "fifo":
        os.mkfifo(tmp_path / "fifo.recipe")
        return "fifo.recipe", "cannot read imported file fifo.recipe: it is a FIFO, not a regular file"
    if case == "dir":
        (tmp_path / "d.recipe").mkdir()
        return "d.recipe", "cannot read imported file d.recipe: it is a directory, not a regular file"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["loop", "notdir", "toolong", "fifo", "dir"])
def test_unreadable_import_is_located_at_the_import(tmp_path, case):
    target, message = _bad_target(tmp_path, case)
    _write(tmp_path / "main.recipe", f'# imports\nimport "{target}"\npackage a {{ build = "" }}\n')
    with pytest.raises(RecipeError) as info:
        _evaluate_within(30, "main.recipe")
    assert str(info.value).splitlines()[0] == f"main.recipe:2:1: {message}"


def test_an_entry_file_that_is_a_fifo_is_refused(tmp_path):
    os.mkfifo(tmp_path / "fifo.recipe")
    with pytest.raises(
        RecipeError, match="^cannot read recipe file fifo.recipe: it is a FIFO, not a regular file$"
    ):
        _evaluate_within(30, "fifo.recipe")


def test_an_import_that_is_not_utf8_names_the_place_once(tmp_path):
    _write(tmp_path / "bad.recipe", b'package p {\n  x = "h\xc3\xa9llo \xff"\n}\n')
    _write(tmp_path / "main.recipe", 'import "bad.recipe"\n')
    with pytest.raises(RecipeError) as info:
        evaluate_file("bad.recipe").attributes()
    # columns count characters: the bad byte is the 14th character of its line
    want = 'bad.recipe:2:14: not valid UTF-8 (byte 0xff)\n    2 |   x = "h\u00e9llo \ufffd"\n      |              ^'
    assert str(info.value) == want
    with pytest.raises(RecipeError) as info:  # imported: reported in the file, as a syntax error is
        evaluate_file("main.recipe").attributes()
    assert str(info.value) == want


# -- 7. records nested inside ${...} (six levels were once the most) ------------------------
def test_six_levels_of_records_in_an_interpolation(tmp_path):
    six = "{a={b={c={d={e={f=1}}}}}}.a.b.c.d.e.f"
    f = _write(
        tmp_path / "six.recipe",
        f"package a {{\n  x = \"<${{ {six} }}>\"\n  y = ''<${{ {six} }}>''\n  build = \"\" }}\n",
    )
    env = _env(evaluate_file(f), "a")
    assert (env["x"], env["y"]) == ("<1>", "<1>")


# -- 8. the end of an interpolation or of an ATTR is not the end of the file ----------------
def test_end_of_an_interpolation_or_attr_is_named_as_such(tmp_path):
    f = _write(tmp_path / "e.recipe", 'package a(n = 1) { build = "${}" }\n')
    with pytest.raises(E.RecipeSyntaxError) as info:
        evaluate_file(f).attributes()
    assert str(info.value).splitlines()[0] == (
        "e.recipe:1:31: unexpected end of the ${...} interpolation; expected an expression"
    )
    ev = evaluate_file(_write(tmp_path / "ok.recipe", 'package a(n = 1) { build = "${n}" }\n'))
    with pytest.raises(E.RecipeSyntaxError) as info:
        ev.select("a(n = ")
    assert str(info.value).splitlines()[0] == (
        "<attribute>:1:7: unexpected end of the attribute expression; expected an expression"
    )


# -- 9. leading zeros -------------------------------------------------------------------------
def test_leading_zeros_do_not_make_a_number_too_large(tmp_path):
    f = _write(tmp_path / "z.recipe", 'let n = 0000000000000000000000042\npackage a { build = "${n}" }\n')
    assert _env(evaluate_file(f), "a")["build"] == "42"


# -- 15. CRLF line ends -----------------------------------------------------------------------
def test_crlf_files_mean_the_same_as_lf_files(tmp_path):
    text = "package a {\n  build = ''\n    foo\n      bar\n  ''\n  s = \"x\ny\"\n}\n"
    lf = evaluate_file(_write(tmp_path / "lf.recipe", text))
    crlf = evaluate_file(_write(tmp_path / "crlf.recipe", text.replace("\n", "\r\n").encode()))
    assert _env(crlf, "a")["build"] == "foo\n  bar\n"
    assert _env(crlf, "a")["s"] == "x\ny"
    assert crlf.drv_paths == lf.drv_paths
    bad = _write(tmp_path / "bad.recipe", b"package a {\r\n  build = oops\r\n}\r\n")
    with pytest.raises(E.UnknownName, match=r"^bad.recipe:2:11: unknown name 'oops'"):
        evaluate_file(bad).attributes()


def test_debian_rootfs_name_is_used_as_written(tmp_path):
    """A given rootfs name is the derivation's name and its env's ``name``; one that
    cannot be a store path name is an error at it (as for the fetchers and ``path``),
    not silently changed."""
    lock = (
        '[{ name = "bash", version = "1", arch = "amd64", sha256 = "' + "0" * 64 + '", '
        'filename = "pool/b/bash_1_amd64.deb", size = 1 }]'
    )
    text = 'let t = debian_rootfs {{ name = "{}", lock = {} }}\npackage p {{\n  deps = [t]\n  build = "true"\n}}\n'
    ev = evaluate_file(_write(tmp_path / "r.recipe", text.format("my-root", lock)))
    drv = next(d for d in ev.drvs.values() if d.name == "my-root")
    assert dict(drv.env)["name"] == "my-root"
    with pytest.raises(RecipeError) as e:
        evaluate_file(_write(tmp_path / "bad.recipe", text.format("my root", lock))).attributes()
    assert str(e.value).startswith(
        "bad.recipe:1:32: debian_rootfs name 'my root' cannot be a store path name"
    )


def test_a_nul_in_a_field_is_located_at_the_field(tmp_path):
    f = _write(tmp_path / "n.recipe", b'package p {\n  build = "true"\n  x = "a\x00b"\n}\n')
    with pytest.raises(RecipeError) as e:
        evaluate_file(f).attributes()
    # (the whole file is refused: a NUL anywhere makes git treat it as binary)
    assert "n.recipe:3:9: NUL character (byte 0x00): a recipe file is text" in str(e.value), str(e.value)


@pytest.mark.parametrize("url", ["https://example.org/a b.tar.gz", ""])
def test_a_url_with_whitespace_is_refused_at_the_argument(tmp_path, url):
    """The fetcher's ``urls`` are whitespace-separated: a space would split a URL in two."""
    f = _write(
        tmp_path / "u.recipe",
        f'let src = fetchurl {{ url = "{url}", sha256 = "{"0" * 64}" }}\n'
        'package p {\n  deps = [src]\n  build = "true"\n}\n',
    )
    with pytest.raises(RecipeError) as e:
        evaluate_file(f).attributes()
    assert "u.recipe:1:" in str(e.value) and "without whitespace" in str(e.value), str(e.value)


@pytest.mark.parametrize(
    ("field", "value", "says"),
    [
        ("filename", '"pool/../../etc/x.deb"', "'..' component"),
        ("filename", '"pool/a b.deb"', "no whitespace"),
        ("sha256", '"' + "A" * 64 + '"', "64 lowercase hex"),
        ("size", "-1", "non-negative integer"),
    ],
)
def test_debian_rootfs_lock_values_are_checked_at_the_lock(tmp_path, field, value, says):
    entry = {
        "name": '"bash"',
        "version": '"1"',
        "arch": '"amd64"',
        "sha256": '"' + "0" * 64 + '"',
        "filename": '"pool/b/bash_1_amd64.deb"',
        "size": "1",
        field: value,
    }
    lock = "[{ " + ", ".join(f"{k} = {v}" for k, v in entry.items()) + " }]"
    f = _write(
        tmp_path / "l.recipe",
        f'let t = debian_rootfs {{ lock = {lock} }}\npackage p {{ deps = [t]\n build = "" }}\n',
    )
    with pytest.raises(RecipeError) as e:
        evaluate_file(f).attributes()
    msg = str(e.value)
    assert msg.startswith("l.recipe:1:") and f"lock entry 1 ('bash'): '{field}'" in msg and says in msg, msg


def test_a_long_quoted_string_lexes_in_bounded_memory(tmp_path):
    """A 4 MB ``"..."`` literal (a patch pasted into a recipe) lexes without the regex
    engine keeping a backtracking point per character (it took ~200 bytes of memory per
    byte of string before its repetition was made possessive)."""
    import subprocess
    import sys

    f = _write(tmp_path / "big.recipe", 'package p { build = "' + "abcdefghij" * 400_000 + '" }\n')
    # VmHWM, not ru_maxrss: Linux carries the forking parent's peak (pytest's) into
    # ru_maxrss across exec, while VmHWM belongs to the new process image alone
    code = (
        "import re, sys\n"
        "from kiln.lang import evaluate_file\n"
        "evaluate_file(sys.argv[1]).attributes()\n"
        "print(re.search(r'VmHWM:\\s+(\\d+)', open('/proc/self/status').read()).group(1))\n"
    )
    r = subprocess.run([sys.executable, "-c", code, str(f)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) < 250_000  # KiB; ~800 MB before


# -- strings: every short interpolation parses or fails cleanly -----------------------------
_FUZZ = r"""
import itertools, sys
from kiln.lang.errors import RecipeError
from kiln.lang.parser import parse_module
bad = []
for n in range(1, 5):
    for body in itertools.product("'$" + '{}"' + "\\a ", repeat=n):
        b = "".join(body)
        for text in (f'let x = "${{{b}}}"\n', f"let x = ''${{{b}}}''\n", f'let x = "{b}"\n'):
            try:
                parse_module(text, "f.recipe")
            except RecipeError:
                pass
            except Exception as e:  # noqa: BLE001 - reported
                bad.append(f"{text!r}: {type(e).__name__}: {e}")
print("\n".join(bad[:20]))
sys.exit(1 if bad else 0)
"""


def test_a_quote_pair_in_an_interpolation_of_a_plain_string_is_refused_not_a_hang(tmp_path):
    """``"${''}"`` lexed (in a ``"`` string's interpolation ``''`` was two characters) but
    the brace scan read ``''`` as the start of an indented string, found no end, and the
    string splitter restarted at the token's start forever, growing memory: every
    command on the file hung. Now (``''`` starts an indented string there too, as in
    Nix) the error is located at the ``''`` that takes the closing brace."""
    _write(tmp_path / "h.recipe", "let x = \"${''}\"\npackage p { build = \"${''a''}\" }\n")
    with pytest.raises(RecipeError) as e:
        _evaluate_within(30, "h.recipe")
    assert e.value.src is not None and e.value.pos is not None
    assert e.value.src.line_col(e.value.pos) == (1, 12), e.value
    assert "unterminated indented string" in e.value.message
    _write(tmp_path / "ok.recipe", "package p { build = \"${''a''}\" }\n")
    assert _evaluate_within(30, "ok.recipe").packages  # an indented string in there is fine


def test_short_strings_with_interpolations_parse_or_fail_cleanly_and_quickly():
    """Every body of up to four characters from the string syntax's special characters,
    in a ``"`` string's interpolation, an indented string's, and a plain ``"`` string:
    a parse or a recipe error, never another exception or a hang."""
    import subprocess
    import sys

    r = subprocess.run([sys.executable, "-c", _FUZZ], capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout + r.stderr


def test_a_binding_that_recurses_too_deep_fails_only_what_uses_it(tmp_path):
    """The reference: "A top-level binding that fails to evaluate fails only what uses
    it". A too-deep binding (unbounded variants, absurd nesting) was turned into a recipe
    error only around the whole file, so ``kiln build FILE good`` failed too."""
    _write(
        tmp_path / "r.recipe",
        'package good { build = "g" }\npackage p(n = 0) { build = "${p(n = n + 1)}" }\nlet q = p\n',
    )
    ev = _evaluate_within(120, "r.recipe")
    assert ev.select("good")[1].name == "good"
    with pytest.raises(E.InfiniteRecursion) as e:
        ev.select("q")
    # at the recursion, or (once a binding found it) where the runaway variant is used
    assert e.value.src is not None and e.value.src.line_col(e.value.pos)[0] in (2, 3)
    with pytest.raises(E.InfiniteRecursion):
        ev.attributes()  # every attribute: the first failing binding, as for other errors


def test_errors_in_files_imported_through_a_symlinked_entry_name_the_real_files(tmp_path):
    """``elsewhere/main.recipe`` links to ``../real/main.recipe``, which imports
    ``helper.recipe``: the import resolves from ``real/`` (as Nix does), and its errors
    named ``elsewhere/helper.recipe``, a file that does not exist."""
    (tmp_path / "real").mkdir()
    (tmp_path / "elsewhere").mkdir()
    _write(tmp_path / "real" / "main.recipe", 'import "helper.recipe"\npackage p { build = x }\n')
    _write(tmp_path / "real" / "helper.recipe", "let x = nosuch\n")
    os.symlink("../real/main.recipe", tmp_path / "elsewhere" / "main.recipe")
    with pytest.raises(RecipeError) as info:
        evaluate_file("elsewhere/main.recipe").attributes()
    assert str(info.value).splitlines()[0] == f"{tmp_path}/real/helper.recipe:1:9: unknown name 'nosuch'"
    with pytest.raises(RecipeError) as info:  # named as given when no symlink is on the way
        evaluate_file("real/main.recipe").attributes()
    assert str(info.value).splitlines()[0] == "real/helper.recipe:1:9: unknown name 'nosuch'"


@pytest.mark.parametrize(
    ("text", "first"),
    [
        (
            'package a { build = "" }\nlet a = 1\n',
            "dup.recipe:2:5: duplicate definition 'a' (first defined on line 1)",
        ),
        (
            'package p {\n  let x = 1\n  x = 2\n  build = ""\n}\n',
            "dup.recipe:3:3: duplicate field 'x' (first defined on line 2)",
        ),
    ],
)
def test_a_duplicate_is_reported_at_the_later_definition(tmp_path, text, first):
    """Lets and packages (or fields and lets) were checked as two groups, so the error
    sat at the earlier definition and called the later one "first"."""
    _write(tmp_path / "dup.recipe", text)
    with pytest.raises(RecipeError) as info:
        evaluate_file("dup.recipe").attributes()
    assert str(info.value).splitlines()[0] == first


def test_an_error_excerpt_shows_control_characters_without_sending_them(tmp_path):
    """A control character (or an escape) in a recipe line was printed raw in the
    excerpt, garbling the terminal line; each is now one visible character, caret
    aligned. (A lone CR is refused outright: test_lang_line_ends.)"""
    _write(tmp_path / "cr.recipe", 'let x = 1 + "a\x0b" # \x1b]0;title\x07\n')
    with pytest.raises(RecipeError) as info:
        evaluate_file("cr.recipe").attributes()
    first, code, caret = str(info.value).splitlines()
    assert (
        first.startswith("cr.recipe:1:11: ")
        and code == '    1 | let x = 1 + "a\u240b" # \u241b]0;title\u2407'
    )
    assert caret.index("^") == code.index("+") and not any(ord(c) < 32 for c in code)


#: Unicode's Bidi_Control characters
_BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


@pytest.mark.parametrize("bidi", list(_BIDI))
def test_an_error_shows_bidi_controls_without_sending_them(tmp_path, bidi):
    """A bidi control (U+202E RIGHT-TO-LEFT OVERRIDE and its kin) reached the terminal
    raw, in the excerpt, the file's name and the message, so what was shown could read
    otherwise than the bytes ("Trojan Source"). Each is now ``\\uXXXX``, and the caret
    still stands under the character the column names."""
    shown = f"\\u{ord(bidi):04x}"
    name = _write(tmp_path / f"b{bidi}.recipe", f'let x = "{bidi}a{bidi}" + * 1\n')
    with pytest.raises(E.RecipeSyntaxError) as info:
        evaluate_file(name).attributes()
    first, code, caret = str(info.value).splitlines()
    assert first.startswith(f"b{shown}.recipe:1:17: unexpected character '*'"), first
    assert code == f'    1 | let x = "{shown}a{shown}" + * 1'
    assert caret.index("^") == code.index("*")
    # in a message (an import's name), and in a line cut around the column
    _write(tmp_path / "i.recipe", f'let y = "{bidi * 200}"\nimport "x{bidi}.recipe"\n')
    with pytest.raises(E.ImportNotFound) as info:
        evaluate_file("i.recipe").attributes()
    assert f"imported file x{shown}.recipe does not exist" in str(info.value)
    _write(tmp_path / "long.recipe", f'let y = "{bidi * 300}" + * 1\n')
    with pytest.raises(E.RecipeSyntaxError) as info:
        evaluate_file("long.recipe").attributes()
    first, code, caret = str(info.value).splitlines()
    assert first.startswith("long.recipe:1:314: ") and code.endswith(f'{shown}" + * 1')
    assert caret.index("^") == code.index("*")
    assert not any(ch in str(info.value) for ch in _BIDI)
    assert tuple(map(ord, _BIDI)) == E.BIDI_CONTROLS


def test_an_attribute_that_is_not_a_package_is_located_and_cut(tmp_path):
    _write(tmp_path / "r.recipe", 'package p { build = "" }\nlet n = 3\n')
    ev = evaluate_file("r.recipe")
    with pytest.raises(RecipeError) as info:
        ev.select("n")
    assert str(info.value).splitlines()[0] == "<attribute>:1:1: 'n' is a number, not a package"
    with pytest.raises(RecipeError) as info:
        ev.select("[" + ", ".join(["1"] * 5000) + "]")
    assert len(str(info.value).splitlines()[0]) < 200  # (it echoed the whole expression)


_H = "0" * 64


@pytest.mark.parametrize(
    ("call", "ok"),
    [
        (f'fetchurl {{ url = "FILE:///etc/x", sha256 = "{_H}" }}', "file:///etc/x"),
        (f'fetchurl {{ url = "HTTPS://example.com/a.tar", sha256 = "{_H}" }}', "https://example.com/a.tar"),
        (f'fetchurl {{ url = "https://e.com/a\x01b", sha256 = "{_H}" }}', None),
        (f'fetchurl {{ url = "https://e.com/a\x1bb", sha256 = "{_H}" }}', None),
        (f'fetchgit {{ url = "relative/repo", rev = "main", sha256 = "{_H}" }}', None),
        (
            f'fetchgit {{ url = "git@example.com:r/x.git", rev = "main", sha256 = "{_H}" }}',
            "git@example.com:r/x.git",
        ),
        (f'fetchgit {{ url = "/srv/git/x", rev = "main", sha256 = "{_H}" }}', "/srv/git/x"),
    ],
)
def test_fetch_urls_schemes_and_control_characters(tmp_path, call, ok):
    """A scheme is case-insensitive (``FILE:///x`` was refused as having none); no URL
    holds a control character (NUL and ESC were taken); ``fetchgit`` refuses a relative
    path as ``fetchurl`` does (read from wherever kiln runs), but takes git's scp-like
    ``host:path``."""
    _write(tmp_path / "u.recipe", f"let g = {call}\n")
    if ok is None:
        with pytest.raises(RecipeError, match="'url' must be a URL"):
            evaluate_file("u.recipe").attributes()
    else:
        assert evaluate_file("u.recipe").packages["g"].env_map["url"] == ok


def test_a_file_name_with_escape_sequences_is_shown_not_sent(tmp_path):
    """A file's name comes from wherever the recipes came from (a tarball): in the
    ``file:line:col`` header its control characters were printed raw (OSC 0 sets the
    terminal's title, OSC 52 writes the clipboard)."""
    evil = "x\x1b]0;PWNED\x07.recipe"
    _write(tmp_path / evil, "let x = (\n")
    _write(tmp_path / "r.recipe", f'import "{evil}"\n')
    with pytest.raises(RecipeError) as info:
        evaluate_file("r.recipe").attributes()
    text = str(info.value)
    assert "PWNED" in text and not any(ord(c) < 32 and c not in "\n" for c in text), repr(text)
    # a newline in the name would add a line that looks like kiln's own
    _write(tmp_path / "y\nerror: all good.recipe", "let x = (\n")
    _write(tmp_path / "s.recipe", 'import "y\nerror: all good.recipe"\n')
    with pytest.raises(RecipeError) as info:
        evaluate_file("s.recipe").attributes()
    assert str(info.value).splitlines()[0].startswith("y\u240aerror: all good.recipe:1:10: "), str(info.value)


def test_a_url_with_a_c1_control_character_is_refused(tmp_path):
    _write(tmp_path / "u.recipe", f'let g = fetchurl {{ url = "https://e.com/a\x9bb", sha256 = "{_H}" }}\n')
    with pytest.raises(RecipeError, match="'url' must be a URL"):
        evaluate_file("u.recipe").attributes()


def test_a_runaway_variant_costs_its_depth_once(tmp_path):
    """Fifteen packages using one runaway variant: each re-ran the whole recursion
    (29 s and 890 MB to evaluate an unrelated attribute); a variant that went too deep
    is remembered, so the others fail at once."""
    import time

    uses = "".join(f'package u{i} {{ build = "${{p}}" }}\n' for i in range(15))
    _write(
        tmp_path / "r.recipe",
        f'package ok {{ build = "ok" }}\npackage p(n = 0) {{ build = "${{p(n = n + 1)}}" }}\n{uses}',
    )
    one = time.monotonic()
    _write(
        tmp_path / "one.recipe",
        'package ok { build = "ok" }\npackage p(n = 0) { build = "${p(n = n + 1)}" }\npackage u { build = "${p}" }\n',
    )
    assert _evaluate_within(120, "one.recipe").select("ok")[1].name == "ok"
    one = time.monotonic() - one
    t = time.monotonic()
    ev = _evaluate_within(300, "r.recipe")
    assert ev.select("ok")[1].name == "ok"
    for i in (0, 14):
        with pytest.raises(E.InfiniteRecursion) as info:
            ev.select(f"u{i}")
        assert info.value.src is not None, str(info.value)  # (located: at the use, or the recursion)
    # (each use re-running it costs ~15 x one; 6 x leaves room for a machine's drift)
    assert time.monotonic() - t < 6 * one + 2, (time.monotonic() - t, one)


def test_a_finite_chain_first_reached_too_deep_evaluates_from_the_top(tmp_path):
    """Only a variant that went too deep when reached near the top is remembered as a
    failure: ``b``'s finite chain, first reached at the bottom of ``a``'s, overflowed
    there but fits from the top, and ``b`` must still evaluate."""
    _write(
        tmp_path / "r.recipe",
        'package a(m = 0) { build = if m == 20000 then "${b}" else "${a(m = m + 1)}" }\n'
        'package b(n = 0) { build = if n == 30000 then "leaf" else "${b(n = n + 1)}" }\n',
    )
    ev = _evaluate_within(300, "r.recipe")  # (a fails here, at this machine's depth)
    with contextlib.suppress(E.InfiniteRecursion):
        ev.select("a")
    assert ev.select("b")[1].name == "b"


def test_a_finite_chain_reached_inside_a_deep_expression_still_evaluates(tmp_path):
    """``x`` reaches ``b``'s finite chain from inside 150,000 nested additions, which
    take Python frames but no entries of the evaluator's stack of bindings: ``b`` was
    taken as reached near the top and remembered as too deep, so ``b`` and ``use`` (which
    both evaluate without ``x``) were reported broken, ``b`` without a location."""
    plus = ' + ""' * 150_000
    _write(
        tmp_path / "r.recipe",
        f'let x = "${{b}}"{plus}\n'
        'package b(n = 0) { build = if n == 30000 then "leaf" else "${b(n = n + 1)}" }\n'
        'package use { build = "${b}" }\n',
    )
    ev = _evaluate_within(300, "r.recipe")
    assert sorted(ev.broken) == ["x"], {k: str(v)[:200] for k, v in ev.broken.items()}
    assert isinstance(ev.broken["x"], E.InfiniteRecursion) and ev.broken["x"].src is not None
    assert sorted(ev.drv_paths) == ["b", "use"]


def test_a_variant_remembered_as_too_deep_fails_at_once_where_it_is_used(tmp_path):
    """Reached again from no nearer the top than when it failed, a runaway variant fails
    at once, at the expression that uses it."""
    _write(tmp_path / "r.recipe", 'package p(n = 0) { build = "${p(n = n + 1)}" }\n')
    ev = _evaluate_within(120, "r.recipe")
    assert isinstance(ev.broken["p"], E.InfiniteRecursion)
    with pytest.raises(E.InfiniteRecursion, match="^<attribute>:1:1: evaluation went too deep: package 'p' "):
        ev.select("p(n = 0)")  # (deeper than the evaluation's own use of it)


def test_a_huge_sum_is_a_located_nesting_error(tmp_path):
    """A 200,000-term ``1 + 1 + ...`` nests deeper than kiln evaluates: the error says
    so, at the innermost term reached (it spoke of recursion through package variants,
    which the file has none of)."""
    _write(tmp_path / "r.recipe", "let x = 1" + " + 1" * 200_000 + "\n")
    ev = _evaluate_within(300, "r.recipe")
    e = ev.broken["x"]
    assert isinstance(e, E.InfiniteRecursion)
    assert str(e).startswith("r.recipe:1:"), str(e)[:300]
    assert str(e).split("\n")[0].endswith(": expression nested too deeply: deeper than kiln evaluates")


def test_a_long_sum_parses_without_recursing_per_term():
    """The parser grouped a run of ``+`` recursing once per term: 400,000 terms overflowed
    while parsing, unlocated (here, on the interpreter's own stack, a few thousand did)."""
    import sys

    from kiln.lang import nodes
    from kiln.lang.parser import parse_module

    n = 5 * sys.getrecursionlimit()
    tree = parse_module("let x = 1" + " + 1" * n + f" == {n + 1} && a || b\n", "r.recipe")
    top = tree.lets[0].expr
    assert isinstance(top, nodes.BinOp) and top.op == "||" and top.left.op == "&&"
    assert top.left.left.op == "==" and top.left.left.left.op == "+"
