"""A build never uses a path whose closure has a hole (a dependency ``kiln store verify
--repair`` quarantined): the derivation that made the missing path is built again first,
so a build's sandbox holds every input's whole closure and ``kiln build`` of such a path
leaves it usable; a hole no derivation of the build makes is an error naming it."""

from __future__ import annotations

import shutil
import sys
from pathlib import Path

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildOptions
from kiln.store.errors import StoreError

sys.path.insert(0, str(Path(__file__).parents[1] / "store"))  # storekit: the store tests' helpers
from storekit import corrupt_file, corrupt_object  # noqa: E402

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]


def _builder(store, said: list[str] | None = None, **opts) -> Builder:
    return Builder(
        store, BwrapExecutor(), BuildOptions(**opts), say=(said.append if said is not None else print)
    )


def _quarantine(store, path: str, file: str = "lib") -> None:
    corrupt_object(store, path)
    corrupt_file(store.real_path(path) / file)
    assert store.verify(repair=True).quarantined == (path,)
    assert not store.is_valid(path)


def _chain(graph):
    """lib; app referencing lib (a runtime dependency); use, which reads lib's file
    through app at build time without naming lib itself."""
    lib, libd = graph.drv("lib", "mkdir $out; echo lib-data > $out/lib")
    app, appd = graph.drv("app", "mkdir $out; echo $in0 > $out/ref", inputs=[lib])
    use, used = graph.drv("use", 'cat "$(cat $in0/ref)/lib" > $out', inputs=[app])
    return (lib, libd), (app, appd), (use, used)


def test_a_build_whose_input_lost_a_dependency_builds_it_again_first(store, graph):
    (lib, libd), (app, appd), (use, used) = _chain(graph)
    _builder(store).realise([app])
    _quarantine(store, libd.output_path())
    said: list[str] = []
    _builder(store, said).realise([use])
    # without the rebuild, lib was not in the sandbox: "cat: can't open '/kiln/store/...-lib/lib'"
    assert store.real_path(used.output_path()).read_text() == "lib-data\n"
    assert store.is_valid(libd.output_path())
    assert store.closure_with_holes([used.output_path()])[1] == {}
    assert any(libd.output_path() in m and "missing" in m for m in said), said


def test_a_hole_in_the_closure_of_what_is_made_again_is_made_again_too(store, graph):
    """m, made again for r, reads j through its own input i: j, quarantined too, must be
    made again before m (the first version looked one level deep only)."""
    j, jd = graph.drv("j", "mkdir $out; echo j-data > $out/lib")
    i, _ = graph.drv("i", "mkdir $out; echo $in0 > $out/ref", inputs=[j])  # i -> j at run time
    m, md = graph.drv("m", 'mkdir $out; cat "$(cat $in0/ref)/lib" > $out/lib; echo m >> $out/lib', inputs=[i])
    p, _ = graph.drv("p", "mkdir $out; echo $in0 > $out/ref", inputs=[m])  # p -> m at run time
    r, rd = graph.drv("r", 'cat "$(cat $in0/ref)/lib" > $out', inputs=[p])  # m through p
    _builder(store).realise([p, i])
    for path in (jd.output_path(), md.output_path()):
        corrupt_object(store, path)
        corrupt_file(store.real_path(path) / "lib")
    assert set(store.verify(repair=True).quarantined) == {jd.output_path(), md.output_path()}
    _builder(store, []).realise([r])
    assert store.real_path(rd.output_path()).read_text() == "j-data\nm\n"


def test_building_a_valid_path_with_a_hole_makes_it_whole(store, graph):
    (lib, libd), (app, appd), _ = _chain(graph)
    _builder(store).realise([app])
    _quarantine(store, libd.output_path())
    _builder(store, []).realise([app])
    assert store.is_valid(libd.output_path())
    assert store.closure_with_holes([appd.output_path()]) == ([libd.output_path(), appd.output_path()], {})
    assert (store.real_path(libd.output_path()) / "lib").read_text() == "lib-data\n"


def test_what_is_made_again_is_not_checked_with_the_root(store, graph):
    """``--check`` compares the roots, not what their closure needed again: lib differs
    on every build, and only app was asked for (a nested realise checked lib too)."""
    lib, libd = graph.drv("lib-rand", "mkdir $out; head -c 16 /dev/urandom > $out/lib")
    app, appd = graph.drv("app-rand", "mkdir $out; echo $in0 > $out/ref", inputs=[lib])
    _builder(store).realise([app])
    _quarantine(store, libd.output_path())
    _builder(store, [], check=True).realise([app])
    assert store.is_valid(libd.output_path())


def test_checking_a_valid_root_whose_input_lost_a_dependency_makes_it_again(store, graph):
    """``--check`` rebuilds a root that is valid: the closures of its inputs must be whole
    for that rebuild too (the plan never looked below a valid root, and the check's
    sandbox refused the incomplete closure)."""
    (lib, libd), _, (use, used) = _chain(graph)
    _builder(store).realise([use])
    _quarantine(store, libd.output_path())
    _builder(store, [], check=True).realise([use])
    assert store.is_valid(libd.output_path())


def test_a_hole_no_derivation_of_the_build_makes_is_an_error_naming_it(store, graph):
    # lib's output names busybox (a source added to the store, made by no derivation)
    lib, libd = graph.drv("lib-bb", 'mkdir $out; echo "$PATH" > $out/lib')
    _builder(store).realise([lib])
    assert store.query(libd.output_path()).references == (graph.bb,)
    _quarantine(store, graph.bb, "bin/busybox")
    with pytest.raises(StoreError) as e:
        _builder(store, []).realise([lib])
    text = str(e.value)
    assert f"{graph.bb} (referenced by {libd.output_path()})" in text, text
    assert "no derivation of this build makes it" in text, text
