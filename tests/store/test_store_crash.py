"""Crash safety for real: SIGKILL a process adding a big tree at random moments, then
check the store; and two processes registering the same path at once."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import time

from storekit import make_tree

from kiln.store import nar
from kiln.store.localstore import LocalStore

ADD = """
import sys
from pathlib import Path
from kiln.store.localstore import LocalStore
s = LocalStore.open(Path(sys.argv[1]))
print("open", flush=True)
print(s.add_path(Path(sys.argv[2])).path, flush=True)
"""


def _big_tree(tmp_path):
    rng = random.Random(7)
    files = {f"d{i % 7}/f{i}": rng.randbytes(rng.randint(1000, 400_000)) for i in range(120)}
    files["x"] = "x:#!/bin/sh\n"
    return make_tree(tmp_path / "big", files)


def test_kill_9_during_add_leaves_store_consistent(tmp_path):
    src = _big_tree(tmp_path)
    want_hash, _ = nar.hash_path(src)
    root = tmp_path / "store"
    LocalStore.open(root).close()
    # time one full add (after the process has opened the store) to spread the kills over it
    t0 = time.monotonic()
    p = subprocess.Popen([sys.executable, "-c", ADD, str(root), str(src)], stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    t1 = time.monotonic()
    done = p.stdout.readline().strip()
    p.wait()
    full = time.monotonic() - t1
    assert done.startswith("/kiln/store/"), (done, t0)
    s = LocalStore.open(root)
    s.gc()  # start from an empty store each time: the path is not rooted
    s.close()

    rng = random.Random(1)
    outcomes = []
    for i in range(8):
        delay = rng.uniform(0, full * 1.2) if i else 0.0
        p = subprocess.Popen(
            [sys.executable, "-c", ADD, str(root), str(src)], stdout=subprocess.PIPE, text=True
        )
        p.stdout.readline()
        time.sleep(delay)
        p.send_signal(signal.SIGKILL)
        p.wait()
        s = LocalStore.open(root)
        try:
            valid = s.all_paths()
            outcomes.append(bool(valid))
            r = s.verify()
            assert r.ok, r.problems
            for path in valid:  # anything valid is complete and right
                assert s.query(path).nar_hash == want_hash
                assert nar.hash_path(s.real_path(path))[0] == want_hash
            # nothing half-made is visible in the store dir: an unregistered tree can only
            # be a complete one renamed in just before the row was inserted
            for e in os.scandir(s.real_store):
                assert nar.hash_path(e.path)[0] == want_hash, e.name
            s.gc()
            assert os.listdir(s.real_store) == [] and os.listdir(s.tmp) == []
            assert s.verify().ok
        finally:
            s.close()
    print("kill outcomes (path valid?):", outcomes)
    assert outcomes.count(False) >= 1  # some kills landed mid-way (the first at once)


SAME = """
import sys
from pathlib import Path
from kiln.store.localstore import LocalStore
s = LocalStore.open(Path(sys.argv[1]))
sys.stdin.readline()  # start together
print(s.add_path(Path(sys.argv[2])).path, flush=True)
"""


def test_same_path_by_two_processes_registers_once(tmp_path):
    src = _big_tree(tmp_path)
    root = tmp_path / "store"
    LocalStore.open(root).close()
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", SAME, str(root), str(src)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        for _ in range(2)
    ]
    for p in procs:
        p.stdin.write("go\n")
        p.stdin.flush()
    outs = [p.communicate(timeout=60)[0].strip() for p in procs]
    assert outs[0] == outs[1] and outs[0].startswith("/kiln/store/")
    s = LocalStore.open(root)
    try:
        assert s.all_paths() == [outs[0]]
        n = s.conn.execute("SELECT count(*) FROM paths").fetchone()[0]
        assert n == 1
        r = s.verify()
        assert r.ok and r.stray_objects == () and r.stray_trees == ()
        assert os.listdir(s.tmp) == []
    finally:
        s.close()


GC = """
import os, sys
from pathlib import Path
from kiln.store import gc, gcremove
from kiln.store.localstore import LocalStore

where, n = sys.argv[2], int(sys.argv[3])
calls = 0


def dying(real):
    def step(*a, **kw):
        global calls
        calls += 1
        if where.startswith("before") and calls > n:
            os.kill(os.getpid(), 9)
        out = real(*a, **kw)
        if where.startswith("after") and calls > n:
            os.kill(os.getpid(), 9)
        return out

    return step


if where.endswith("delete"):  # the rows
    gc.db.delete = dying(gc.db.delete)
elif where.endswith("rename"):  # the trees, moved to the trash one by one
    gc.os.rename = dying(gc.os.rename)
else:  # the trees, one by one, then the objects (GC removes them through ``gcremove``)
    gcremove.remove_tree = dying(gcremove.remove_tree)
