"""Derivations against real Nix: ``nix-instantiate`` a small expression (flat and
recursive fixed-output derivations, a toFile source, multi-output derivations, an input
using a non-default output, awkward strings), then for every ``.drv`` it wrote: kiln's
parser + serializer reproduce the text byte for byte, and blanking the outputs and
running ``finalize`` + ``drv_path`` reproduces Nix's output paths and ``.drv`` path."""

from __future__ import annotations

import hashlib
from dataclasses import replace
from pathlib import Path

import pytest
from fmtkit import NIX_OPTS, run

from kiln.store import derivation as drvmod
from kiln.store import drvparse
from kiln.store.derivation import Derivation, Output
from kiln.store.hashes import Hash
from kiln.store.paths import StorePath

pytestmark = pytest.mark.nix

EXPR = r"""
{ salt }:
let
  sys = "x86_64-linux";
  sh = "/bin/sh";
  fodFlat = derivation {
    name = "fod-flat"; system = sys; builder = sh;
    args = [ "-c" "echo fixed > $out" ];
    outputHashMode = "flat"; outputHashAlgo = "sha256";
    outputHash = "FLAT_HASH";
  };
  fodRec = derivation {
    name = "fod-rec"; system = sys; builder = sh;
    args = [ "-c" "mkdir $out" ];
    outputHashMode = "recursive"; outputHashAlgo = "sha256";
    outputHash = "REC_HASH";
  };
  src = builtins.toFile "src.txt" "source \"quoted\" text\nwith\ttabs, \\ backslash and \r return ${salt}";
  lib = derivation {
    name = "lib"; system = sys; builder = sh;
    outputs = [ "out" "lib" "dev" ];
    args = [ "-c" "cat ${fodFlat} ${src} > $out; mkdir $lib $dev" ];
    rec_input = fodRec;
  };
in derivation {
  name = "top-${salt}"; system = sys; builder = sh;
  outputs = [ "out" "doc" ];
  args = [ "-c" "echo ${lib.lib} ${lib.dev} > $out; echo > $doc" ];
  weird = "unicode: héllo 日本, quote \" newline\n tab\t";
  empty = "";
  list = [ 1 "two" true null ];
}
"""


def _resolve(path: str) -> Derivation:
    sp = StorePath.parse(path, "/nix/store")
    return drvparse.parse(Path(path).read_text(encoding="utf-8"), sp.name.removesuffix(".drv"), "/nix/store")


def _closure(top: str) -> list[str]:
    seen: list[str] = []
    todo = [top]
    while todo:
        p = todo.pop()
        if p in seen:
            continue
        seen.append(p)
        todo += [k for k, _ in _resolve(p).input_drvs]
    return seen


def _blank(d: Derivation) -> Derivation:
    names = {k for k, _ in d.outputs}
    outs = tuple((k, replace(o, path="")) for k, o in d.outputs)
    env = tuple((k, "" if k in names else v) for k, v in d.env)
    return replace(d, outputs=outs, env=env)


def test_drv_paths_and_text_match_nix_instantiate(tmp_path: Path) -> None:
    expr = EXPR.replace("FLAT_HASH", hashlib.sha256(b"fixed\n").hexdigest()).replace(
        "REC_HASH", Hash.sha256_of(b"any").nix32
    )
    f = tmp_path / "t.nix"
    f.write_text(expr, encoding="utf-8")
    top = (
        run("nix-instantiate", *NIX_OPTS, f, "--argstr", "salt", tmp_path.name.replace("_", "-"))
        .decode()
        .strip()
    )
    drvs = _closure(top)
    assert len(drvs) == 4  # top, lib, fod-flat, fod-rec
    memo: dict[str, Hash] = {}
    kinds = set()
    for path in drvs:
        text = Path(path).read_text(encoding="utf-8")
        d = _resolve(path)
        assert d.serialize() == text, path  # byte-identical round trip
        kinds.add("fixed" if d.is_fixed_output else f"{len(d.outputs)}-outputs")
        fin = drvmod.finalize(_blank(d), _resolve, memo)
        assert fin == d, path
        assert fin.serialize() == text
        assert str(drvmod.drv_path(fin)) == path
        assert {str(r) for r in fin.references()} == set(d.input_srcs) | {k for k, _ in d.input_drvs}
    assert kinds == {"fixed", "3-outputs", "2-outputs"}
    # the toFile source and the non-default outputs really are in play
    topd = _resolve(top)
    assert any(outs == ("dev", "lib") for _, outs in topd.input_drvs)
    lib = _resolve(next(k for k, _ in topd.input_drvs))
    assert any(p.endswith("-src.txt") for p in lib.input_srcs)


def test_output_paths_match_nix_eval() -> None:
    expr = 'let d = derivation { name = "x"; system = "x86_64-linux"; builder = "/bin/sh"; outputs = ["out" "bin"]; }; in [ d.outPath d.bin.outPath d.drvPath ]'
    out = run("nix-instantiate", *NIX_OPTS, "--eval", "--strict", "-E", expr).decode()
    want_out, want_bin, want_drv = (s.strip('" ') for s in out.strip().strip("[]").split())
    d = Derivation.make(
        "x",
        outputs={"out": Output(), "bin": Output()},
        builder="/bin/sh",
        env={
            "name": "x",
            "system": "x86_64-linux",
            "builder": "/bin/sh",
            "outputs": "out bin",
            "out": "",
            "bin": "",
        },
        store_dir="/nix/store",
    )
    fin = drvmod.finalize(d, _resolve, {})
    assert fin.output_path("out") == want_out
    assert fin.output_path("bin") == want_bin
    assert str(drvmod.drv_path(fin)) == want_drv
