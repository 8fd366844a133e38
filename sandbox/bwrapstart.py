"""Starting one bwrap in the fixed process state (``procstate``), and reaping it.

Options hand-over (``start``): all or nothing, whenever kiln dies. bwrap takes its
options from two files, ``bwrap --args 3 --args 4 -- <command>``, reading each to EOF:

* fd 4, a memfd written in full before bwrap exists: every option but ``GATED``
  (``--unshare-all --unshare-user``), of any size (no pipe-size or ``ARG_MAX`` limit);
* fd 3, the gate, a pipe read first: ``GATED``, written once ``fix_child`` is done, in
  one write of under ``PIPE_BUF`` bytes, which the kernel makes atomic. Until then bwrap
  blocks reading it.

If kiln dies before the gate write (``SIGKILL``, the OOM killer), bwrap reads EOF on
fd 3 and refuses the options of fd 4, which set ``--hostname`` (``Specifying --hostname
requires --unshare-uts``): nothing runs. A single pipe of all the options could not
guarantee that: over 64 KiB it takes several writes, and bwrap takes a list cut at an
option boundary as complete (the build then ran orphaned, without ``--remount-ro`` or
the seccomp filter). ``GATED`` first also keeps option order: ``--share-net`` comes after
``--unshare-all``.

Reaping: ``Bwrap.wait`` honours its timeout with or without a pidfd (kernel < 5.3:
``WNOHANG`` polls), and a bwrap already reaped (a Ctrl-C that landed after ``waitpid``
returned) raises ``SandboxError`` saying its status is lost, never ``ChildProcessError``
in place of the interrupt.

The sandbox's init (``Bwrap.adopt_init``): bwrap's exit does not prove the build over.
Its init (pid 1 of the PID namespace, which bwrap forks) runs as the build's uid and is
dumpable, so a build may ptrace it, clear its parent-death signal and write the eventfd
bwrap's monitor waits on: bwrap then exits 0 while the build runs on (it could rewrite
an output kiln is registering). So kiln holds a pidfd on the init (``adopt_init``: the
pid bwrap names, kept only if it is bwrap's child in the sandbox's PID namespace) and,
once bwrap is reaped, kills it and waits for it to be gone: the kernel reports the
init's exit only once every process of its namespace has exited. A legitimate init is
then already ending: bwrap's exit sent it its parent-death SIGKILL, or it exited after
telling bwrap the command's status. One that is not (alive, not exiting, no SIGKILL
pending, seen twice 1 ms apart) had its parent-death signal cleared: ``outlived``, and
the run is reported killed. No timing decides it: a process in uninterruptible sleep
(a slow file system) only delays the end. Killing a sandbox (``kill``), an exception in
the ``with`` block and closing it always kill the init too.
"""

from __future__ import annotations

import contextlib
import math
import os
import select
import signal
import subprocess
import threading
import time

from .bwrapargv import GATED
from .errors import SandboxError
from .launcher import kill_and_reap, spawn
from .limits import kill_tree
from .procstate import GATE_FD, OPTIONS_FD, fix_child, high_fd

#: How long a killed init (and its namespace) may take to be gone (s): a process in
#: uninterruptible sleep (a hung network file system) holds it up; kiln gives up then
_INIT_KILLED = 60.0


def memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding ``data``, positioned at 0 (close-on-exec;
    ``launcher.spawn`` copies it to the fixed number bwrap reads it from)."""
    fd = os.memfd_create(name, os.MFD_CLOEXEC)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


class Bwrap:
    """A started bwrap: what ``limits.supervise`` and ``kill_tree`` use of a ``Popen``
    (``pid``, ``stdout``, ``wait``, ``kill``, a context that reaps it). Takes over the fd
    ``stdout``."""

    def __init__(self, pid: int, stdout: int) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self.stdout = open(stdout, "rb", buffering=0)  # noqa: SIM115 - closed by __exit__
        self._lost = False  # reaped, status unknown (see ``_reap``)
        self._closed = False
        try:  # a handle that cannot name another process once bwrap is reaped
            self._pidfd: int | None = os.pidfd_open(pid)
        except OSError:  # kernel < 5.3
            self._pidfd = None
        self._wait_lock = threading.Lock()
        self._pidfd_lock = threading.Lock()  # kill() (any thread) vs closing the pidfds
        self._init_pidfd: int | None = None  # the sandbox's init (``adopt_init``)
        self._init_pid = 0
        #: whether the init had to be killed after bwrap exited: the build forged its end
        self.outlived = False

    def adopt_init(self, pid: int, pid_ns: int) -> None:
        """Hold a pidfd on the sandbox's init: process ``pid`` here, whose PID namespace's
        inode is ``pid_ns`` (both from bwrap's ``--info-fd``). Kept only if the process
        is that namespace's (an init that died during set-up leaves a pid the kernel may
        give to anyone: never signalled then)."""
        try:
            fd = os.pidfd_open(pid)
        except ProcessLookupError:  # gone, with its namespace
            return
        except OSError as e:  # kernel < 5.3, EMFILE...: never build unprotected, silently
            raise SandboxError(f"cannot hold the sandbox's init (pidfd_open: {e.strerror})") from None
        try:
            ours = os.stat(f"/proc/{pid}/ns/pid").st_ino == pid_ns and _ppid(pid) == self.pid
        except OSError:
            ours = False
        # (checked after the pidfd was opened: alive now, the pid is still that process's)
        if not ours or _ended(fd, 0):
            os.close(fd)
            return
        with self._pidfd_lock:
            if self._closed:
                os.close(fd)
            else:
                self._init_pidfd, self._init_pid = fd, pid

    def wait(self, timeout: float | None = None) -> int:
        """bwrap's exit status (-N: killed by signal N), waiting at most ``timeout``
        seconds (``TimeoutExpired``). ``SandboxError`` if it was reaped elsewhere."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while not self._reap(block=deadline is None):
            assert deadline is not None and timeout is not None  # (a deadline: a timeout)
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired("bwrap", timeout)
            if self._pidfd is not None:
                _ended(self._pidfd, left)
            else:  # kernel < 5.3: nothing to wait on but time
                time.sleep(min(pause, left))
                pause = min(2 * pause, 0.05)
        assert self.returncode is not None
        return self.returncode

    def _reap(self, block: bool) -> bool:
        """Reap bwrap if it has exited (wait for it if ``block``); whether it is reaped."""
        with self._wait_lock:
            if self.returncode is not None:
                return True
            if not self._lost:
                try:
                    pid, status = os.waitpid(self.pid, 0 if block else os.WNOHANG)
                except ChildProcessError:
                    # Already reaped: by our own waitpid, interrupted (Ctrl-C) after it
                    # returned and before its status was kept, or by someone else.
                    self._lost = True
                else:
                    if pid == 0:
                        return False
                    self.returncode = os.waitstatus_to_exitcode(status)
                    return True
        raise SandboxError(f"bwrap (pid {self.pid}) was reaped before kiln could read its exit status")

    def kill(self) -> None:
        with self._pidfd_lock:
            if self._closed:
                return
            self._kill_init()
            if self.returncode is not None or self._lost:
                return  # reaped (the pid may be another process's now) or being reaped
            with contextlib.suppress(ProcessLookupError):
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                else:
                    os.kill(self.pid, signal.SIGKILL)

    def _kill_init(self) -> None:
        """SIGKILL the sandbox's init, if held (under ``_pidfd_lock``)."""
        if self._init_pidfd is not None:
            with contextlib.suppress(ProcessLookupError):
                signal.pidfd_send_signal(self._init_pidfd, signal.SIGKILL)

    def _end_init(self) -> None:
        """Once bwrap is reaped: note whether the init outlived it (alive, not ending: see
        the module docstring), kill it and see it end. ``SandboxError`` if it does not
        within ``_INIT_KILLED``."""
        fd = self._init_pidfd
        if fd is None:
            return
        if not (_ended(fd, 0) or _dying(self._init_pid)):
            time.sleep(0.001)  # (seen twice: bwrap's exit and the signal it sends race our look)
            if not (_ended(fd, 0) or _dying(self._init_pid)):
                self.outlived = not _ended(fd, 0)  # (after: the /proc reads were of the init)
        with self._pidfd_lock:
            self._kill_init()
        if not _ended(fd, _INIT_KILLED):
            raise SandboxError(
                f"the sandbox's processes did not end within {_INIT_KILLED:.0f} s of being killed"
            )

    def __enter__(self) -> Bwrap:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            if exc_type is not None:  # an interrupted run: nothing of it is waited for alive
                if self.returncode is None and not self._lost:
                    kill_tree(self)  # (its group too: bwrap's pid is still ours; and ``kill``)
                else:
                    self.kill()  # (the init)
            self.stdout.close()
            try:
                self.wait()
                self._end_init()
            except SandboxError:
                if exc_type is None:
                    raise
                # else the exception in flight says more (it interrupted our waitpid)
        finally:
            with self._pidfd_lock:
                self._kill_init()  # (a no-op for an init seen gone; else it must not outlive us)
                self._closed = True
                for fd in (self._pidfd, self._init_pidfd):
                    if fd is not None:
                        os.close(fd)
                self._pidfd = self._init_pidfd = None


def _ended(pidfd: int, timeout: float) -> bool:
    """Whether the process of ``pidfd`` has exited, waiting up to ``timeout`` seconds
    (a pidfd polls readable once its process has exited). poll, not select: any fd number."""
    p = select.poll()
    p.register(pidfd, select.POLLIN)
    return bool(p.poll(max(0, math.ceil(timeout * 1000))))


#: ``PF_EXITING`` in the flags of ``/proc/PID/stat`` (the kernel's task flags)
_PF_EXITING = 0x4
#: SIGKILL's bit in the pending-signal masks of ``/proc/PID/status``
_SIGKILL_BIT = 1 << (signal.SIGKILL - 1)


