"""Stray references (``refscan``): an output naming a store path the build was not given
is refused however the name is spelled, and the refusal says what was named. Real
sandboxed builds (busybox), no mocks."""

from __future__ import annotations

import os
import shutil

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildError, BuildOptions
from kiln.store.refscan import scan

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]

STRAY = "not among the derivation's inputs"


def builder(store) -> Builder:
    return Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None)


@pytest.fixture
def other(store, graph) -> tuple[str, str]:
    """A built path no build below is given: (its .drv, its output)."""
    o, od = graph.drv("other", "mkdir -p $out/bin; echo o > $out/bin/o")
    builder(store).realise([o])
    return o, od.output_path()


@pytest.mark.parametrize(
    "script",
    [
        "mkdir $out; ln -s ../{base} $out/dep",  # relative symlink beside the output
        "mkdir -p $out/a/b; ln -s ../../../{base}/bin/o $out/a/b/dep",  # ... from a subdirectory
        "ln -s {base}/bin $out",  # the output itself a relative symlink
        "mkdir $out; ln -s ../x/../../store/{base} $out/dep",
        "echo /kiln/store/../store/{base} > $out",  # '..' in text
        "mkdir $out; echo $out/../{base}/bin/o > $out/f",  # a path relative to the output
        "echo /kiln/x/y/../.././store//{base}/bin > $out",
    ],
)
def test_a_store_path_outside_the_inputs_is_refused_however_spelled(store, graph, other, script):
    base = os.path.basename(other[1])
    d, dd = graph.drv("spelled", script.format(base=base))
    with pytest.raises(BuildError, match=STRAY) as e:
        builder(store).realise([d])
    assert other[1] in str(e.value)  # its whole name, not <hash>-...
    assert not store.is_valid(dd.output_path())


def test_what_the_rule_allows(store, graph, other):
    """The same spellings naming an input, or paths that are not store paths: built, and
    an input named by a relative symlink is a recorded reference."""
    o, out = other
    base = os.path.basename(out)
    d, dd = graph.drv(
        "allowed",
        f"mkdir -p $out/sub; ln -s ../{base}/bin/o $out/dep; ln -s ../x $out/sub/up; ln -s .. $out/sub/top;"
        f" ln -s ../../.. $out/sub/root; echo /nix/store/../store/00000000000000000000000000000000-x > $out/f;"
        " echo /kiln/store/../store > $out/g",
        inputs=[o],
    )
    builder(store).realise([d])
    assert store.query(dd.output_path()).references == (out,)


def test_the_refusal_names_the_output_itself_and_the_whole_base_name(store, graph, other):
    # was: "  .: /kiln/store/<hash>-..."
    base = os.path.basename(other[1])
    d, _ = graph.drv("file", f"echo {other[1]}/bin/o > $out")
    with pytest.raises(BuildError) as e:
        builder(store).realise([d])
    assert f"\n  (the output itself): /kiln/store/{base}\n" in str(e.value) + "\n", str(e.value)
    # not in the store: the name after the hash, when it is a valid store path name
    h = "0" * 32
    d, _ = graph.drv("made-up", f"mkdir $out; echo /kiln/store/{h}-made-up-1.0/bin > $out/f")
    with pytest.raises(BuildError) as e:
        builder(store).realise([d])
    assert f"\n  f: /kiln/store/{h}-made-up-1.0" in str(e.value)


def test_a_drv_path_in_an_output_is_explained(store, graph, other):
    """``${a.drvPath}`` written into the output: the .drv is named as such, and the
    message says how to avoid it (whether or not ``a`` is an input)."""
    o, out = other
    for inputs, whose in (([o], f"is the derivation of input {out}"), ([], "is a derivation (.drv)")):
        d, _ = graph.drv(f"drvpath{len(inputs)}", f"echo built from {o} > $out", inputs=inputs)
        with pytest.raises(BuildError) as e:
            builder(store).realise([d])
        msg = str(e.value)
        assert f"(the output itself): {o}\n" in msg, msg
        assert f"note: {o} {whose}" in msg and "pkg.drvPath" in msg and "${pkg}" in msg, msg


def test_the_scan_covers_dotdot_spellings_at_chunk_boundaries(tmp_path):
    """``..`` spellings split across the 1 MiB read boundary at every offset, and the
    spellings the rule does not cover (documented in refscan)."""
    h = "1" * 32
    for k in range(0, 80, 3):
        f = tmp_path / f"b{k}"
        f.write_bytes(b"\n" * ((1 << 20) - k) + f"/kiln/store/x/../{h}-n\n".encode())
        assert scan(f, [], "/kiln/store").stray == (("", h),), k
    not_seen = tmp_path / "n"
    not_seen.write_bytes(f"{h}-bare %2Fkiln%2Fstore%2F{h}-x /kiln/store/../{h}-x store/{h}-y".encode())
    assert scan(not_seen, [], "/kiln/store").stray == ()