s = LocalStore.open(Path(sys.argv[1]))
s.gc()
print("done", flush=True)
"""

#: where the collector is killed: (step, how many of its calls complete first)
GC_KILLS = [
    ("before-delete", 0),
    ("after-delete", 0),
    ("before-rename", 0),
    ("after-rename", 7),
    ("after-remove", 0),
    ("after-remove", 20),
]


def test_kill_9_during_gc_leaves_store_consistent(tmp_path):
    """GC killed at each of its steps (the rows deleted or not yet, some trees moved to
    its trash, some objects deleted): the store stays consistent, the rooted path and
    its closure stay, and the next GC finishes the job. The kills are injected at those
    calls: a kill timed from outside lands before or after the few milliseconds GC
    spends deleting."""
    root = tmp_path / "store"
    rng = random.Random(3)
    for rep, (where, n) in enumerate(GC_KILLS):
        s = LocalStore.open(root)
        keep = s.add_path(make_tree(tmp_path / f"keep{rep}", {"k": rng.randbytes(1000)}))
        dep = keep
        for i in range(30):  # a chain of unrooted paths with some bulk
            t = make_tree(tmp_path / f"r{rep}-{i}", {"f": rng.randbytes(rng.randint(1, 400_000))})
            p = s.add_path(t)
            dep = s.add_text(f"n{i}.drv", b"x" * i, [dep.path, p.path])
        s.add_root(f"keep{rep}", keep.path)
        s.close()
        p = subprocess.run(
            [sys.executable, "-c", GC, str(root), where, str(n)], capture_output=True, text=True
        )
        assert p.returncode == -signal.SIGKILL, (where, n, p.stdout, p.stderr)
        s = LocalStore.open(root)
        try:
            r = s.verify()
            assert r.ok, (where, n, r.problems)  # no valid path lost its tree, object or references
            assert s.is_valid(keep.path)
            s.gc()
            assert s.all_paths() == sorted(
                s.resolve(os.path.realpath(e.path))[0] for e in os.scandir(root / "gcroots")
            )
            assert s.verify().ok and s.verify().stray_objects == ()
            assert os.listdir(root / "tmp") == []  # the killed collector's trash went too
        finally:
            s.close()


LOWFD = """
import resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (int(sys.argv[3]), int(sys.argv[3])))
from kiln.store.localstore import LocalStore
s = LocalStore.open(Path(sys.argv[1]))
try:
    print(s.add_path(Path(sys.argv[2])).path)
except OSError as e:
    print("error", e.errno)
"""


def test_add_under_a_low_descriptor_limit(tmp_path):
    """Few descriptors: a modest limit still works (the creator's lookahead adapts); an
    absurd one fails cleanly, leaving nothing behind."""
    src = make_tree(tmp_path / "many", {f"d{i % 5}/f{i}": str(i) for i in range(400)})
    root = tmp_path / "store"
    LocalStore.open(root).close()
    ok = subprocess.run(
        [sys.executable, "-c", LOWFD, str(root), str(src), "64"], capture_output=True, text=True
    )
    assert ok.stdout.startswith("/kiln/store/"), ok.stderr
    LocalStore.open(root).gc()
    bad = subprocess.run(
        [sys.executable, "-c", LOWFD, str(root), str(src), "8"], capture_output=True, text=True
    )
    assert bad.stdout.startswith("error"), (bad.stdout, bad.stderr)
    s = LocalStore.open(root)
    try:
        assert s.all_paths() == [] and os.listdir(s.tmp) == [] and os.listdir(s.real_store) == []
    finally:
        s.close()


IMPORT = """
import io, sys
from pathlib import Path
from kiln.store import importbatch
from kiln.store.localstore import LocalStore
from kiln.store.pathinfo import PathInfo
importbatch.MAX_BATCH = 40
src = LocalStore.open(Path(sys.argv[1]))
dst = LocalStore.open(Path(sys.argv[2]))
items = [(src.query(p), io.BytesIO(src.object_path(p).read_bytes())) for p in src.closure(src.all_paths())]
print("open", flush=True)
dst.import_objects(items)
print("done", flush=True)
"""


def test_kill_9_during_batch_import_leaves_store_consistent(tmp_path):
    """SIGKILL a batch import (several group commits) at random moments: every valid
    path is complete and right, its references are valid, and GC then leaves nothing."""
    src = LocalStore.open(tmp_path / "src")
    prev: list[str] = []
    for i in range(160):
        prev = [src.add_text(f"t{i}", f"text {i} {prev}\n".encode() * 20, prev[-1:]).path]
    src.close()
    root = tmp_path / "dst"
    LocalStore.open(root).close()
    cmd = [sys.executable, "-c", IMPORT, str(tmp_path / "src"), str(root)]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    p.stdout.readline()
    t1 = time.monotonic()
    assert p.stdout.readline().strip() == "done"
    full = time.monotonic() - t1
    p.wait()
    rng = random.Random(3)
    counts = []
    for _ in range(6):
        s = LocalStore.open(root)
        s.gc()
        s.close()
        p = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        p.stdout.readline()
        time.sleep(rng.uniform(0, full * 1.1))
        p.send_signal(signal.SIGKILL)
        p.wait()
        s = LocalStore.open(root)
        try:
            valid = s.all_paths()
            counts.append(len(valid))
            r = s.verify()
            assert r.ok, r.problems
            for path in valid:
                assert all(s.is_valid(ref) for ref in s.query(path).references)
            s.gc()
            assert s.all_paths() == [] and os.listdir(s.real_store) == [] and os.listdir(s.tmp) == []
            assert s.verify().ok and s.verify().stray_objects == ()
        finally:
            s.close()
    print("valid paths after each kill:", counts)


def test_a_store_whose_creation_was_killed_has_all_its_shards(tmp_path):
    """The 256 ``objects/<aa>`` shards are made at creation, but were made after the
    config that marks a store made: a creation killed in between left some missing for
    good (an open only makes them for a store without a config). Killed as soon as the
    config appears, the store must have them all."""
    init = "import sys; from pathlib import Path; from kiln.store.localstore import LocalStore; LocalStore.open(Path(sys.argv[1]))"
    for rnd in range(5):
        root = tmp_path / f"s{rnd}"
        p = subprocess.Popen([sys.executable, "-c", init, str(root)])
        deadline = time.monotonic() + 60
        while not (root / "config.json").exists() and p.poll() is None:
            assert time.monotonic() < deadline
        p.send_signal(signal.SIGKILL)
        p.wait()
        if (root / "config.json").exists():
            shards = sorted(d.name for d in (root / "objects").iterdir())
            assert shards == [f"{i:02x}" for i in range(256)], f"round {rnd}: {len(shards)} shards"
