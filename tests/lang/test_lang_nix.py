"""Derivations from recipes against real Nix (Debian nix-bin): same store dir, same
derivation → same .drv path and output paths (``nix-instantiate --readonly-mode``)."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
import textwrap

import pytest

from kiln.lang import evaluate_file

pytestmark = [
    pytest.mark.nix,
    pytest.mark.skipif(shutil.which("nix-instantiate") is None, reason="needs nix-instantiate"),
]

SHA = "31e066137a962676e89f69d1b65382de95a7ef7d914b8cb956f41ea72e0f516b"

RECIPE = f"""
package plain {{
  system = "x86_64-linux"
  builder = "/bin/bash"
  note = "quotes \\" and \\\\ and tab\\t"
  build = ''
    echo plain > $out
  ''
}}

package hello {{
  version = "2.10"
  system = "x86_64-linux"
  builder = "/bin/bash"
  src = fetchurl {{ url = "https://example.org/hello-2.10.tar.gz", sha256 = "{SHA}" }}
  deps = [plain]
  build = "tar xf $src; echo hi > $out"
}}
"""

NIX = f"""
let
  plain = derivation {{
    name = "plain"; system = "x86_64-linux"; builder = "/bin/bash";
    note = "quotes \\" and \\\\ and tab\\t";
    build = "echo plain > $out\\n";
    args = [ "-euo" "pipefail" "-c" "echo plain > $out\\n" ];
    PATH = "/usr/bin:/bin";
  }};
  src = derivation {{
    name = "hello-2.10.tar.gz"; system = "x86_64-linux"; builder = "builtin:fetchurl";
    url = "https://example.org/hello-2.10.tar.gz";
    outputHash = "{SHA}"; outputHashAlgo = "sha256"; outputHashMode = "flat";
  }};
  hello = derivation {{
    name = "hello-2.10"; version = "2.10"; system = "x86_64-linux"; builder = "/bin/bash";
    inherit src; deps = [ plain ];
    build = "tar xf $src; echo hi > $out";
    args = [ "-euo" "pipefail" "-c" "tar xf $src; echo hi > $out" ];
    PATH = "${{plain}}/bin:/usr/bin:/bin";
  }};
