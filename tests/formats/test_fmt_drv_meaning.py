"""A ``.drv`` text that is well-formed ATerm but means nothing a builder could use is
refused by ``drvparse.parse``, as Nix refuses it when it parses a derivation (here:
``nix-store --add`` of a ``.drv`` file into a chroot store, which parses it): an output
path or input source outside the store, an unknown hash algorithm. Also refused (kiln's
own rules, which every input-addressed or fixed-output derivation kiln or Nix writes
meets): no outputs, an input derivation that is not a ``.drv``, a fixed output's digest
of the wrong length or not lowercase hex, a digest without an algorithm; and a floating
output (Nix's content-addressed or impure derivations), which kiln does not build."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.store import drvparse
from kiln.store.derivation import Derivation, Output, finalize
from kiln.store.errors import FormatError

SD = "/kiln/store"
OUT = f"{SD}/{'a' * 32}-foo"
SRC = f"{SD}/{'b' * 32}-src"
DEP = f"{SD}/{'c' * 32}-dep.drv"
SHA = "0" * 64


def drv(
    outputs: str = f'("out","{OUT}","","")', drvs: str = f'("{DEP}",["out"])', srcs: str = f'"{SRC}"'
) -> str:
    return f'Derive([{outputs}],[{drvs}],[{srcs}],"x86_64-linux","/bin/sh",[],[("out","{OUT}")])'


#: (case, text, what kiln's error says); the differential test below has Nix's view
BAD = [
    (
        "relative output",
        drv(outputs='("out","foo","","")', drvs="", srcs=""),
        "output 'out' path 'foo' is not a store path",
    ),
    (
        "source outside",
        drv(srcs='"/etc/passwd"'),
        "input source '/etc/passwd' is not a store path of /kiln/store",
    ),
    (
        "unknown algo",
        drv(outputs=f'("out","{OUT}","r:sha999","{SHA}")', drvs="", srcs=""),
        "unknown hash algorithm 'r:sha999'",
    ),
    ("no outputs", drv(outputs=""), "no outputs"),
    ("input not a drv", drv(drvs=f'("{SRC}",["out"])'), "is not a .drv file"),
    ("other store", drv(srcs=f'"/nix/store/{"b" * 32}-src"'), "is not in the store '/kiln/store'"),
    ("short digest", drv(outputs=f'("out","{OUT}","sha256","{SHA[:-2]}")'), "is not 64 lowercase hex digits"),
    ("upper hex", drv(outputs=f'("out","{OUT}","sha256","{SHA[:-1]}A")'), "is not 64 lowercase hex digits"),
    ("digest alone", drv(outputs=f'("out","{OUT}","","{SHA}")'), "unknown hash algorithm ''"),
]


def test_a_meaningful_derivation_parses() -> None:
    for text in (drv(), drv(outputs=f'("out","{OUT}","r:sha256","{SHA}")'), drv(drvs="", srcs="")):
        assert drvparse.parse(text, "foo", SD).serialize() == text


@pytest.mark.parametrize(("case", "text", "said"), BAD, ids=[c for c, _, _ in BAD])
def test_a_meaningless_derivation_is_refused(case: str, text: str, said: str) -> None:
    with pytest.raises(FormatError) as e:
        drvparse.parse(text, "foo", SD)
    assert said in str(e.value), str(e.value)


@pytest.mark.nix
def test_nix_refuses_the_same_ones_and_takes_the_good_one(tmp_path: Path) -> None:
    """Differential: what Nix says of the same changes to a derivation it takes (it parses
    a ``.drv`` it adds, and checks its output path)."""
    assert shutil.which("nix-store"), "needs Debian's nix-bin"

    def nix(text: str, n: int) -> str:
        f = tmp_path / str(n) / "foo.drv"
        f.parent.mkdir()
        f.write_text(text)
        store = f"local?root={tmp_path / 'root'}&store={SD}"
        r = subprocess.run(["nix-store", "--store", store, "--add", str(f)], capture_output=True, text=True)
        return "" if r.returncode == 0 else r.stderr

    blank = Derivation(
        name="foo",
        outputs=(("out", Output("")),),
        input_drvs=(),
        input_srcs=(),
        platform="x86_64-linux",
        builder="/bin/sh",
        args=(),
        env=(("out", ""),),
        store_dir=SD,
    )
    good = finalize(blank, lambda p: pytest.fail(p), {}).serialize()  # the output path Nix checks
    out = drvparse.parse(good, "foo", SD).outputs[0][1].path
    assert nix(good, 0) == ""
    changes = [
        (good.replace(f'"{out}","",""', '"foo","",""'), "bad path 'foo' in derivation"),
        (good.replace("],[],[]", '],[],["/etc/passwd"]'), "path '/etc/passwd' is not in the Nix store"),
        (good.replace(f'"{out}","",""', f'"{out}","r:sha999","{SHA}"'), "unknown hash algorithm 'sha999'"),
    ]
    for n, (text, nix_says) in enumerate(changes, 1):
        assert text != good
        assert nix_says in nix(text, n), text
        with pytest.raises(FormatError):
            drvparse.parse(text, "foo", SD)


def test_a_loose_drv_is_read_in_its_own_store_dir(tmp_path: Path) -> None:
    """``store_dir=None`` (a loose ``.drv`` file, ``kiln show-derivation FILE``): the store
    dir is its first output's, and every path must share it. A floating output (Nix's
    content-addressed or impure derivations, an empty path) is named as such."""
    other = drv().replace(SD, "/opt/store")
    assert drvparse.parse(other, "foo", None).store_dir == "/opt/store"
    with pytest.raises(FormatError, match="is not a store path of /opt/store"):
        drvparse.parse(other.replace(f'"/opt/store/{"b" * 32}-src"', f'"{SRC}"'), "foo", None)
    with pytest.raises(FormatError, match="floating content-addressed, impure or deferred"):
        drvparse.parse(drv(outputs='("out","","r:sha256","")', drvs="", srcs=""), "foo", None)
    f = tmp_path / "x-foo.drv"
    f.write_text(other)
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "show-derivation", str(f)],
        capture_output=True,
        text=True,
        env={**os.environ, "KILN_HOME": str(tmp_path / "none")},
    )
    assert r.returncode == 0 and "/opt/store/" in r.stdout, r.stderr
