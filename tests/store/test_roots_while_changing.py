"""Reading the GC roots (GC, ``kiln store roots``, ``why``) while another process adds and
removes roots: a root link gone between the directory listing and the walk's step into
it is not an unreadable directory. It made ``kiln store gc`` fail ("cannot read GC
roots ... GC collects nothing while so") 15 times in a 51-minute soak; ``add_root``
renaming its temporary link into place was enough."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

import pytest
from storekit import make_tree

from kiln.store import roots
from kiln.store.localstore import LocalStore

CHURN = """
import sys
from kiln.store.localstore import LocalStore
from kiln.store import roots
s = LocalStore.open(sys.argv[1])
mode, p = sys.argv[2], sys.argv[3]
i = 0
while True:
    i += 1
    name = f"r{i % 40}" if mode == "remove" else f"n{i}"
    s.add_root(name, p)
    if mode == "remove":
        roots.remove_root(s, name)
"""


@pytest.mark.parametrize("mode", ["remove", "add"])
def test_roots_are_read_while_others_change_them(tmp_path: Path, mode: str) -> None:
    s = LocalStore.open(tmp_path / "store")
    try:
        p = s.add_path(make_tree(tmp_path / "t", {"f": "x"}), "t").path
        s.add_root("stays", p)
        churn = subprocess.Popen([sys.executable, "-c", CHURN, str(s.root), mode, p])
        try:
            time.sleep(1)  # (the churn running)
            end, calls = time.monotonic() + 6, 0
            while time.monotonic() < end:
                found = {r.name for r in roots.each_root(s)}  # raised StoreError before
                assert "stays" in found
                calls += 1
            assert churn.poll() is None, "the churn stopped"
        finally:
            churn.kill()
            churn.wait()
        assert calls >= 1
    finally:
        s.close()
