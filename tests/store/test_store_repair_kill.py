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


def test_a_repair_killed_after_the_exchange_leaves_the_path_sealed(tmp_path):
    root = tmp_path / "st"
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
    r = subprocess.run([sys.executable, "-c", _KILLED_REPAIR, str(root)], capture_output=True)
    assert r.returncode == -9, r.stderr
    with LocalStore.open(root) as s:
        assert (s.real_path(p) / "f").read_text() == "original\n"
        v = s.verify()
        assert v.problems == () and len(v.stray_trees) == 1 and "-repair-" in v.stray_trees[0]
        assert len(s.gc().stray_trees) == 1
        assert s.verify().stray_trees == () and s.verify().ok
