"""A root NAME names its path for every command after the store is moved (a new
``KILN_HOME``), whether the root is one kiln writes now (a relative link), one an earlier
kiln wrote (the absolute physical path) or a regular file holding a path: they said
``'/OLD/kiln/store/...' is not a path in the store``, while GC still kept the path. A
root that names nothing valid is an error naming the root. ``kiln store add-root`` prints
what the link holds."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from clikit import kiln_at
from storekit import make_tree

from kiln.store.localstore import LocalStore


def _kiln(home: Path, *args: str):  # noqa: ANN202
    return kiln_at(home.parent, *args, env={"KILN_HOME": str(home)})


def _moved_store(tmp_path: Path) -> tuple[Path, str]:
    """A store with the roots ``app`` (``store add --add-root``), ``abs`` (an absolute
    physical link, as earlier kilns made) and ``file`` (a file holding the physical
    path), all naming one path; then renamed to a new directory. Returns (new home, path)."""
    old = tmp_path / "old"
    pkg = make_tree(tmp_path / "pkg", {"bin/pkg": "x:#!/bin/sh\necho hi from pkg\n"})
    r = _kiln(old, "store", "add", str(pkg), "--add-root", "app")
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    with LocalStore.open(old) as s:
        real = s.real_path(path)
    os.symlink(real, old / "gcroots" / "abs")
    (old / "gcroots" / "file").write_text(f"{real}\n")
    new = tmp_path / "new"
    os.rename(old, new)
    return new, path


@pytest.mark.parametrize("name", ["app", "abs", "file"])
def test_every_command_takes_a_root_name_after_the_store_moved(tmp_path: Path, name: str) -> None:
    home, path = _moved_store(tmp_path)
    r = _kiln(home, "store", "info", name)
    assert r.returncode == 0 and f"path:          {path}" in r.stdout, r.stderr
    r = _kiln(home, "verify", name)
    assert f"verifying {path}" in r.stdout, (r.stdout, r.stderr)
    r = _kiln(home, "sbom", name)
    assert r.returncode == 0 and "CycloneDX" in r.stdout, r.stderr
    r = _kiln(home, "log", name)  # (found: then it says there is no log of a source)
    assert r.returncode == 1 and f"{path} was not built here" in r.stderr, r.stderr
    r = _kiln(home, "push", "--to", f"file://{tmp_path / 'reg'}", name)
    assert r.returncode == 0 and "pushed 1 of 1 paths" in r.stdout, r.stderr


@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_kiln_run_takes_a_root_name_after_the_store_moved(tmp_path: Path) -> None:
    home, _ = _moved_store(tmp_path)
    for name in ("app", "abs", "file"):
        r = _kiln(home, "run", name)
        assert r.returncode == 0 and r.stdout == "hi from pkg\n", (name, r.stderr)


def test_a_root_kiln_makes_is_relative_and_survives_the_move(tmp_path: Path) -> None:
    """``add_root`` writes ``../kiln/store/<base>``: after the move it still resolves on
    the host (``ls gcroots/app/``), and ``add-root`` prints what the link holds."""
    home, path = _moved_store(tmp_path)
    base = path.rsplit("/", 1)[1]
    assert os.readlink(home / "gcroots" / "app") == f"../kiln/store/{base}"
    assert (home / "gcroots" / "app" / "bin" / "pkg").is_file()
    r = _kiln(home, "store", "add-root", "again", path)
    assert r.returncode == 0, r.stderr
    link, rest = r.stdout.strip().split(" -> ")
    target, named = rest.split(" ", 1)
    assert link == str(home / "gcroots" / "again") and os.readlink(link) == target
    assert named == f"({path})"


def test_gc_keeps_a_file_root_holding_the_old_physical_path(tmp_path: Path) -> None:
    """GC read a link root through the store dir's components, but a file root only as
    written: after the move it protected nothing, and GC deleted its path."""
    home, path = _moved_store(tmp_path)
    os.unlink(home / "gcroots" / "app")
    os.unlink(home / "gcroots" / "abs")
    r = _kiln(home, "store", "gc")
    assert r.returncode == 0 and "deleted 0 paths" in r.stderr, r.stderr
    with LocalStore.open(home) as s:
        assert s.is_valid(path)


def test_a_root_naming_nothing_valid_is_an_error_naming_the_root(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert _kiln(home, "store", "init").returncode == 0
    os.symlink("/nowhere/at/all", home / "gcroots" / "bad")
    gone = "/kiln/store/" + "0" * 31 + "a-gone"
    os.symlink(f"../kiln/store/{gone.rsplit('/', 1)[1]}", home / "gcroots" / "gone")
    for cmd in (["store", "info"], ["log"], ["verify"], ["sbom"], ["run"]):
        r = _kiln(home, *cmd, "bad")
        said = r.stdout + r.stderr  # (kiln verify reports it on stdout: exit status 3)
        assert r.returncode != 0 and "GC root 'bad'" in said and "names no path" in said, (
            cmd,
            r.stderr,
        )
        r = _kiln(home, *cmd, "gone")
        assert (
            r.returncode != 0
            and f"GC root 'gone' ({home / 'gcroots' / 'gone'}) names {gone}" in r.stdout + r.stderr
        ), (
            cmd,
            r.stderr,
        )


def test_a_root_made_through_a_symlinked_home_names_its_path_through_the_real_one(tmp_path: Path) -> None:
    """An earlier kiln's root written while ``KILN_HOME`` was a symlink holds that
    spelling; reached through the real directory (or another link) it is found too."""
    real = tmp_path / "real"
    pkg = make_tree(tmp_path / "pkg", {"f": "x\n"})
    r = _kiln(real, "store", "add", str(pkg))
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    os.symlink(real, tmp_path / "link")
    os.symlink(tmp_path / "link" / path.lstrip("/"), real / "gcroots" / "old")
    os.rename(tmp_path / "link", tmp_path / "gone-link")  # (the spelling is gone)
    r = _kiln(real, "store", "info", "old")
    assert r.returncode == 0 and f"path:          {path}" in r.stdout, r.stderr
