"""``kiln path``/``eval``/``show-derivation``/``graph`` of a recipe with local ``path``
sources create no store (``evalsources.Sources``).

Before, such a source was added to the store, which was created for it: ``KILN_HOME``
naming a directory that did not exist came out of ``kiln path`` as a new store. With no
store, the path a source would get is computed (the NAR hash of the files the store
would keep) without writing anything, and it is the path adding it gives; a store that
exists still gets the source, and ``kiln eval --write`` creates one (the derivations it
writes name the source)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

RECIPE = 'package p {\n  version = "1.0"\n  src = path "./src"\n  build = "cp -r ${src} $out"\n}\n'


def _project(tmp_path: Path) -> Path:
    proj = tmp_path / "proj"
    (proj / "src" / "sub").mkdir(parents=True)
    (proj / "src" / "a.txt").write_text("a\n")
    (proj / "src" / "sub" / "tool").write_text("#!/bin/sh\n")
    (proj / "src" / "sub" / "tool").chmod(0o755)
    (proj / "src" / "skipped.o").write_text("left out\n")
    (proj / "src" / ".kilnignore").write_text("*.o\n")
    (proj / "src" / ".git").mkdir()
    (proj / "src" / ".git" / "HEAD").write_text("ref: x\n")
    (proj / "r.recipe").write_text(RECIPE)
    return proj


def _kiln(proj: Path, home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "XDG_DATA_HOME"}
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        cwd=proj,
        env={**env, "KILN_HOME": str(home)},
        capture_output=True,
        text=True,
        timeout=120,
    )


def test_evaluating_path_sources_creates_no_store(tmp_path: Path):
    proj = _project(tmp_path)
    home = tmp_path / "no" / "store"
    path = _kiln(proj, home, "path", "r.recipe", "p")
    assert path.returncode == 0 and path.stdout.startswith("/kiln/store/"), path.stderr
    for args in (["eval", "r.recipe"], ["show-derivation", "r.recipe", "p"], ["graph", "r.recipe", "p"]):
        r = _kiln(proj, home, *args)
        assert r.returncode == 0, (args, r.stderr)
        assert path.stdout.strip() in r.stdout, (args, r.stdout)
    assert not (tmp_path / "no").exists()
    # the source's path is the one adding it gives: same output path with a store
    assert _kiln(proj, home, "store", "init").returncode == 0
    again = _kiln(proj, home, "path", "r.recipe", "p")
    assert again.returncode == 0 and again.stdout == path.stdout, again.stderr
    sources = [p.name for p in (home / "kiln" / "store").iterdir() if p.name.endswith("-src")]
    assert len(sources) == 1  # (added, now that there is a store)
    assert sorted(os.listdir(home / "kiln" / "store" / sources[0])) == [".kilnignore", "a.txt", "sub"]


def test_eval_write_creates_the_store_it_writes_into(tmp_path: Path):
    proj = _project(tmp_path)
    home = tmp_path / "home"
    r = _kiln(proj, home, "eval", "--write", "r.recipe", "p")
    assert r.returncode == 0, r.stderr
    drv = r.stdout.split()[1]
    assert (home / drv.lstrip("/")).is_file()
    check = _kiln(proj, home, "store", "verify")
    assert check.returncode == 0, check.stderr


def test_a_key_directory_is_refused_with_no_store_too(tmp_path: Path):
    """The key check ``kiln build`` makes is made without a store as well: ``kiln key
    generate`` makes ``$KILN_HOME/keys`` where there is no store yet."""
    proj = tmp_path / "proj"
    proj.mkdir()
    home = proj / "home"
    (home / "keys").mkdir(parents=True)
    (home / "keys" / "default.sec").write_text("secret\n")
    (proj / "r.recipe").write_text('package p {\n  src = path "./home/keys"\n  build = "${src}"\n}\n')
    r = _kiln(proj, home, "path", "r.recipe", "p")
    assert r.returncode == 1 and "a recipe may not take it" in r.stderr, r.stderr
    assert sorted(os.listdir(home)) == ["keys"]


def test_paths_for_another_store_dir_than_the_stores(tmp_path: Path):
    """``--store-dir`` naming another store dir than an existing store's: the paths are
    computed as with no store (they were refused for a recipe with a ``path`` source,
    which the store could not take, while one without printed its paths), and nothing is
    added to the store; ``eval --write`` still refuses (it writes into the store)."""
    proj = _project(tmp_path)
    none, home = tmp_path / "none", tmp_path / "home"
    assert _kiln(proj, home, "store", "init").returncode == 0
    want = _kiln(proj, none, "path", "r.recipe", "p", "--store-dir", "/other/store")
    assert want.returncode == 0 and want.stdout.startswith("/other/store/"), want.stderr
    for _ in range(2):  # (a second run: no cache entry of the first stands in)
        got = _kiln(proj, home, "path", "r.recipe", "p", "--store-dir", "/other/store")
        assert (got.returncode, got.stdout) == (0, want.stdout), got.stderr
    assert not [p for p in home.rglob("*-src") if p.is_dir()]  # nothing added
    own = _kiln(proj, home, "path", "r.recipe", "p")
    assert own.returncode == 0 and own.stdout.startswith("/kiln/store/"), own.stderr
    w = _kiln(proj, home, "eval", "--write", "r.recipe", "--store-dir", "/other/store")
    assert w.returncode == 1 and "/kiln/store" in w.stderr and "/other/store" in w.stderr, w.stderr
