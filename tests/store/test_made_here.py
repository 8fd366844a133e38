"""Every registration records whether the path was made in this store or imported (Nix's
``ultimate``, ``store/madehere.py``), ``kiln store info`` shows it, and a database made
before the column gets it on its next open, its rows unknown (treated as imported).

Real stores; the substitution case is a real ``kiln build`` against a ``file://``
registry filled by a real sandboxed build in another store.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
from storekit import make_tree
from test_read_only_store import read_only_view

from kiln.store import db
from kiln.store.hashes import Hash
from kiln.store.localstore import LocalStore
from kiln.store.madehere import made_here
from kiln.store.paths import make_output_path

sys.path.insert(0, str(Path(__file__).parents[1] / "build"))
from buildkit import Graph, add_busybox  # noqa: E402


def kiln(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILN_HOME": str(home)}
    env.pop("KILN_SIGN_KEY", None)
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], env=env, capture_output=True, text=True, timeout=120
    )


def info(home: Path, path: str) -> dict:
    r = kiln(home, "store", "info", "--json", path)
    assert r.returncode == 0, r.stderr
    return json.loads(r.stdout)


def test_every_way_into_the_store_says_where_the_path_came_from(tmp_path: Path) -> None:
    src = LocalStore.open(tmp_path / "src")
    dst = LocalStore.open(tmp_path / "dst")
    try:
        # made here: added from local content, derivations written here, build outputs
        added = dst.add_path(make_tree(tmp_path / "a", {"f": "a\n"}), "a").path
        text = dst.add_text("t.drv", b"Derive()", []).path
        (many,) = dst.add_texts([("u.drv", b"Derive(1)", [])])
        out = str(make_output_path(Hash.sha256_of(b"some drv"), "out", "built", dst.store_dir))
        tree = make_tree(tmp_path / "built", {"x": "built\n"})
        built = dst.register_built(out, tree, [], None).path
        for p in (added, text, many.path, built):
            assert made_here(dst.conn, p) is True, p
        # imported: from a NAR, an object, a batch of objects
        theirs = [src.add_path(make_tree(tmp_path / f"s{i}", {"f": f"{i}\n"}), f"s{i}") for i in range(4)]
        dst.import_nar(theirs[0], src.nar(theirs[0].path))
        with open(src.object_path(theirs[1].path), "rb") as f:
            dst.import_object(theirs[1], f)
        with (
            open(src.object_path(theirs[2].path), "rb") as f2,
            open(src.object_path(theirs[3].path), "rb") as f3,
        ):
            dst.import_objects([(theirs[2], f2), (theirs[3], f3)])
        for i in theirs:
            assert made_here(dst.conn, i.path) is False, i.path
        # the same content added here afterwards: already valid, it stays imported
        again = dst.add_path(make_tree(tmp_path / "again", {"f": "0\n"}), "s0")
        assert again.path == theirs[0].path and made_here(dst.conn, again.path) is False
    finally:
        src.close()
        dst.close()
    home = tmp_path / "dst"
    assert info(home, built)["ultimate"] is True and info(home, theirs[0].path)["ultimate"] is False
    text_out = kiln(home, "store", "info", built).stdout
    assert "made here:     yes (built or added in this store)" in text_out
    assert "made here:     no (imported" in kiln(home, "store", "info", theirs[1].path).stdout


@pytest.mark.bwrap
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
@pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed")
def test_a_substituted_output_is_imported_a_built_one_made_here(tmp_path: Path) -> None:
    def graph(home: Path, work: str) -> tuple[str, str]:
        with LocalStore.open(home) as s:
            drv, d = Graph(s, add_busybox(s, tmp_path / work)).drv("out", "mkdir $out; echo hi > $out/f")
            return drv, d.output_path("out")

    builder = tmp_path / "builder"
    drv, out = graph(builder, "w1")
    assert kiln(builder, "build", drv, "--no-root").returncode == 0
    assert info(builder, out)["ultimate"] is True
    reg = f"file://{tmp_path / 'reg'}"
    assert kiln(builder, "copy", "--from", "store", "--to", reg, out).returncode == 0
    pub = kiln(builder, "key", "public", str(builder / "keys" / "default.sec")).stdout.strip()
    user = tmp_path / "user"
    assert graph(user, "w2") == (drv, out)
    r = kiln(user, "build", drv, "--no-root", "--substituter", reg, "--trusted-key", pub)
    assert r.returncode == 0 and "substituted 1 path" in r.stderr, r.stderr
    assert info(user, out)["ultimate"] is False
    assert info(user, drv)["ultimate"] is True  # the derivation was written here


def _as_made_before_the_column(root: Path) -> None:
    """Make the store's database what a kiln before ``paths.ultimate`` left."""
    raw = sqlite3.connect(root / "db.sqlite")
    raw.execute("ALTER TABLE paths DROP COLUMN ultimate")
    raw.commit()
    raw.close()


