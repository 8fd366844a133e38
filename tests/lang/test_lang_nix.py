"""Derivations from recipes against real Nix (Debian nix-bin): same store dir, same
derivation → same .drv path and output paths (``nix-instantiate --readonly-mode``)."""

from __future__ import annotations

import json
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
]


@pytest.mark.parametrize("text", STRING_CASES)
def test_strings_like_nix(text):
    """Indented-string stripping and escapes give what Nix gives."""
    from kiln.lang.evaluator import Evaluator
    from kiln.lang.parser import parse_expr

    ev = Evaluator("/nix/store", None)
    mine = ev.eval(parse_expr(text), ev.builtins)
    r = subprocess.run(
        ["nix-instantiate", "--eval", "--json", "-E", text], capture_output=True, text=True, timeout=60
    )
    assert r.returncode == 0, r.stderr
    assert mine == json.loads(r.stdout)
