"""A repair killed at its worst moment (just after the new tree took the path's place)
leaves the valid path sealed and canonical; the old tree is a stray GC removes."""

from __future__ import annotations

import os
import subprocess
import sys

from storekit import make_tree

from kiln.store.localstore import LocalStore

_KILLED_REPAIR = """
import os, sys
from kiln.store import repair
from kiln.store.localstore import LocalStore
real = repair.exchange
def exchange_then_die(a, b):
    real(a, b)
    os.kill(os.getpid(), 9)
repair.exchange = exchange_then_die
LocalStore.open(sys.argv[1]).verify(repair=True)
"""


def _tamper(root, tmp_path) -> str:
    """A store at ``root`` with one path whose file was changed: verify repairs it from
    its object. Returns the path."""
    with LocalStore.open(root) as s:
        p = s.add_path(make_tree(tmp_path / "src", {"f": "original\n", "d/g": "g\n"})).path
        real = s.real_path(p)
        os.chmod(real, 0o755)
        os.chmod(real / "f", 0o644)
        (real / "f").write_text("tampered\n")
        os.chmod(real / "f", 0o444)
        os.utime(real / "f", (1, 1))
        os.chmod(real, 0o555)
        os.utime(real, (1, 1))
    return p


def test_a_repair_killed_after_the_exchange_leaves_the_path_sealed(tmp_path):
    root = tmp_path / "st"
    p = _tamper(root, tmp_path)
    r = subprocess.run([sys.executable, "-c", _KILLED_REPAIR, str(root)], capture_output=True)
    assert r.returncode == -9, r.stderr
    with LocalStore.open(root) as s:
        assert (s.real_path(p) / "f").read_text() == "original\n"
        v = s.verify()
        assert v.problems == () and len(v.stray_trees) == 1 and "-repair-" in v.stray_trees[0]
        assert len(s.gc().stray_trees) == 1
        assert s.verify().stray_trees == () and s.verify().ok


_INTERRUPTED_REMOVING = """
import os, signal, sys
from kiln.store import repair
from kiln.store.localstore import LocalStore
real, sent = repair.remove_tree, []
def remove_tree(p):
    name = os.path.basename(p)  # (the old tree's, not the scratch dir <pid>-repair-<hash>)
    if "-repair-" in name and not name.startswith(f"{os.getpid()}-") and not sent:
        sent.append(p)
        os.kill(os.getpid(), signal.SIGINT)  # (Python's handler: raised before the removal)
    real(p)
repair.remove_tree = remove_tree
try:
    LocalStore.open(sys.argv[1]).verify(repair=True)
except KeyboardInterrupt:
    sys.exit(130 if sent else 1)
"""


def test_a_repair_interrupted_as_it_removes_the_old_tree_removes_all_of_it(tmp_path):
    """The replaced tree is removed to the end although ^C lands meanwhile
    (``sigshield.finish``), then the interrupt is raised: no stray left in the store dir."""
    root = tmp_path / "st"
    p = _tamper(root, tmp_path)
    r = subprocess.run([sys.executable, "-c", _INTERRUPTED_REMOVING, str(root)], capture_output=True)
    assert r.returncode == 130, r.stderr
    with LocalStore.open(root) as s:
        assert (s.real_path(p) / "f").read_text() == "original\n"
        v = s.verify()
        assert v.problems == () and v.stray_trees == (), v


_KILLED_IN_RESTORE = """
import os, sys
from kiln.store import nar_restore
from kiln.store.localstore import LocalStore
def die(*a):
    os.kill(os.getpid(), 9)
nar_restore._rename_noreplace = die  # the tree is restored; killed before it moves in
LocalStore.open(sys.argv[1]).verify(repair=True)
"""


def test_a_repair_killed_while_restoring_leaves_nothing_gc_cannot_see(tmp_path):
    """The re-materialised tree is built under the store's ``tmp/`` (a writer's dir GC
    removes once its process is gone), not in a hidden directory of the store dir, which
    neither GC nor verify would ever notice."""
    from kiln.store import gc
    from kiln.store.trees import remove_tree

    root = tmp_path / "st"
    with LocalStore.open(root) as s:
        p = s.add_path(make_tree(tmp_path / "src", {"f": "original\n", "d/g": "g\n"})).path
        remove_tree(s.real_path(p))
        store_dir = s.real_store
    r = subprocess.run([sys.executable, "-c", _KILLED_IN_RESTORE, str(root)], capture_output=True)
    assert r.returncode == -9, r.stderr
    assert sorted(e.name for e in os.scandir(store_dir)) == []  # nothing hidden beside the paths
    with LocalStore.open(root) as s:
        assert s.verify(repair=True).ok
        gc.collect(s)
        assert sorted(os.listdir(root / "tmp")) == []
        assert s.verify().problems == ()


_KILLED_AFTER_INVALIDATING = """
import os, sys
from kiln.store import db, repair
from kiln.store.localstore import LocalStore
real = db.delete
def delete_then_die(conn, paths):
    real(conn, paths)
    os.kill(os.getpid(), 9)
repair.db.delete = delete_then_die
LocalStore.open(sys.argv[1]).verify(repair=True)
"""


def test_a_quarantine_killed_after_invalidating_still_says_what_it_invalidated(tmp_path):
    """The path's row is deleted only after ``info.txt`` is durable: a repair killed just
    after the delete leaves a quarantine entry naming the path, not an empty directory
    and a path gone without a word."""
    root = tmp_path / "st"
    with LocalStore.open(root) as s:
        info = s.add_path(make_tree(tmp_path / "src", {"f": "original\n"}))
        real, obj = s.real_path(info.path), s.objects
        os.chmod(real, 0o755)
        os.chmod(real / "f", 0o644)
        (real / "f").write_text("tampered\n")
        for o in obj.rglob("*.nar.zst"):  # the object too: nothing to repair from
            os.chmod(o, 0o644)
            o.write_bytes(b"junk")
    r = subprocess.run([sys.executable, "-c", _KILLED_AFTER_INVALIDATING, str(root)], capture_output=True)
    assert r.returncode == -9, r.stderr
    [q] = list((root / "quarantine").iterdir())
    assert f"path: {info.path}\n" in (q / "info.txt").read_text()