def test_an_older_database_gets_the_column_its_rows_unknown(tmp_path: Path) -> None:
    home = tmp_path / "home"
    assert kiln(home, "key", "generate", "k-1").returncode == 0
    old = kiln(home, "store", "add", str(make_tree(tmp_path / "old", {"f": "old\n"}))).stdout.strip()
    assert kiln(home, "store", "sign", "--key", str(home / "keys" / "k-1.sec"), old).returncode == 0
    _as_made_before_the_column(home)

    doc = info(home, old)  # the open adds the column back; the old row stays unknown
    assert doc["ultimate"] is None
    assert (
        "made here:     unknown (registered before kiln recorded" in kiln(home, "store", "info", old).stdout
    )
    new = kiln(home, "store", "add", str(make_tree(tmp_path / "new", {"f": "new\n"}))).stdout.strip()
    assert kiln(home, "store", "sign", "--key", str(home / "keys" / "k-1.sec"), new).returncode == 0
    assert info(home, new)["ultimate"] is True

    # unknown counts as imported: --resign leaves it, and says so
    r = kiln(home, "key", "rotate", "k-1", "--resign")
    assert r.returncode == 0, r.stderr
    assert {s.partition(":")[0] for s in info(home, new)["signatures"]} == {"k-1", "k-2"}
    assert {s.partition(":")[0] for s in info(home, old)["signatures"]} == {"k-1"}
    assert "1 of unknown origin (registered before kiln recorded it)" in r.stderr
    assert f"  unknown   {old}\n" in r.stderr


def test_an_older_database_on_a_read_only_file_system_is_read_as_unknown(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (bind mounts)")
    home = tmp_path / "rw"
    with LocalStore.open(home) as s:
        p = s.add_path(make_tree(tmp_path / "t", {"f": "t\n"}), "t").path
    _as_made_before_the_column(home)
    with read_only_view(home, tmp_path / "ro") as ro:
        conn = db.connect(ro / "db.sqlite")
        try:
            assert conn.read_only is not None and made_here(conn, p) is None
            assert db.query(conn, p) is not None
        finally:
            conn.close()
        r = kiln(ro, "store", "info", "--json", p)
        assert r.returncode == 0 and json.loads(r.stdout)["ultimate"] is None, r.stderr


def test_a_connection_that_cannot_add_the_column_registers_rows_as_unknown(tmp_path: Path) -> None:
    """Busy for longer than the upgrade waits (or a full disk): the open goes on without
    the column, and what it registers reads as unknown once the column is there."""
    home = tmp_path / "home"
    LocalStore.open(home).close()
    _as_made_before_the_column(home)
    blocker = sqlite3.connect(home / "db.sqlite", isolation_level=None)
    blocker.execute("BEGIN IMMEDIATE")  # holds the write lock: the upgrade gives up after 1 s
    try:
        s = LocalStore.open(home)
    finally:
        blocker.execute("ROLLBACK")
        blocker.close()
    try:
        assert s.conn.ultimate is False
        p = s.add_path(make_tree(tmp_path / "t", {"f": "t\n"}), "t").path
    finally:
        s.close()
    with LocalStore.open(home) as s:
        assert s.conn.ultimate is True and made_here(s.conn, p) is None
