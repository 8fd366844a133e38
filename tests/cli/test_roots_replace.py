"""Root names are one per store, shared by every recipe: a command that replaces a root
that named another path says so on stderr (it replaced it silently, and the path it
named went at the next GC); ``kiln build --root NAME`` chooses the name, ``--no-root``
makes none."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest
from clikit import kiln_at

from kiln.buildglue import Target
from kiln.cmd_build import _parser, _root
from kiln.store.localstore import LocalStore

sys.path.insert(0, str(Path(__file__).parents[1] / "build"))
from buildkit import APPLETS, BUSYBOX, Graph  # noqa: E402

NOTE = "note: root {name} now points to {new} (was {old}, which GC may now delete unless another root keeps it)\n"


def _tree(tmp_path: Path, name: str, text: str) -> Path:
    d = tmp_path / name
    d.mkdir()
    (d / "f").write_text(text)
    return d


def test_store_add_and_add_root_say_when_they_move_a_root(tmp_path: Path) -> None:
    a, b = _tree(tmp_path, "a", "one\n"), _tree(tmp_path, "b", "two\n")
    r = kiln_at(tmp_path, "store", "add", str(a), "--name", "app", "--add-root", "app")
    assert r.returncode == 0 and r.stderr == "", r.stderr
    pa = r.stdout.strip()
    r = kiln_at(tmp_path, "store", "add", str(b), "--name", "app", "--add-root", "app")
    pb = r.stdout.strip()
    assert r.returncode == 0 and r.stderr == NOTE.format(name="app", new=pb, old=pa), r.stderr
    r = kiln_at(tmp_path, "store", "add", str(b), "--name", "app", "--add-root", "app")
    assert r.returncode == 0 and r.stderr == "", r.stderr  # the same path: nothing to say
    r = kiln_at(tmp_path, "store", "add-root", "app", pa)
    assert r.returncode == 0 and r.stderr == NOTE.format(name="app", new=pa, old=pb), r.stderr
    r = kiln_at(tmp_path, "store", "add-root", "app", pa)
    assert r.returncode == 0 and r.stderr == "", r.stderr


def test_build_roots_are_named_by_root_or_not_made(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """``_root`` as ``kiln build`` calls it once the outputs are valid (and ``kiln run -f``
    through it): the attribute's name, ``--root NAME`` (``NAME-<output>`` for another
    output), none with ``--no-root``; a build in another project moving ``app`` says so."""
    with LocalStore.open(tmp_path / "home") as s:
        pa = s.add_path(_tree(tmp_path, "a", "a\n"), name="app").path
        pdev = s.add_path(_tree(tmp_path, "d", "d\n"), name="app-dev").path
        pb = s.add_path(_tree(tmp_path, "b", "b\n"), name="app").path
        gcroots = s.root / "gcroots"
        drv = "/kiln/store/" + "0" * 32 + "-app.drv"  # (not read by _root)
        two = Target("app", drv, {"out": pa, "dev": pdev})
        _root(s, [two], _parser().parse_args(["a.recipe", "app", "--root", "proj-a"]))
        assert sorted(os.listdir(gcroots)) == ["proj-a", "proj-a-dev"]
        assert os.path.realpath(gcroots / "proj-a") == str(s.real_path(pa))
        assert os.path.realpath(gcroots / "proj-a-dev") == str(s.real_path(pdev))
        _root(s, [two], _parser().parse_args(["a.recipe", "app", "--no-root"]))
        assert sorted(os.listdir(gcroots)) == ["proj-a", "proj-a-dev"]
        _root(s, [two], _parser().parse_args(["a.recipe", "app"]))
        assert capsys.readouterr().err == ""
        _root(s, [Target("app", drv, {"out": pb})], _parser().parse_args(["b.recipe", "app"]))
        assert capsys.readouterr().err == NOTE.format(name="app", new=pb, old=pa)
        assert sorted(os.listdir(gcroots)) == ["app", "app-dev", "proj-a", "proj-a-dev"]
        assert os.path.realpath(gcroots / "app") == str(s.real_path(pb))
    with pytest.raises(SystemExit):  # one or the other
        _parser().parse_args(["a.recipe", "app", "--root", "x", "--no-root"])


@pytest.mark.bwrap
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed")
def test_build_root_and_no_root_end_to_end(tmp_path: Path) -> None:
    """A real (busybox) build: ``--root`` names the root, for one target only (refused
    before anything is built); ``--no-root`` leaves the output to the next GC."""
    home = tmp_path / "home"
    bb = tmp_path / "bb"
    (bb / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, bb / "bin" / "busybox")
    for a in APPLETS:
        os.symlink("busybox", bb / "bin" / a)
    with LocalStore.open(home) as s:
        graph = Graph(s, s.add_path(bb, "busybox-static").path)
        s.add_root("bb", graph.bb)
        one, d1 = graph.drv("app", "echo one > $out")
        two, d2 = graph.drv("app", "echo two > $out")
        out1, out2 = d1.output_path(), d2.output_path()
    r = kiln_at(tmp_path, "build", one, two, "--root", "mine")
    assert r.returncode == 2 and "--root mine names the root of one attribute, not of 2" in r.stderr, r.stderr
    r = kiln_at(tmp_path, "build", one, "--no-root")
    assert r.returncode == 0 and r.stdout.split() == [out1], r.stderr
    assert sorted(os.listdir(home / "gcroots")) == ["bb"]
    r = kiln_at(tmp_path, "build", two, "--root", "mine")
    assert r.returncode == 0 and r.stdout.split() == [out2], r.stderr
    assert sorted(os.listdir(home / "gcroots")) == ["bb", "mine"]
    r = kiln_at(tmp_path, "store", "gc")
    assert r.returncode == 0 and out1 in r.stdout and out2 not in r.stdout, r.stdout