in {{
  plain = {{ drv = plain.drvPath; out = plain.outPath; }};
  src = src.outPath;
  hello = hello.outPath;
}}
"""


def test_same_paths_as_nix(tmp_path):
    (tmp_path / "t.recipe").write_text(textwrap.dedent(RECIPE))
    (tmp_path / "t.nix").write_text(NIX)
    r = subprocess.run(
        ["nix-instantiate", "--readonly-mode", "--eval", "--strict", "--json", str(tmp_path / "t.nix")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    nix = json.loads(r.stdout)
    ev = evaluate_file(tmp_path / "t.recipe", store_dir="/nix/store")
    plain = ev.packages["plain"]
    # no inputs: the whole .drv is identical
    assert ev.drv_paths["plain"] == nix["plain"]["drv"]
    assert plain.output_path() == nix["plain"]["out"]
    hello = ev.packages["hello"]
    src_drv = next(ev.drvs[p] for p, _ in hello.input_drvs if ev.drvs[p].is_fixed_output)
    # fixed outputs: same path from name + hash; dependents: same hash modulo
    assert src_drv.output_path() == nix["src"]
    assert hello.output_path() == nix["hello"]


STRING_CASES = [
    "''\n  a\n  b\n''",
    "''\n    a\n  b\n''",
    "''  a\n   b''",
    "''\n  a ''${x} '''q ''\\n\n''",
    "''\n\n  a\n\n  b\n  ''",
    "''\n  ${\"X\"}\n    y\n''",
    "''a''",
    '"a\\tb\\${c}"',
    "''\n  a\n   \n  b\n''",
    "''\n  a\n \n  b\n''",
    "''\n\ta\n''",
    "''\n  a\n  b''",
    "''  \n  a\n''",
    "''\n  a $out $ {x} ''$ ''\\t\n''",
    '"${"a"}${"b"}"',
    "''\n  x${\"\n\"}  y\n''",
    # $$ is literal text: $${x} is not an interpolation (Makefile-style escapes)
    '"$${HOME} and $$ and ${"z"} $"',
    "''\n  echo $${HOME} \"$${x}\" $$$\n''",
    # an indented string inside ${...} of an indented string (optionalString c ''...'')
    "''\n  ./configure ${ if true then ''--static'' else \"\" }\n  x${''y''}\n''",
    # indentation (Nix's stripIndentation): lines of only spaces do not count, and when no
    # line counts every leading space goes; a tab is content, not indentation
    "''\n  \n''",
    "''\n  \n\n    \n''",
    "''\n    a\n      \n   \n    b\n''",
    "''\n  \ta\n    b\n''",
    "''\n  a\n \t \n  b\n''",
    "''  \n    a\n  ''",
    "''\n    a\n  b  ''",
    # an escaped newline starts a line for stripping, not for the indentation; an
    # escape or interpolation at a line start ends its indentation
    "''\n  a''\\n  b\n''",
    "''\n    a''\\n''\\ b\n''",
    "''\n  a''\\n   ''",
    "''\n  ''\\ a\n    ${\"b\"}\n      c\n''",
    "''\n    ${\"a\"}\n  ${\"b\"}   \n''",
    "''\n  a\n  ${\"b\"}  ''",
    # the code in ${...} is code: a brace in a comment or nested string does not count
    '"${ "a" # }\n}"',
    "''${ \"a\" # }\n}''",
    '"${ "a" # "\n}"',
    '"${ "a" /* } */ }"',
    "''${ \"a\" /* '' } */ }''",
    '"${ { a = "x"; /* } */ }.a }"',
    '"<${ "}" }>"',
    "\"<${ ''}'' }>\"",
    "''<${ ''a}'' }>''",
    '/* } */ "a" + /**/ "b" /* * / **/ # }',
    # a nested string's escapes do not end it ('''a''$b'' in ${...} ended at its first '')
    "\"${ ''a''$b'' }\"",
    "\"${ if true then ''echo ''${HOME}'' else \"\" }\"",
    "\"${ ''a'''b'' }\"",
    "\"${ ''a''\\nb'' }\"",
    "\"${ ''''$ '' }\"",
    "\"${ ''a''\\}b'' }\"",
    "\"${ ''a'''''$b'' }\"",
    "'' ${ ''a''$b'' } ''",
    "'' ${ ''a'''b'' } ''",
    "''\n  x ${ ''a''\\\n'' } y\n''",
    "\"${ ''x ${ \"}\" } y'' }\"",
    '"${ "a\\"}" }"',
    '"${ "\\${" }"',
    '"${ "a\\\\" }"',
    "''${ \"\\\"}\" }''",
    # a lone CR ends a '#' comment, as a newline does (Nix: #[^\r\n]*)
    '"${ "a" # c\r+ "b" }"',
    '"${ # }\r"a" }"',
    "(1 # c\r+ 2)",
    # a nested string's own ${...} is code: a quote there ends nothing (it ended the
    # nested string early), in both kinds of string, and comments there hide quotes too
    '"${ "a${ "b" }c" }"',
    "''x ${ \"${ ''y ${ \"''\" } z'' }\" } w''",
    "\"${ ''x ${ \"''\" } y'' }\"",
    "''${ ''x ${ \"''\" } y'' }''",
    '"${ "${ "}" }" }"',
    "\"${ ''${ ''}'' }'' }\"",
    '"${ "a${ "b" # " } \'\'\n}c" }"',
    '"${ "a${ /* " } \'\' { */ "b" }c" }"',
    "''${ \"a${ \"b\" # }\r}c\" }''",
    '"${ "<${ { a = "}"; }.a }>" }"',
    "''\n  a ${ \"b ${ ''\n    c\n  '' }\" }\n    d\n''",
]


@pytest.mark.parametrize("text", STRING_CASES)
def test_strings_like_nix(text):
    """Indented-string stripping, escapes and the code in ${...} (comments, nested
    strings) give what Nix gives."""
    from kiln.lang.evaluator import Evaluator
    from kiln.lang.parser import parse_expr

    ev = Evaluator("/nix/store", None)
    mine = ev.eval(parse_expr(text), ev.builtins)
    r = subprocess.run(
        ["nix-instantiate", "--eval", "--json", "-E", text], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert mine == json.loads(r.stdout)


def _kiln_value(text: str):
    from kiln.lang.evaluator import Evaluator
    from kiln.lang.parser import parse_expr

    ev = Evaluator("/nix/store", None)
    return ev.eval(parse_expr(text), ev.builtins)


def _nix_values(tmp_path, texts: list[str]) -> list:
    """What Nix makes of each expression in ``texts`` (one nix-instantiate for all)."""
    f = tmp_path / "cases.nix"
    f.write_text("[\n" + "\n".join(f"({t})" for t in texts) + "\n]\n")
    r = subprocess.run(
        ["nix-instantiate", "--eval", "--strict", "--json", str(f)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0, r.stderr
    values = json.loads(r.stdout)
    assert len(values) == len(texts)
    return values


def _generated(seed: int, count: int, make) -> list[str]:
    rnd = random.Random(seed)
    return sorted({make(rnd) for _ in range(count)})


# Pieces that join into valid indented strings in any order (a lone ' or $ could join with
# a neighbour into another token): spaces, newlines, tabs, text, escapes (an escaped space
# and newline included), interpolations of spaces and newlines, $$.
_IND_PIECES = [" ", " ", "  ", "\n", "\n", "\t", "a", "$$", "''\\n", "''\\ ", "''$", "'''"]
_IND_PIECES += ['${"x"}', '${" "}', '${"\\n"}']


def test_generated_indented_strings_like_nix(tmp_path):
    """Thousands of indented strings made of the pieces stripping cares about, the same
    every run, against Nix's own stripping. (Lines of only spaces, all-blank strings,
    tabs and escaped newlines were each stripped otherwise than Nix strips them.)"""
    texts = _generated(
        1, 4000, lambda rnd: "''" + "".join(rnd.choice(_IND_PIECES) for _ in range(rnd.randint(1, 9))) + "''"
    )
    nix = _nix_values(tmp_path, texts)
    differ = [(t, n, m) for t, n in zip(texts, nix, strict=True) if (m := _kiln_value(t)) != n]
    assert not differ, differ[:10]


def _interp_code(rnd: random.Random) -> str:
    """A string whose ``${...}`` holds comments and nested strings full of braces,
    quotes and escapes, in an order Nix reads as valid code."""
    junk = ["}", "{", '"', "''", "${", "/*", "#", "x", " ", "*", "/", "\\", "$"]

    def j() -> str:
        return "".join(rnd.choice(junk) for _ in range(rnd.randint(0, 4)))

    def inside_block() -> str:
        s = j()
        while "*/" in s:  # (a '*/' inside would end the comment early)
            s = s.replace("*/", "")
        return s

    def around() -> str:
        return rnd.choice([f"#{j()}\n", f"/*{inside_block()}*/", " ", "\n"])

    def escaped(special: str, escapes: list[str]) -> str:
        """The text of a nested string: ``j()``'s characters but ``special`` ones, and
        escapes (an indented string taken to end at its first ``''`` broke on them)."""
        parts = [c for c in j() if c not in special] + [rnd.choice(escapes) for _ in range(rnd.randint(1, 3))]
        rnd.shuffle(parts)
        return "".join(parts)

    value = rnd.choice(
        [
            '"' + "".join(c for c in j() if c not in '"\\$') + '"',
            "''" + "".join(c for c in j() if c not in "'$") + "''",
            '{ a = "x"; }.a',
            '"${"q"}"',
            '"' + escaped('"\\$', ['\\"', "\\\\", "\\$", "\\${", "\\n", "\\}", "$$"]) + '"',
            "''" + escaped("'$", ["'''", "''$", "''${", "''\\n", "''\\}", "''\\'", "''\\\\", "$$"]) + "''",
        ]
    )
    code = "".join(around() for _ in range(rnd.randint(0, 3))) + value
    code += "".join(around() for _ in range(rnd.randint(0, 3)))
    q = rnd.choice(['"', "''"])
    return f"{q}<${{{code}}}>{q}"


def test_generated_interpolation_code_like_nix(tmp_path):
    """Comments and nested strings holding ``}``, ``{``, quotes, ``${`` and escapes in
    the code of an interpolation, in both kinds of string: what Nix makes of them (a
    ``}`` in a comment closed the interpolation; an escape such as ``''$`` ended a nested
    indented string)."""
    texts = _generated(2, 3000, _interp_code)
    nix = _nix_values(tmp_path, texts)
    differ = [(t, n, m) for t, n in zip(texts, nix, strict=True) if (m := _kiln_value(t)) != n]
    assert not differ, differ[:10]


@pytest.mark.parametrize(
    "text",
    [
        '"${ "a" #}"',  # the comment takes the closing brace
        "''${ \"a\" # }''",
        '"${ "a" /* }"',
        "\"${''}\"",
        '"a" /* never closed',
        # unterminated at some depth of nesting (each left open in another way)
        '"${ "a${ "b" }c" ',
        "''x ${ \"''\" } y",
        '"${ { a = { b = "}"; }; }',
        '"${ \'\'a ${ "b" }"',
        '"${ "${ "${ "x" }" }"',
        '"${ "a${ /* " } */ "b" }',
    ],
)
def test_refused_like_nix(text):
    """What Nix refuses as unterminated, kiln refuses too (with a located error)."""
    from kiln.lang.errors import RecipeSyntaxError

    r = subprocess.run(
        ["nix-instantiate", "--eval", "--json", "-E", text], capture_output=True, text=True, timeout=60
    )
    assert r.returncode != 0 and "syntax error" in r.stderr, (r.stdout, r.stderr)
    with pytest.raises(RecipeSyntaxError) as e:
        _kiln_value(text)
    assert e.value.pos is not None


def _deep_string(rnd: random.Random, depth: int) -> str:
    """A string whose ``${...}`` holds code with strings of both kinds nested ``depth``
    deep, each holding quotes, braces, escapes and comments, Nix reading all of it."""
    q = rnd.choice(['"', "''"])
    # the text around the ${...}: no lone ' in an indented string (before its closing ''
    # it would be the escape ''')
    if q == "''":
        text = rnd.choice(["a", "}", "{", '"', "$$", "''$", "'''", "''\\n"])
    else:
        text = rnd.choice(["a", "}", "{", "'", "''", "$$", '\\"'])
    around = rnd.choice([" ", "\n", "#\"'}{\n", "/* \" '' } { */", " "])
    if depth == 0:
        inner = rnd.choice(['"q"', "''q''", '{ a = "}"; }.a'])
    else:
        inner = _deep_string(rnd, depth - 1)
        if rnd.random() < 0.3:
            inner = f'{{ a = {inner}; b = {{ c = "{{"; }}; }}.a'
    return f"{q}{text}${{{around}{inner}{around}}}{text}{q}"


def test_generated_nested_strings_like_nix(tmp_path):
    """Strings nested in interpolations up to six deep, with quotes, braces, escapes
    and comments at every level: what Nix makes of them (a quote in a nested string's
    own ``${...}`` ended that string early; records nested only six deep)."""
    texts = _generated(3, 1500, lambda rnd: _deep_string(rnd, rnd.randint(1, 6)))
    nix = _nix_values(tmp_path, texts)
    differ = [(t, n, m) for t, n in zip(texts, nix, strict=True) if (m := _kiln_value(t)) != n]
    assert not differ, differ[:10]


def test_twenty_levels_deep_like_nix(tmp_path):
    """Twenty records deep in an interpolation, and twenty strings each in the ``${...}``
    of the one around it (the two kinds in turn), as Nix reads them."""
    strings = '"x"'
    for k in range(20):
        strings = f'"({{${{ {strings} }}}}"' if k % 2 else f"''[\"${{ {strings} }}\"]''"
    records = '"${ ' + "{ a = " * 20 + '"v"' + "; }" * 20 + ".a" * 20 + ' }"'
    texts = [strings, records, "''${ " + records + " }''"]
    assert [_kiln_value(t) for t in texts] == _nix_values(tmp_path, texts)


def _nix_refuses(text: str) -> bool:
    r = subprocess.run(["nix-instantiate", "--parse", "-E", text], capture_output=True, text=True, timeout=60)
    return r.returncode != 0 and "syntax error" in r.stderr


def test_truncated_nested_strings_are_refused_like_nix():
    """Nested strings cut short at random places: where Nix gives a syntax error, kiln
    gives a located one (never another error, a value or a hang)."""
    from kiln.lang.errors import RecipeSyntaxError

    rnd = random.Random(4)
    texts = []
    while len(texts) < 40:
        whole = _deep_string(rnd, rnd.randint(1, 4))
        texts.append(whole[: rnd.randint(1, len(whole) - 1)])
    bad = []
    for text in texts:
        if not _nix_refuses(text):
            continue
        try:
            _kiln_value(text)
            bad.append((text, "a value"))
        except RecipeSyntaxError as e:
            if e.pos is None:
                bad.append((text, str(e)))
    assert not bad, bad[:10]
