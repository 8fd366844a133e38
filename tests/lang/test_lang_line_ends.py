"""Error positions and excerpts for odd but real recipe text: line ends (CRLF, a lone
CR, classic Mac OS's CR-only files), bytes that are not UTF-8, byte-order marks, NUL
characters, tabs and wide characters (lang/reading.py, lang/errors.py).

The rule under test: a line ends at LF or CRLF and nowhere else, so ``file:line:col``
names the line every editor shows; what would make that ambiguous (a CR not followed by
LF) or the file not text (a NUL, a byte that is not UTF-8) is itself an error at its
``file:line:col``, with the line shown and a caret under it. The caret stands under the
column as a terminal shows the line: tabs expanded to stops of 8, wide characters two
columns, combining marks none.

Each case is its file's exact bytes and the exact error, written here rather than
committed under tests/data: git would normalise the CRLF and CR line ends of a data file
(``text=auto``, ``core.autocrlf``) and takes a file with a NUL for binary.
"""

from __future__ import annotations

import unicodedata

import pytest
from lang_helpers import run_kiln

from kiln.lang import errors as E
from kiln.lang import evaluate_file

#: name -> (the recipe file's bytes, the exact error)
CASES: dict[str, tuple[bytes, str]] = {
    # a CRLF file: lines are its CRLF lines, and no CR is shown
    "crlf": (
        b"package a {\r\n  x = 1\r\n  build = oops\r\n}\r\n",
        "crlf.recipe:3:11: unknown name 'oops'\n    3 |   build = oops\n      |           ^",
    ),
    # the end of a file that ends in a line end is the end of its last line (vim, less
    # and cat -n show no line after the last LF), whatever its line ends
    "eof": (
        b'package a {\n  build = "x"\n',
        "eof.recipe:2:14: unexpected end of file; expected a name, ',', ';', 'let' or '}'\n"
        '    2 |   build = "x"\n'
        "      |              ^",
    ),
    "eof_crlf": (
        b'package a {\r\n  build = "x"\r\n',
        "eof_crlf.recipe:2:14: unexpected end of file; expected a name, ',', ';', 'let' or '}'\n"
        '    2 |   build = "x"\n'
        "      |              ^",
    ),
    "eof_blank_lines": (
        b"let x = 1 +\n\n",
        "eof_blank_lines.recipe:2:1: unexpected end of file; expected an expression\n    2 | \n      | ^",
    ),
    # a stray CR in an LF file: what vim shows as ^M, VS Code as a line end
    "stray_cr": (
        b'package a {\n  x = "a"\r  build = oops\n}\n',
        'stray_cr.recipe:2:10: carriage return not followed by a line feed: recipe lines end in LF or CRLF (in a string, write "\\r")\n'
        '    2 |   x = "a"\u240d  build = oops\n'
        "      |          ^",
    ),
    # classic Mac OS line ends
    "mac": (
        b'package a {\r  build = "x"\r}\r',
        "mac.recipe:1:12: carriage return not followed by a line feed: this file's lines end in CR alone (classic Mac OS); recipe lines end in LF or CRLF\n"
        '    1 | package a {\u240d  build = "x"\u240d}\u240d\n'
        "      |            ^",
    ),
    # in a string (it was kept there: bash would read `make\r`), in a comment, before a CRLF
    "cr_in_string": (
        b'package a {\r\n  build = "make\rinstall"\r\n}\r\n',
        'cr_in_string.recipe:2:16: carriage return not followed by a line feed: recipe lines end in LF or CRLF (in a string, write "\\r")\n'
        '    2 |   build = "make\u240dinstall"\n'
        "      |                ^",
    ),
    "cr_in_comment": (
        b'# one\r# two\npackage a { build = "x" }\n',
        'cr_in_comment.recipe:1:6: carriage return not followed by a line feed: recipe lines end in LF or CRLF (in a string, write "\\r")\n'
        "    1 | # one\u240d# two\n"
        "      |      ^",
    ),
    "cr_cr_lf": (
        b'package a {\r\r\n  build = "x"\n}\n',
        'cr_cr_lf.recipe:1:12: carriage return not followed by a line feed: recipe lines end in LF or CRLF (in a string, write "\\r")\n'
        "    1 | package a {\u240d\n"
        "      |            ^",
    ),
    # a byte that is not UTF-8: the line shown, decoded with U+FFFD, the caret under it
    "latin1": (
        b'package a {\n  build = "caf\xe9 au lait"\n}\n',
        'latin1.recipe:2:15: not valid UTF-8 (byte 0xe9)\n    2 |   build = "caf\ufffd au lait"\n      |               ^',
    ),
    # ...counted in characters (the é before it is one) and after a CRLF line
    "bad_after_crlf": (
        b'package a {\r\n  build = "\xc3\xa9\xff"\r\n}\r\n',
        'bad_after_crlf.recipe:2:13: not valid UTF-8 (byte 0xff)\n    2 |   build = "\u00e9\ufffd"\n      |             ^',
    ),
    # whichever comes first: a CR before a bad byte, a bad byte before a CR
    "cr_then_bad": (
        b'let x = 1\rlet y = "\xff"\n',
        'cr_then_bad.recipe:1:10: carriage return not followed by a line feed: recipe lines end in LF or CRLF (in a string, write "\\r")\n'
        '    1 | let x = 1\u240dlet y = "\ufffd"\n'
        "      |          ^",
    ),
    # (a CR before a CRLF, then a bad byte: the text is read once, the CR stays lone)
    "cr_cr_lf_then_bad": (
        b'let x = 1\r\r\nlet y = "\xff"\n',
        'cr_cr_lf_then_bad.recipe:1:10: carriage return not followed by a line feed: recipe lines end in LF or CRLF (in a string, write "\\r")\n'
        "    1 | let x = 1\u240d\n"
        "      |          ^",
    ),
    "bad_then_cr": (
        b'let y = "\xff"\rlet x = 1\n',
        'bad_then_cr.recipe:1:10: not valid UTF-8 (byte 0xff)\n    1 | let y = "\ufffd"\u240dlet x = 1\n      |          ^',
    ),
    # UTF-16, as Windows tools save "Unicode"
    "utf16": (
        'let x = "y"\n'.encode("utf-16"),
        "utf16.recipe:1:1: not valid UTF-8 (byte 0xff): the file starts with a UTF-16 byte-order mark; recipe files are UTF-8\n"
        '    1 | \ufffd\ufffdl\u2400e\u2400t\u2400 \u2400x\u2400 \u2400=\u2400 \u2400"\u2400y\u2400"\u2400\n'
        "      | ^",
    ),
    # a UTF-8 byte-order mark is skipped: columns on line 1 count from after it
    "bom": (
        b"\xef\xbb\xbfpackage a { build = oops }\r\n",
        "bom.recipe:1:21: unknown name 'oops'\n    1 | package a { build = oops }\n      |                     ^",
    ),
    # ...and one anywhere else is a character the parser refuses, shown, not invisible
    "bom_inside": (
        b"package a {\n  build = \xef\xbb\xbfoops\n}\n",
        "bom_inside.recipe:2:11: unexpected character '\\ufeff'\n    2 |   build = \\ufeffoops\n      |           ^",
    ),
    # a NUL: in code, in a comment, in a string (which no build variable could hold)
    "nul": (
        b"package a {\n  build = \x00oops\n}\n",
        "nul.recipe:2:11: NUL character (byte 0x00): a recipe file is text\n    2 |   build = \u2400oops\n      |           ^",
    ),
    "nul_in_comment": (
        b'# a\x00b\npackage a { build = "x" }\n',
        "nul_in_comment.recipe:1:4: NUL character (byte 0x00): a recipe file is text\n    1 | # a\u2400b\n      |    ^",
    ),
    "nul_in_string": (
        b'let unused = "a\x00b"\npackage a { build = "x" }\n',
        'nul_in_string.recipe:1:16: NUL character (byte 0x00): a recipe file is text\n    1 | let unused = "a\u2400b"\n      |                ^',
    ),
    # tabs: the line as an editor shows it (stops every 8 columns), the caret under the
    # token; the column counts characters (a tab is one)
    "tabs": (
        b'package a {\n\tx =\t"a"\tbuild = oops\n}\n',
        "tabs.recipe:2:18: unknown name 'oops'\n"
        '    2 |         x =     "a"     build = oops\n'
        "      |                                 ^",
    ),
    # wide characters take two columns, combining marks none
    "wide": (
        'package a { x = "日本語" build = oops }\n'.encode(),
        "wide.recipe:1:31: unknown name 'oops'\n"
        '    1 | package a { x = "日本語" build = oops }\n'
        "      |                                  ^",
    ),
    "combining": (
        'package a { x = "cafe\u0301" build = oops }\n'.encode(),
        "combining.recipe:1:33: unknown name 'oops'\n"
        '    1 | package a { x = "cafe\u0301" build = oops }\n'
        "      |" + " " * 32 + "^",
    ),
    # a tab after a wide character: its stop counts the wide one as two columns
    "wide_then_tab": (
        'let x = "語"\t+ * 1\n'.encode(),
        "wide_then_tab.recipe:1:15: unexpected character '*'\n"
        '    1 | let x = "語"    + * 1\n'
        "      |                   ^",
    ),
    # form feed and the Unicode line separator end no line (nor do they in an editor)
    "no_line_end": (
        'let x = "\x0c\u2028" + * 2\n'.encode(),
        "no_line_end.recipe:1:16: unexpected character '*'\n"
        '    1 | let x = "\u240c\\u2028" + * 2\n'
        "      |" + " " * 21 + "^",
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_error_position_and_excerpt(tmp_path, monkeypatch, name):
    data, expected = CASES[name]
    monkeypatch.chdir(tmp_path)
    (tmp_path / f"{name}.recipe").write_bytes(data)
    with pytest.raises(E.RecipeError) as info:
        evaluate_file(f"{name}.recipe").attributes()
    assert str(info.value) == expected
    # the caret is under the column as shown (the terminal's columns): under the
    # character the column names, as shown in the line (or just after its end)
    _, code, caret = str(info.value).splitlines()
    at = [k for k in range(len(code) + 1) if E._width(code[:k]) == len(caret) - 1]
    assert any(k == len(code) or not unicodedata.combining(code[k]) for k in at), (code, caret)
    if "UTF-8" in expected or "carriage" in expected or "NUL" in expected:
        assert isinstance(info.value, E.RecipeSyntaxError)


def test_a_recipe_file_is_read_as_an_editor_shows_it(tmp_path):
    """Every line kiln counts is a line an editor shows: in a file it accepts, lines end
    at LF (or CRLF) only, as ``str.splitlines`` counts them where no other line end
    occurs."""
    text = "package a {\r\n\tx = ''\r\n\t  y\r\n\t''\r\n  build = oops\r\n}\r\n"
    (tmp_path / "a.recipe").write_bytes(text.encode())
    with pytest.raises(E.UnknownName) as info:
        evaluate_file(str(tmp_path / "a.recipe")).attributes()
    lines = text.splitlines()
    line, col = 5, 11
    assert str(info.value).startswith(f"{tmp_path / 'a.recipe'}:{line}:{col}: ")
    assert lines[line - 1][col - 1 :].startswith("oops")


def test_an_imported_file_is_located_in_itself(tmp_path, monkeypatch):
    """A lone CR, a NUL or a byte that is not UTF-8 in an imported file is located in
    that file (its line shown), as a syntax error in it is."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "main.recipe").write_text('import "lib.recipe"\npackage a { build = "x" }\n')
    (tmp_path / "lib.recipe").write_bytes(b'let x = "caf\xe9"\n')
    with pytest.raises(E.RecipeSyntaxError) as info:
        evaluate_file("main.recipe").attributes()
    assert str(info.value) == (
        'lib.recipe:1:13: not valid UTF-8 (byte 0xe9)\n    1 | let x = "caf\ufffd"\n      |             ^'
    )
    (tmp_path / "lib.recipe").write_bytes(b"let x = 1\rlet y = 2\n")
    with pytest.raises(E.RecipeSyntaxError, match=r"^lib.recipe:1:10: carriage return not followed"):
        evaluate_file("main.recipe").attributes()


def test_crlf_and_bom_files_evaluate_as_their_lf_original(tmp_path):
    """What is accepted means the same: CRLF is LF, a leading UTF-8 BOM is nothing."""
    text = "package a {\n  build = ''\n    make\n      install\n  ''\n}\n"
    (tmp_path / "lf.recipe").write_text(text)
    (tmp_path / "crlf.recipe").write_bytes(b"\xef\xbb\xbf" + text.replace("\n", "\r\n").encode())
    lf = evaluate_file(str(tmp_path / "lf.recipe"))
    crlf = evaluate_file(str(tmp_path / "crlf.recipe"))
    assert lf.drv_paths == crlf.drv_paths
    assert dict(crlf.packages["a"].env)["build"] == "make\n  install\n"


def test_an_attribute_follows_the_same_rules(tmp_path):
    """A recipe expression on the command line: a lone CR is refused (a CRLF is not),
    and a byte that is not UTF-8 is shown in the line, as U+FFFD, with a caret."""
    (tmp_path / "a.recipe").write_text('package p(x = "") { build = x }\n')
    home = tmp_path / "home"
    r = run_kiln(["path", "a.recipe", "p(x =\r\n 1 +\r 2)"], cwd=tmp_path, home=home)
    assert r.returncode == 1, r.stderr
    assert r.stderr.startswith(
        "error: <attribute>:2:5: carriage return not followed by a line feed: recipe lines end in LF or CRLF"
    ), r.stderr
    r = run_kiln(["path", "a.recipe", 'p(x = "\udcff")'], cwd=tmp_path, home=home)
    assert r.returncode == 1, r.stderr
    assert r.stderr == (
        'error: <attribute>:1:8: not valid UTF-8 (byte 0xff)\n    1 | p(x = "\ufffd")\n      |        ^\n'
    ), r.stderr
    ev = evaluate_file(str(tmp_path / "a.recipe"))
    with pytest.raises(E.RecipeTypeError):  # a CRLF in an attribute is a line end (x is a number)
        ev.select("p(x =\r\n 1)")


def test_a_crlf_in_an_attribute_is_shown_as_a_line_end(tmp_path):
    """A CRLF in an attribute is made LF, as in a file: an error on that line shows no
    trailing ``␍`` (the check's normalised text was once thrown away)."""
    (tmp_path / "a.recipe").write_text('package p(x = "") { build = x }\n')
    ev = evaluate_file(str(tmp_path / "a.recipe"))
    with pytest.raises(E.RecipeError) as e:
        ev.select('p(x = 1 + "a"\r\n )')
    assert "\u240d" not in str(e.value) and "<attribute>:1:" in str(e.value), str(e.value)
