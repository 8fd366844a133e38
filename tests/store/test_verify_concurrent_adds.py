"""``kiln store verify`` beside writers: it read the valid paths at its start but scanned
the store's directories at its end, so every path added meanwhile was reported as an
unregistered tree ("N unregistered tree(s) ... (removed by 'kiln store gc')") though
valid. Now a candidate is judged against the database after the scan, once the
registrations under way have finished (``store.verifystray``); a real stray is still
reported."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import threading
import time

from storekit import make_tree

from kiln.store import db
from kiln.store.localstore import LocalStore
from kiln.store.locks import FileLock


def plant_strays(s: LocalStore) -> tuple[str, str]:
    """An unregistered tree and an unused object, as a crashed writer leaves them."""
    base = "0" * 32 + "-stray"
    (s.real_store / base).mkdir()
    obj = s.objects / "ab" / ("ab" + "0" * 62 + ".nar.zst")
    obj.write_bytes(b"not a registered object")
    return f"{s.store_dir}/{base}", str(obj)


def test_a_path_added_while_verify_runs_is_not_stray(tmp_path):
    s = LocalStore.open(tmp_path / "store")
    other = LocalStore.open(tmp_path / "store")  # (a writer of its own: connection, locks)
    try:
        for i in range(3):
            s.add_path(make_tree(tmp_path / f"p{i}", {"f": f"{i}\n"}), f"p{i}")
        tree, obj = plant_strays(s)
        added = []

        def progress(done: int, total: int) -> None:
            if not added:  # (verify holds the GC lock shared: so do writers)
                added.append(other.add_path(make_tree(tmp_path / "late", {"f": "late\n"}), "late").path)

        r = s.verify(progress=progress)
        assert added and s.is_valid(added[0])
        assert r.stray_trees == (tree,) and r.stray_objects == (obj,)
    finally:
        other.close()
        s.close()


def test_a_registration_under_way_at_the_scan_is_waited_for(tmp_path):
    """A registrant holds the path's stripe lock from placing its tree and object until
    its row is committed (``registration`` steps 3-7): here one that takes a while."""
    s = LocalStore.open(tmp_path / "store")
    try:
        s.add_path(make_tree(tmp_path / "p", {"f": "p\n"}), "p")
        with LocalStore.open(tmp_path / "scratch") as scratch:  # (the same content: the same path)
            info = scratch.add_path(make_tree(tmp_path / "slow", {"f": "slow\n"}), "slow")
            src_tree, src_obj = scratch.real_path(info.path), scratch.object_path(info.path)
            sp = s.parse_path(info.path)
            placed, done = threading.Event(), threading.Event()

            def registrant() -> None:
                conn = db.connect(s.root / "db.sqlite")
                try:
                    with FileLock(s._path_lock(sp)):
                        shutil.copy2(src_obj, s.objects / src_obj.parent.name / src_obj.name)
                        shutil.copytree(src_tree, s.real_path(info.path), symlinks=True)
                        placed.set()
                        time.sleep(1.0)  # (archiving, fsyncs: the row comes later)
                        db.insert(conn, info, sp.hash_part)
                finally:
                    conn.close()
                    done.set()

            t = threading.Thread(target=registrant)
            t.start()
            try:
                assert placed.wait(30)
                r = s.verify()
            finally:
                t.join()
        assert done.is_set() and s.is_valid(info.path)
        assert r.stray_trees == () and r.stray_objects == (), (r.stray_trees, r.stray_objects)
    finally:
        s.close()


_ADDER = """
import sys
from pathlib import Path
from kiln.store.localstore import LocalStore
root, src, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
for i in range(n):
    d = src / f"d{i}"
    d.mkdir()
    (d / "f").write_text(f"added {i}\\n")
    with LocalStore.open(root) as s:  # (a process per add in a script: a store object per add here)
        s.add_path(d, f"z{i}")
"""


def test_repeated_verifies_beside_real_adds_report_only_the_real_strays(tmp_path):
    root = tmp_path / "store"
    with LocalStore.open(root) as s:
        for i in range(40):
            s.add_path(make_tree(tmp_path / "pre" / f"p{i}", {"f": os.urandom(4096)}), f"p{i}")
        tree, obj = plant_strays(s)
    (tmp_path / "new").mkdir()
    adder = subprocess.Popen([sys.executable, "-c", _ADDER, str(root), str(tmp_path / "new"), "60"])
    runs = []
    try:
        while adder.poll() is None or len(runs) < 3:
            r = subprocess.run(
                [sys.executable, "-m", "kiln", "store", "verify", "--json"],
                capture_output=True,
                text=True,
                timeout=300,
                env={**os.environ, "KILN_HOME": str(root)},
            )
            assert r.returncode == 0, r.stderr
            runs.append(json.loads(r.stdout))
    finally:
        adder.wait(timeout=300)
    assert adder.returncode == 0
    wrong = [(v["checked"], v["strayTrees"], v["strayObjects"]) for v in runs]
    assert all(v["strayTrees"] == [tree] and v["strayObjects"] == [obj] for v in runs), wrong
    assert len({v["checked"] for v in runs}) > 1  # (paths were being added while verify ran)


_PLACER = """
import sys
from pathlib import Path
from kiln.store.localstore import LocalStore
s = LocalStore.open(Path(sys.argv[1]))
s.keep([sys.argv[2]])  # (a build names the outputs it placed in its temp roots)
print("held", flush=True)
sys.stdin.read()
"""


def test_a_tree_a_live_build_placed_is_not_stray_until_its_builder_is_gone(tmp_path):
    """A build places its outputs, then archives and registers them with no stripe lock
    held (``stagedbuild``); its temp roots name them, and GC, which waits for it, keeps them."""
    with LocalStore.open(tmp_path / "store") as s:
        tree = s.store_dir + "/" + "1" * 32 + "-building"
        (s.real_store / tree.rsplit("/", 1)[1]).mkdir()
        builder = subprocess.Popen(
            [sys.executable, "-c", _PLACER, str(s.root), tree], stdin=subprocess.PIPE, stdout=subprocess.PIPE
        )
        try:
            assert builder.stdout.readline() == b"held\n"
            assert s.verify().stray_trees == ()
        finally:
            builder.communicate(b"", timeout=60)
        assert s.verify().stray_trees == (tree,)
