"""GC deletes without holding the GC lock (``gc``, ``gcremove.Trash``).

Under the exclusive lock GC deletes the dead rows and renames what goes into its own
``tmp/gc-<pid>-<rand>/``; it releases the lock and only then unlinks. Before, it held
the lock through every unlink, and a ``kiln store add`` or a build waited for the whole
collection. Here a real ``kiln store gc`` is caught in its deletion phase (its trash
still full, the lock free) and stopped there (SIGSTOP), so what runs meanwhile runs
while it deletes, whatever the machine's speed: a ``kiln store add`` finishes, and a
second GC leaves the first one's trash alone. A GC killed (kill -9) in that phase
leaves its trash; the next GC removes it.
"""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from storekit import make_tree

from kiln.store.localstore import LocalStore
from kiln.store.locks import FileLock

#: entries of the unregistered tree: its unlinks make GC's deletion phase last long
#: enough to be caught (that phase is polled for, not timed)
STRAY_FILES = 30_000


def kiln(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    r = subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"kiln {' '.join(args)} -> {r.returncode}\n{r.stderr}"
    return r


def _garbage(root: Path, tmp_path: Path) -> list[str]:
    """A store at ``root`` holding garbage: dead registered paths (one of them with many
    files) and an unregistered tree of ``STRAY_FILES`` files. Returns the dead paths."""
    with LocalStore.open(root) as s:
        dead = [s.add_text(f"dead-{i}", f"dead {i}\n".encode(), []).path for i in range(40)]
        many = make_tree(tmp_path / "many", {f"d{i % 20}/f{i}": str(i) for i in range(1000)})
        dead.append(s.add_path(many).path)
        stray = s.real_store / ("7" * 32 + "-stray")
    for d in range(STRAY_FILES // 1000):
        sub = stray / f"d{d}"
        sub.mkdir(parents=True)
        for i in range(1000):
            os.close(os.open(sub / f"f{i}", os.O_WRONLY | os.O_CREAT, 0o444))
    return sorted(dead)


def _lock_free(lock: Path) -> bool:
    fd = os.open(lock, os.O_RDONLY | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False
    finally:
        os.close(fd)


def _entries(d: Path) -> list[str] | None:
    try:
        return sorted(os.listdir(d))
    except FileNotFoundError:
        return None


def _stopped(pid: int) -> None:
    """Wait until ``pid`` is really stopped (a signal is delivered asynchronously)."""
    for _ in range(10_000):
        if Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] in "tT":
            return
        time.sleep(0.001)
    raise AssertionError(f"process {pid} did not stop")


def _catch_deleting(gc: subprocess.Popen, root: Path, sig: int) -> tuple[Path, list[str]]:
    """Wait until ``gc`` deletes without the lock (its trash holds entries while the GC
    lock can be taken), send it ``sig``; its trash and what was still in it."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        assert gc.poll() is None, ("GC ended before it was seen deleting without the lock", gc.communicate())
        for trash in (root / "tmp").glob("gc-*"):
            if _entries(trash) and _lock_free(root / "gc.lock"):
                gc.send_signal(sig)
                if sig == signal.SIGKILL:
                    gc.wait()
                else:
                    _stopped(gc.pid)
                left = _entries(trash)
                assert left, "GC finished deleting before it was stopped: make STRAY_FILES larger"
                return trash, left
    raise AssertionError("GC never deleted without holding the GC lock")


def test_store_add_and_another_gc_run_while_a_gc_deletes(tmp_path):
    root = tmp_path / "st"
    dead = _garbage(root, tmp_path)
    src = make_tree(tmp_path / "src", {"a": "new\n"})
    gc = subprocess.Popen(
        [sys.executable, "-m", "kiln", "store", "gc", "--store", str(root)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        trash, left = _catch_deleting(gc, root, signal.SIGSTOP)
        # the first GC is stopped in the middle of its unlinks: the store is not locked
        added = kiln("store", "add", "--store", str(root), str(src), "--add-root", "new").stdout.strip()
        again = kiln("store", "gc", "--store", str(root))  # keeps the rooted new path ...
        assert _entries(trash) == left and str(trash) not in again.stdout  # ... and the trash
        assert "deleted 0 paths, 0 unregistered trees, 0 objects" in again.stderr
    finally:
        gc.send_signal(signal.SIGCONT)
    out, err = gc.communicate(timeout=300)
    assert gc.returncode == 0, err
    assert sorted(out.split("\n")[: len(dead)]) == dead
    assert f"deleted {len(dead)} paths, 1 unregistered trees, {len(dead)} objects" in err
    assert not list((root / "tmp").glob("gc-*"))
    with LocalStore.open(root) as s:
        assert s.all_paths() == [added]
        v = s.verify()
        assert v.ok and v.stray_trees == () and v.stray_objects == ()


def test_a_gc_killed_while_deleting_leaves_its_trash_to_the_next(tmp_path):
    root = tmp_path / "st"
    dead = _garbage(root, tmp_path)
    gc = subprocess.Popen(
        [sys.executable, "-m", "kiln", "store", "gc", "--store", str(root)],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    trash, left = _catch_deleting(gc, root, signal.SIGKILL)
    assert gc.returncode == -signal.SIGKILL
    with LocalStore.open(root) as s:  # the rows went first, durably
        assert s.all_paths() == []
    dry = kiln("store", "gc", "--store", str(root), "--dry-run")
    assert f"{trash} (working directory no process is using)" in dry.stdout and _entries(trash) == left
    r = kiln("store", "gc", "--store", str(root))
    assert f"{trash} (working directory no process is using)" in r.stdout and "warning" not in r.stderr
    assert not trash.exists() and os.listdir(root / "tmp") == []
    with LocalStore.open(root) as s:
        v = s.verify()
        assert v.ok and v.stray_trees == () and v.stray_objects == ()
        assert not any((s.real_store / p.rsplit("/", 1)[1]).exists() for p in dead)


def test_progress_is_told_with_the_lock_free(store, tmp_path):
    """``progress`` runs in the deletion phase: the GC lock is free then, even for another
    store object of this very process (flock locks belong to open files)."""
    paths = [store.add_text(f"p{i}", f"{i}\n".encode(), []).path for i in range(5)]
    store.close()
    seen: list[tuple[int, int, bool]] = []
    with LocalStore.open(store.root) as s, LocalStore.open(store.root) as other:

        def told(done: int, total: int) -> None:
            lock = FileLock(s.gc_lock_path, shared=True)
            free = lock.acquire(blocking=False)
            lock.release()
            seen.append((done, total, free))
            if done == 1:  # a registration goes through meanwhile
                other.add_text("during", b"during gc\n", [])

        r = s.gc(progress=told)
        assert sorted(r.deleted) == sorted(paths)
        assert [d for d, _, _ in seen] == list(range(1, len(seen) + 1)) and seen[-1][0] == seen[-1][1]
        assert all(free for _, _, free in seen) and len(seen) >= 2 * len(paths)  # (trees, objects)
        assert [p.rsplit("-", 1)[1] for p in other.all_paths()] == ["during"]
        assert not list(s.tmp.glob("gc-*"))
