"""The lock-wait notice names the holder it read while the lock was held by it.

It used to be computed on a timer thread after a second, while the waiter blocked in
``flock``: if the holder let go just before, the waiter might hold the lock itself by
then and say ``held by this very process (through another descriptor)``, or nobody held
it at the read: ``held by a process that cannot be named from here (another pid
namespace?)``. ``kiln build`` said the same for a build lock (``buildlocks``). Now the
holders are read between two failed tries of the lock; if the second succeeds nothing
is said (``lockwait`` module docstring).

The deterministic tests make the holder (a real process) let go exactly while its pid is
being read (``lock_holders`` wrapped); the last one just races real releases against the
notice, as the soak audit did.
"""

from __future__ import annotations

import fcntl
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
from clikit import line_within

from kiln.store import buildlocks, lockwait
from kiln.store.locks import FileLock

WRONG = ("this very process", "cannot be named")

HOLD = """
import fcntl, os, sys
fd = os.open(sys.argv[1], os.O_RDONLY)
fcntl.flock(fd, fcntl.LOCK_EX)
print("holding", flush=True)
sys.stdin.readline()
os.close(fd)
print("released", flush=True)
sys.stdin.readline()  # (stays alive: a holder that let go, not one that died)
"""


class Holder:
    """A process holding ``path`` exclusively until ``release``."""

    def __init__(self, path: Path) -> None:
        self.p = subprocess.Popen(
            [sys.executable, "-c", HOLD, str(path)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        )
        assert line_within(self.p.stdout, 30) == "holding\n"
        self.pid = self.p.pid

    def release(self) -> None:
        self.p.stdin.write("\n")
        self.p.stdin.flush()
        assert line_within(self.p.stdout, 30) == "released\n"

    def end(self) -> None:
        self.p.kill()
        self.p.wait()


def _release_on_first_read(monkeypatch, holder: Holder) -> list[list[int]]:  # noqa: ANN001
    """Make ``holder`` let go just before the first ``/proc/locks`` read; return the reads."""
    real, reads = lockwait.lock_holders, []

    def lock_holders(fd: int) -> list[int]:
        if not reads:
            holder.release()
        reads.append(real(fd))
        return reads[-1]

    monkeypatch.setattr(lockwait, "lock_holders", lock_holders)
    return reads


def test_a_holder_that_lets_go_as_it_is_read_is_not_misnamed(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(lockwait, "LOCK_NOTICE_S", 0.1)
    path = tmp_path / "gc.lock"
    path.touch()
    holder = Holder(path)
    try:
        reads = _release_on_first_read(monkeypatch, holder)
        with FileLock(path) as lock:
            assert lock.fd is not None
        for t in threading.enumerate():  # (the old notice's timer thread: let it say its piece)
            if isinstance(t, threading.Timer):
                t.join(30)
        err = capfd.readouterr().err
    finally:
        holder.end()
    assert reads, "the holder was never read: the notice was not reached"
    assert not any(w in err for w in WRONG), err
    assert err == "" or f"held by process {holder.pid} " in err, err


def test_a_build_lock_let_go_as_its_holder_is_read_is_taken_without_a_word(tmp_path, monkeypatch):
    store = SimpleNamespace(root=str(tmp_path))
    out = f"/kiln/store/{'a' * 32}-x"
    (tmp_path / "locks").mkdir()
    path = tmp_path / "locks" / f"{'a' * 32}.build"
    path.touch()
    holder = Holder(path)
    said: list[str] = []
    try:
        reads = _release_on_first_read(monkeypatch, holder)
        with buildlocks.output_lock(store, [out], said.append):
            fd = os.open(path, os.O_RDONLY)
            try:
                with pytest.raises(BlockingIOError):  # held: by us
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            finally:
                os.close(fd)
    finally:
        holder.end()
    assert reads
    assert not any(w in s for s in said for w in WRONG), said
    assert said == [] or all(f"process {holder.pid} " in s for s in said), said


def test_another_descriptor_of_this_process_is_named_as_such(tmp_path, monkeypatch, capfd):
    """The one case where "this very process" is true: another descriptor of it holds
    the lock (here another thread's ``FileLock``), the waiter's own does not."""
    monkeypatch.setattr(lockwait, "LOCK_NOTICE_S", 0.1)
    path = tmp_path / "x.lock"
    mine = FileLock(path)
    mine.acquire()
    said = threading.Event()

    def let_go() -> None:
        said.wait(30)
        mine.release()

    class Stderr:  # (lets ``mine`` go once the notice is out)
        def __init__(self, inner) -> None:  # noqa: ANN001
            self.inner = inner

        def write(self, s: str) -> int:
            if "waiting for" in s:
                said.set()
            return self.inner.write(s)

        def flush(self) -> None:
            self.inner.flush()

    monkeypatch.setattr(sys, "stderr", Stderr(sys.stderr))
    t = threading.Thread(target=let_go)
    t.start()
    try:
        with FileLock(path):
            pass
    finally:
        said.set()
        t.join()
    err = capfd.readouterr().err
    assert f"waiting for the lock {path}, held by this very process (through another descriptor)" in err, err


def test_holders_letting_go_around_the_notice_are_never_misnamed(tmp_path, monkeypatch, capfd):
    """Real timing, as the soak audit's reproducer: holders let go around the moment the
    notice is due. A message, if any, names the holder."""
    monkeypatch.setattr(lockwait, "LOCK_NOTICE_S", 0.1)
    path = tmp_path / "gc.lock"
    path.touch()
    wrong = []
    for i in range(24):
        hold = 0.09 + (i % 8) * 0.004  # (spread over the notice: only to vary the moment)
        p = subprocess.Popen(
            [
                sys.executable,
                "-c",
                "import fcntl, os, sys, time\n"
                "fd = os.open(sys.argv[1], os.O_RDONLY); fcntl.flock(fd, fcntl.LOCK_EX)\n"
                "print('ok', flush=True); time.sleep(float(sys.argv[2]))",
                str(path),
                str(hold),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert line_within(p.stdout, 30) == "ok\n"
        with FileLock(path):
            pass
        p.wait()
        time.sleep(0.01)  # (the old notice came from a timer thread, possibly late)
        err = capfd.readouterr().err
        if err and (any(w in err for w in WRONG) or f"held by process {p.pid} " not in err):
            wrong.append(err)
    assert wrong == []
