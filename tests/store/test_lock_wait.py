"""Another local user could hang builds and GC without a word: lock files were 0644
(``flock`` works on a read-only open), and a blocked ``kiln store add`` or ``store gc``
printed nothing. Now lock files are 0600 in 0700 directories, and a lock not had within
a second is said on stderr, once, with the process that holds it (``store/lockwait``)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

from clikit import line_within

from kiln.store import lockwait
from kiln.store.localstore import LocalStore
from kiln.store.locks import FileLock

HOLD = """
import fcntl, os, sys, time
fd = os.open(sys.argv[1], os.O_RDONLY)  # (read-only: all flock needs)
fcntl.flock(fd, fcntl.LOCK_EX)
print("holding", flush=True)
time.sleep(float(sys.argv[2]))
"""


def _hold(path: Path, seconds: float) -> subprocess.Popen:
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(path), str(seconds)], stdout=subprocess.PIPE, text=True
    )
    assert line_within(p.stdout, 30) == "holding\n"
    return p


def _store(tmp_path: Path) -> Path:
    root = tmp_path / "home"
    with LocalStore.open(root) as s, FileLock(s.gc_lock_path):  # (makes gc.lock)
        pass
    return root


def test_a_blocked_command_says_what_it_waits_for_and_who_holds_it(tmp_path):
    root = _store(tmp_path)
    holder = _hold(root / "gc.lock", 60)
    try:
        started = time.monotonic()
        gc = subprocess.Popen(
            [sys.executable, "-m", "kiln", "store", "gc", "--dry-run", "--store", str(root)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        line = line_within(gc.stderr, 30)
        assert time.monotonic() - started < 20
        assert line.startswith(
            f"kiln: waiting for the store's GC lock {root / 'gc.lock'}, held by process "
        ), line
        assert f"process {holder.pid} (python" in line and "user " in line, line
        assert gc.poll() is None  # still waiting
    finally:
        holder.kill()
        holder.wait()
    out, err = gc.communicate(timeout=60)
    assert gc.returncode == 0, err
    assert "waiting for" not in err  # said once


def test_a_short_wait_says_nothing(tmp_path, capfd, monkeypatch):
    monkeypatch.setattr(lockwait, "LOCK_NOTICE_S", 5.0)  # (a 0.3 s hold, however slow its exit)
    root = _store(tmp_path)
    holder = _hold(root / "gc.lock", 0.3)
    try:
        with FileLock(root / "gc.lock"):
            pass
    finally:
        holder.wait()
    assert capfd.readouterr().err == ""


def test_the_notice_names_the_holder(tmp_path, monkeypatch, capfd):
    monkeypatch.setattr(lockwait, "LOCK_NOTICE_S", 0.1)
    root = _store(tmp_path)
    holder = _hold(root / "gc.lock", 1.0)
    try:
        with FileLock(root / "gc.lock", shared=True):
            pass
    finally:
        holder.wait()
    err = capfd.readouterr().err
    assert (
        err.count("kiln: waiting for the store's GC lock") == 1 and f"held by process {holder.pid}" in err
    ), err


def test_holders_are_read_from_proc_locks(tmp_path):
    f = tmp_path / "f.lock"
    f.touch()
    holder = _hold(f, 30)
    try:
        fd = os.open(f, os.O_RDONLY)
        try:
            assert lockwait.lock_holders(fd) == [holder.pid]
        finally:
            os.close(fd)
    finally:
        holder.kill()
        holder.wait()
    fd = os.open(f, os.O_RDONLY)
    try:
        assert lockwait.lock_holders(fd) == []
    finally:
        os.close(fd)