def _ppid(pid: int) -> int:
    """The parent pid of ``pid`` (``/proc/PID/stat``; ``OSError`` if it is gone)."""
    with open(f"/proc/{pid}/stat", "rb") as f:
        return int(f.read().rsplit(b")", 1)[1].split()[1])


def _dying(pid: int) -> bool:
    """Whether ``pid`` is exiting or has SIGKILL pending (as bwrap's exit leaves a
    legitimate init: its parent-death signal). True if it cannot be read (gone)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            fields = f.read().rsplit(b")", 1)[1].split()
        with open(f"/proc/{pid}/status", "rb") as f:
            pend = [int(line.split()[1], 16) for line in f if line.startswith((b"SigPnd:", b"ShdPnd:"))]
    except (OSError, ValueError, IndexError):
        return True
    return (
        fields[0] in (b"Z", b"X") or bool(int(fields[6]) & _PF_EXITING) or any(p & _SIGKILL_BIT for p in pend)
    )


def _nul_joined(options: list[str]) -> bytes:
    return os.fsencode("\0".join(options) + "\0")


#: What the gate pipe carries (see the module docstring): atomic as one write.
_GATE = _nul_joined(list(GATED))
assert len(_GATE) <= select.PIPE_BUF


def pipe_above() -> tuple[int, int]:
    """A pipe (close-on-exec) whose ends are above ``procstate.FIXED_FDS``; nothing left
    open if that fails."""
    r, w = os.pipe()
    try:
        r = high_fd(r)
    except BaseException:
        os.close(w)
        raise
    try:
        w = high_fd(w)
    except BaseException:
        os.close(r)
        raise
    return r, w


def start(
    bwrap: str,
    options: list[str],
    command: list[str],
    fds: list[tuple[int, int]],
    umask: int,
    cpus: int | None = None,
) -> Bwrap:
    """Start ``bwrap --args 3 --args 4 <command>`` (``argv[0]`` is ``bwrap``, never its
    host path) in the fixed process state of ``procstate``, with stdin ``/dev/null``,
    stdout and stderr one pipe (``.stdout``), and ``fds`` (ours, above ``FIXED_FDS`` ->
    the child's) as its only other fds. ``options`` start with ``GATED`` and set
    ``--hostname``: the rest go in a memfd (fd 4), ``GATED`` through the gate pipe (fd
    3) once ``fix_child`` has set bwrap's limits (and its CPUs: at most ``cpus``, ``None``
    all); until then it waits, reading. See the module docstring for why this is all or
    nothing.

    Every fd made here is in ``owned`` from the statement that makes it until closed
    (or, for ``.stdout``, taken over by the ``Bwrap``), and the started bwrap in
    ``started`` (filled by the launcher) until a ``Bwrap`` has it: whatever fails, a
    Ctrl-C included, each is closed, or killed and reaped, once."""
    if tuple(options[: len(GATED)]) != GATED or "--hostname" not in options:
        raise ValueError(f"bwrap options must start with {GATED} and set --hostname (see bwrapstart.start)")
    owned: list[int] = []
    started: list[int] = []
    proc: Bwrap | None = None
    try:
        owned.append(high_fd(memfd("kiln-bwrap-options", _nul_joined(options[len(GATED) :]))))
        owned.extend(pipe_above())
        owned.extend(pipe_above())
        owned.append(high_fd(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)))  # as Popen's DEVNULL
        opts, gate_r, gate_w, out_r, out_w, null = owned
        child = [(null, 0), (out_w, 1), (out_w, 2), (gate_r, GATE_FD), (opts, OPTIONS_FD), *fds]
        argv = ["bwrap", "--args", str(GATE_FD), "--args", str(OPTIONS_FD), *command]
        spawn(bwrap, argv, child, umask, started)
        owned.remove(out_r)  # (first: a Ctrl-C between the two leaks it, never closes it twice)
        proc = Bwrap(started[0], out_r)
        fix_child(proc.pid, cpus)
        # One write of under PIPE_BUF bytes: all of it or nothing reaches bwrap.
        with contextlib.suppress(BrokenPipeError):  # bwrap died: its status says why
            os.write(gate_w, _GATE)
        _close_all(owned)  # (here, where an interrupt still finds bwrap in ``proc``)
        result, proc = proc, None
        return result
    except BaseException:
        if proc is not None:
            kill_tree(proc)
            with contextlib.suppress(SandboxError), proc:
                pass
        elif started:
            kill_and_reap(started[0])
        raise
    finally:
        _close_all(owned)  # bwrap has its copies; the gate's write end closed: EOF (failures)


def _close_all(fds: list[int]) -> None:
    """Close the fds of ``fds``, emptying it, even through a Ctrl-C (raised after)."""
    interrupt: BaseException | None = None
    while fds:
        try:
            os.close(fds.pop())  # (popped first: a Ctrl-C between leaks one, never closes it twice)
        except BaseException as e:
            interrupt = interrupt or e
    if interrupt is not None:
        raise interrupt
