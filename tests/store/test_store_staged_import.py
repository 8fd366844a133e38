"""A build's placed, not yet registered output may be replaced by another process that
imports the same path (substitution, ``kiln copy``: they do not take the build's output
lock). The build then accepts that registration instead of failing."""

from __future__ import annotations

import hashlib
import subprocess
import sys
from pathlib import Path

from storekit import make_tree

from kiln.store import nixbase32
from kiln.store.localstore import LocalStore
from kiln.store.stagedbuild import archive, commit, place

IMPORT = """
import sys
from pathlib import Path
from kiln.store.localstore import LocalStore
with LocalStore.open(Path(sys.argv[1])) as reg, LocalStore.open(Path(sys.argv[2])) as dst:
    info = reg.query(sys.argv[3])
    with open(reg.object_path(info.path), "rb") as f:
        dst.import_objects([(info, f)])
"""


def _out(name: str) -> str:
    return f"/kiln/store/{nixbase32.encode(hashlib.sha256(name.encode()).digest()[:20])}-{name}"


def _built(tmp_path: Path, name: str, text: str) -> Path:
    work = tmp_path / f"build-{name}"
    work.mkdir()
    return make_tree(work / "out", {"f": text})


def test_an_output_imported_by_another_process_meanwhile_is_accepted(store, tmp_path):
    path, mine = _out("app"), _out("lib")
    with LocalStore.open(tmp_path / "registry") as reg:  # the same path, built elsewhere
        theirs = reg.register_built(path, _built(tmp_path, "ci", "built by CI\n"), [], None)
    placed = place(store, path, _built(tmp_path, "app", "built here\n"), [], None, tmp_path / "app.obj")
    other = place(store, mine, _built(tmp_path, "lib", "lib\n"), [], None, tmp_path / "lib.obj")
    r = subprocess.run(
        [sys.executable, "-c", IMPORT, str(tmp_path / "registry"), str(store.root), path],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    real = store.real_path(path)
    assert (real / "f").read_text() == "built by CI\n"  # the placed tree was replaced
    staged = [archive(store, placed), archive(store, other)]
    assert staged[0].taken and not staged[1].taken
    app, lib = commit(store, staged)
    assert app.nar_hash == theirs.nar_hash and app.file_hash == theirs.file_hash
    assert store.query(path).nar_hash == theirs.nar_hash and store.is_valid(mine)
    assert lib.path == mine and store.verify().ok
