"""A build's placed, not yet registered output and an import of the same path by another
process (substitution, ``kiln copy``; they do not take the build's output lock).

The placed tree may already be mounted in a later build's sandbox, so an importer in
another process waits until the build has registered it (and then keeps the build's
registration) instead of replacing it; a placed tree whose process is gone is a crashed
writer's leftover and is replaced. Within one process an import still replaces it, and
the build then accepts that registration instead of failing."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
from pathlib import Path

import pytest
from clikit import line_within
from storekit import make_tree

from kiln.store import nixbase32
from kiln.store.localstore import LocalStore
from kiln.store.stagedbuild import archive, commit, place

IMPORT = """
import sys
from pathlib import Path
from kiln.store.localstore import LocalStore
from kiln.store.locks import PlacerWait
PlacerWait.NOTICE_S = 0.2
with LocalStore.open(Path(sys.argv[1])) as reg, LocalStore.open(Path(sys.argv[2])) as dst:
    info = reg.query(sys.argv[3])
    with open(reg.object_path(info.path), "rb") as f:
        if sys.argv[4] == "batch":
            dst.import_objects([(info, f)])
        else:
            dst.import_object(info, f)
"""

# places an output (as a build does) and dies before registering it
PLACE_AND_DIE = """
import os, sys
from pathlib import Path
from kiln.store.localstore import LocalStore
from kiln.store.stagedbuild import place
store = LocalStore.open(Path(sys.argv[1]))
place(store, sys.argv[2], Path(sys.argv[3]), [], None, Path(sys.argv[4]))
os._exit(0)
"""


def _out(name: str) -> str:
    return f"/kiln/store/{nixbase32.encode(hashlib.sha256(name.encode()).digest()[:20])}-{name}"


def _built(tmp_path: Path, name: str, text: str) -> Path:
    work = tmp_path / f"build-{name}"
    work.mkdir()
    return make_tree(work / "out", {"f": text})


def _identity(p: Path) -> tuple[int, int]:
    st = os.lstat(p)
    return st.st_dev, st.st_ino


def _registry(tmp_path: Path, path: str):
    """A second store holding ``path`` with other contents (built elsewhere)."""
    with LocalStore.open(tmp_path / "registry") as reg:
        return reg.register_built(path, _built(tmp_path, "ci", "built by CI\n"), [], None)


def _import(tmp_path: Path, store: LocalStore, path: str, how: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-c", IMPORT, str(tmp_path / "registry"), str(store.root), path, how],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


@pytest.mark.parametrize("how", ["batch", "single"])
def test_an_import_by_another_process_waits_for_the_build_to_register_its_tree(store, tmp_path, how):
    path = _out("app")
    theirs = _registry(tmp_path, path)
    placed = place(store, path, _built(tmp_path, "app", "built here\n"), [], None, tmp_path / "app.obj")
    real = store.real_path(path)
    before = _identity(real)
    proc = _import(tmp_path, store, path, how)
    try:
        # the importer sees the placed tree and waits (it says so after NOTICE_S, 2 s)
        said = line_within(proc.stderr, 60)
        assert f"waiting for process {os.getpid()}, which has built {path}" in said, said
        assert proc.poll() is None, proc.communicate()
        assert _identity(real) == before and (real / "f").read_text() == "built here\n"
        assert not store.is_valid(path)
        (mine,) = commit(store, [archive(store, placed)])
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 0, err
    # the build's registration stands, its tree was never touched
    assert mine.nar_hash != theirs.nar_hash
    assert store.query(path).nar_hash == mine.nar_hash
    assert _identity(real) == before and (real / "f").read_text() == "built here\n"
    assert store.verify().ok


def test_a_tree_placed_by_a_process_that_died_is_replaced_by_an_import(store, tmp_path):
    path = _out("app")
    theirs = _registry(tmp_path, path)
    r = subprocess.run(
        [
            sys.executable,
            "-c",
            PLACE_AND_DIE,
            str(store.root),
            path,
            str(_built(tmp_path, "app", "built here\n")),
            str(tmp_path / "app.obj"),
        ],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert (store.real_path(path) / "f").read_text() == "built here\n" and not store.is_valid(path)
    proc = _import(tmp_path, store, path, "batch")
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert "waiting" not in err
    assert store.query(path).nar_hash == theirs.nar_hash
    assert (store.real_path(path) / "f").read_text() == "built by CI\n"
    assert store.verify().ok


def test_an_import_in_the_same_process_replaces_the_placed_tree_and_the_build_accepts_it(store, tmp_path):
    path, mine = _out("app"), _out("lib")
    theirs = _registry(tmp_path, path)
    placed = place(store, path, _built(tmp_path, "app", "built here\n"), [], None, tmp_path / "app.obj")
    other = place(store, mine, _built(tmp_path, "lib", "lib\n"), [], None, tmp_path / "lib.obj")
    registry = tmp_path / "registry"
    with (
        LocalStore.open(registry) as reg,
        LocalStore.open(store.root) as dst,
        open(reg.object_path(path), "rb") as f,
    ):
        dst.import_objects([(reg.query(path), f)])
    real = store.real_path(path)
    assert (real / "f").read_text() == "built by CI\n"  # the placed tree was replaced
    staged = [archive(store, placed), archive(store, other)]
    assert staged[0].taken and not staged[1].taken
    app, lib = commit(store, staged)
    assert app.nar_hash == theirs.nar_hash and app.file_hash == theirs.file_hash
    assert store.query(path).nar_hash == theirs.nar_hash and store.is_valid(mine)
    assert lib.path == mine and store.verify().ok
