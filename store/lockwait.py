"""Saying what kiln waits for: a lock held by another process (``FileLock``) and a path
another process placed and has not registered yet (``PlacerWait``).

A wait is never silent for long. Any process that can open a lock file can ``flock`` it
(a read-only open suffices), and a process that is stopped keeps its locks: a build or
a GC that waits on it must say, once, on stderr, which lock it waits for and who holds
it (the pid ``/proc/locks`` gives for it, with that process's user and command, when
they can be read).

The holder is named only while it is known to hold the lock: the waiter polls
(non-blocking ``flock``) until the notice is due, so no descriptor of its own can hold
the lock unseen, reads the holders, and tries the lock once more; if that succeeds it
has the lock and says nothing (the holder let go meanwhile), and if nobody could be
named while the lock stayed busy (it changed hands between the reads) it reads again.
Only then does it say who holds the lock and wait for it blocking. So "this very
process" means another descriptor of this process holds it, never the waiter's own.
(The price: in its first second a waiter takes a lock let go within ``POLL_MAX_S``,
not at once.)
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import sys
import time
from pathlib import Path

#: how long a lock is waited for before saying so
LOCK_NOTICE_S = 1.0


def lock_holders(fd: int) -> list[int]:
    """The pids ``/proc/locks`` names as holding (not waiting for) an ``flock`` on the
    file open at ``fd``; empty if none can be told (no ``/proc``, another namespace)."""
    st = os.fstat(fd)
    want = f"{os.major(st.st_dev):02x}:{os.minor(st.st_dev):02x}:{st.st_ino}"
    out = []
    try:
        with open("/proc/locks") as f:
            lines = f.read().splitlines()
    except OSError:
        return []
    for line in lines:
        fields = line.split()
        # "1: FLOCK  ADVISORY  WRITE 1234 00:2f:1846 0 EOF"; waiters have "->" after "1:"
        if len(fields) >= 6 and fields[1] == "FLOCK" and fields[5] == want and fields[4].isdigit():
            out.append(int(fields[4]))
    return sorted(set(out))


def describe_process(pid: int) -> str:
    """``process 1234 (flock, user alice)``, with what of it can be read."""
    bits = []
    with contextlib.suppress(OSError):
        bits.append(Path(f"/proc/{pid}/comm").read_text().strip())
    try:
        uid = _real_uid(pid)
        try:
            import pwd

            bits.append(f"user {pwd.getpwuid(uid).pw_name}")
        except KeyError:
            bits.append(f"uid {uid}")
    except OSError:
        pass
    return f"process {pid}" + (f" ({', '.join(bits)})" if bits else "")


def _real_uid(pid: int) -> int:
    """The real uid of ``pid``, from its ``status`` (not the owner of ``/proc/PID``, which
    is root for a process that made itself non-dumpable, as one holding a key does)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("Uid:"):
            return int(line.split()[1])
    raise OSError(f"no Uid in /proc/{pid}/status")


def lock_name(path: Path) -> str:
    """What the lock file ``path`` is, in words."""
    name = path.name
    if name == "gc.lock":
        return f"the store's GC lock {path}"
    if name.startswith("reg-") and name.endswith(".lock"):
        return f"the registration lock {path}"
    if name.endswith(".build"):
        return f"the build lock {path}"
    if name.endswith(".hook"):
        return f"the signing-hook marker {path}"
    return f"the lock {path}"


#: polling before the notice: the first pause and the longest
POLL_FIRST_S, POLL_MAX_S = 0.001, 0.01
#: how often the holders are read again while the lock is busy but nobody is named
UNNAMED_RETRIES = 5


def holders_text(pids: list[int]) -> str:
    """Who holds a lock, in words, from the ``lock_holders`` of a descriptor that does
    not hold it itself (so this process's pid there is another descriptor of it)."""
    pids = [p for p in pids if p > 0]
    if pids == [os.getpid()]:
        return "held by this very process (through another descriptor)"
    pids = [p for p in pids if p != os.getpid()]
    if not pids:
        return "held by a process that cannot be named from here (another pid namespace?)"
    return "held by " + ", ".join(describe_process(p) for p in pids)


def _try(fd: int, op: int) -> bool:
    try:
        fcntl.flock(fd, op | fcntl.LOCK_NB)
        return True
    except BlockingIOError:
        return False


def take_or_name_holder(fd: int, op: int) -> str | None:
    """For ``fd``, which does not hold the lock (``op``: ``LOCK_EX``/``LOCK_SH``) and is
    in no ``flock`` call meanwhile: take the lock (None), or say who holds it
    (``holders_text``), read while the lock stayed busy for ``fd``."""
    unnamed = 0
    while True:
        if _try(fd, op):
            return None
        try:
            pids: list[int] | None = [p for p in lock_holders(fd) if p > 0]
        except OSError:
            pids = None
        if _try(fd, op):
            return None  # let go meanwhile: whoever was read may hold it no longer
        if pids is None:
            return "held by another process"
        if pids or unnamed == UNNAMED_RETRIES:
            return holders_text(pids)
        unnamed += 1  # it changed hands between the reads (or: another pid namespace)
        time.sleep(POLL_FIRST_S)


def flock_with_notice(fd: int, op: int, path: Path, notice_s: float | None = None) -> None:
    """``flock(fd, op)`` (blocking) on a descriptor of the caller's that is in no other
    ``flock`` call, saying on stderr once, after ``notice_s`` (default
    ``LOCK_NOTICE_S``), which lock it waits for and who holds it (module docstring)."""
    if _try(fd, op):
        return
    due = time.monotonic() + (LOCK_NOTICE_S if notice_s is None else notice_s)
    pause = POLL_FIRST_S
    while (left := due - time.monotonic()) > 0:
        time.sleep(min(pause, left))
        pause = min(POLL_MAX_S, pause * 2)
        if _try(fd, op):
            return
    who = take_or_name_holder(fd, op)
    if who is None:
        return
    print(f"kiln: waiting for {lock_name(path)}, {who}", file=sys.stderr, flush=True)
    fcntl.flock(fd, op)


class PlacerWait:
    """Waiting, with backoff, for a live process that placed a path's tree and has not
    registered it yet (a build commits its outputs a little after placing them, see
    ``stagedbuild``). Says once, after ``NOTICE_S``, which process is waited for: a
    process that placed a tree and then hung keeps its waiters waiting, as a held lock
    would."""

    NOTICE_S = 2.0

    def __init__(self, what: str) -> None:
        self.what = what
        self.start = time.monotonic()
        self.delay = 0.005
        self.told = False

    def sleep(self, pid: int) -> None:
        if not self.told and time.monotonic() - self.start >= self.NOTICE_S:
            print(
                f"kiln: waiting for process {pid}, which has built {self.what} and is registering it",
                file=sys.stderr,
                flush=True,
            )
            self.told = True
        time.sleep(self.delay)
        self.delay = min(0.25, self.delay * 2)
