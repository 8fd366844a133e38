"""Starting and reaping bwrap (``bwrapstart.start``, ``Bwrap``, ``procstate``'s launcher)
when things go wrong: a signal sent to kiln, kiln dying while handing bwrap its
options, a Ctrl-C or ``EMFILE`` at any step, a kernel without pidfds.

Every test runs real bwrap; interrupts are injected deterministically at a chosen
point (a monkeypatched function raises), never by timed signal storms.
"""

from __future__ import annotations

import errno
import fcntl
import gc
import io
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest

from kiln.sandbox import BwrapExecutor, SandboxSpec, launcher, procstate
from kiln.sandbox import bwrap as B
from kiln.sandbox import bwrapstart as S
from kiln.sandbox.bwrapargv import common_flags
from kiln.sandbox.limits import Limits, kill_tree, supervise
from kiln.sandbox.seccomp import build_filter

BWRAP = shutil.which("bwrap") or "/usr/bin/bwrap"


def _fds() -> dict[int, str]:
    """Our open fds and what they are (the listing's own fd left out)."""
    out = {}
    for entry in os.listdir("/proc/self/fd"):
        try:
            out[int(entry)] = os.readlink(f"/proc/self/fd/{entry}")
        except OSError:
            continue  # the listing's fd, closed by now
    return out


def _fds_before() -> dict[int, str]:
    """``_fds()`` once the garbage of earlier tests in this process is collected: an
    object left in a reference cycle (a store another test did not close) would close
    its fds at a collection during the test, and they would look released by it."""
    gc.collect()
    return _fds()


def _start(command: list[str], extra: list[str] | None = None, fds: list[tuple[int, int]] | None = None):
    """``_start`` as the probe does it (host root read-only, the seccomp filter), plus
    ``extra`` options."""
    sfd = procstate.high_fd(S.memfd("kiln-seccomp", build_filter()))
    try:
        return S.start(
            BWRAP,
            B.probe_options() + (extra or []),
            ["--", *command],
            [(sfd, B.SECCOMP_FD), *(fds or [])],
            0o022,
        )
    finally:
        os.close(sfd)


def _run(command: list[str], **kw) -> tuple[int, str]:
    proc = _start(command, **kw)
    log = io.BytesIO()
    with proc:
        outcome = supervise(proc, log, None, Limits(timeout=30), time.monotonic())
    return outcome.returncode, log.getvalue().decode(errors="replace")


@pytest.fixture
def spawned(monkeypatch: pytest.MonkeyPatch) -> Iterator[list[int]]:
    """The pids the launcher starts during the test; each must be reaped by kiln by its
    end (reaped here if not, so a failure leaves no zombie)."""
    pids: list[int] = []
    real = os.posix_spawn

    def posix_spawn(*a, **kw):
        pid = real(*a, **kw)
        pids.append(pid)
        return pid

    monkeypatch.setattr(os, "posix_spawn", posix_spawn)
    yield pids
    monkeypatch.undo()
    left = []
    for pid in pids:
        try:
            os.kill(pid, signal.SIGKILL)
            os.waitpid(pid, 0)
            left.append(pid)
        except (ProcessLookupError, ChildProcessError):
            pass
    assert not left, f"bwrap processes kiln never reaped: {left}"


# --- signals sent to kiln are not taken by the launcher thread -----------------------


def _launcher() -> threading.Thread:
    fd = procstate.high_fd(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
    try:
        os.waitpid(launcher.spawn("/bin/true", ["true"], [(fd, 0)], 0o022), 0)
    finally:
        os.close(fd)
    return next(t for t in threading.enumerate() if t.name == "kiln-sandbox-launcher")


def test_launcher_thread_blocks_every_signal() -> None:
    thread = _launcher()
    with open(f"/proc/self/task/{thread.native_id}/status") as f:
        blocked = int(next(ln for ln in f if ln.startswith("SigBlk:")).split()[1], 16)
    want = sum(1 << (s - 1) for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
    assert blocked & want == want, f"{blocked:016x}"


SIGTIMEDWAIT = """
import os, signal, time
from kiln.sandbox import launcher, procstate
fd = procstate.high_fd(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC))
os.waitpid(launcher.spawn("/bin/true", ["true"], [(fd, 0)], 0o022), 0)
signal.signal(signal.SIGTERM, lambda *_: print("handled by a thread that did not block it"))
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})  # as kiln run's forwarding loop
os.kill(os.getpid(), signal.SIGTERM)  # process-directed: any thread not blocking it may take it
time.sleep(0.1)  # (kiln busy elsewhere: a woken launcher would have taken it by now)
print("collected" if signal.sigtimedwait({signal.SIGTERM}, 0) else "lost")
"""


def test_signal_to_kiln_stays_pending_for_the_main_thread() -> None:
    """``kiln run`` blocks SIGTERM in the main thread and collects it with
    ``sigtimedwait``: once a build has started the launcher, a ``kill PID`` of kiln must
    still be collected there, not delivered to the launcher (the kernel picks a thread
    that does not block it) and handled as kiln's own termination."""
    p = subprocess.run([sys.executable, "-c", SIGTIMEDWAIT], capture_output=True, text=True, timeout=30)
    assert p.stdout == "collected\n", (p.stdout, p.stderr)


def test_sigchld_reset_is_seen_by_python() -> None:
    """kiln started with SIGCHLD ignored (``trap '' CHLD``): the launcher resets it (the
    kernel would reap bwrap), and Python's view says so, so code that saves and restores
    the handler does not ignore it again."""
    code = (
        SIGTIMEDWAIT.split("signal.signal(")[0]
        + "print(signal.getsignal(signal.SIGCHLD) is signal.SIG_DFL)\n"
    )
    p = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=30,
        preexec_fn=lambda: signal.signal(signal.SIGCHLD, signal.SIG_IGN),  # noqa: PLW1509 - the state under test
    )
    assert p.stdout == "True\n", (p.stdout, p.stderr)


# --- the options hand-over is all or nothing ------------------------------------------


def test_large_options_reach_bwrap(executor: BwrapExecutor, rootfs, build_dir) -> None:
    """~220 KB of options (2000 ``--setenv``): more than any pipe holds by default."""
    env = {"PATH": "/bin", **{f"V{i}": "x" * 100 for i in range(2000)}}
    spec = SandboxSpec(
        argv=("/bin/sh", "-c", "env | grep -c '^V[0-9]*=x'; echo ${#V1999}"),
        build_dir=str(build_dir),
        env=env,
        rootfs=str(rootfs),
    )
    log = io.BytesIO()
    r = executor.run(spec, log)
    assert r.ok, log.getvalue()
    assert log.getvalue().split() == [b"2000", b"100"]


DYING = """
import os, select, stat, sys
from kiln.sandbox import bwrap as B, bwrapstart as S, procstate
from kiln.sandbox.bwrapargv import common_flags
die_at, report = int(sys.argv[1]), procstate.high_fd(int(sys.argv[2]))
real, calls = os.write, 0

def write(fd, data):  # kiln SIGKILLed during its die_at-th write
    global calls
    calls += 1
    if calls != die_at:
        return real(fd, data)
    # what the kernel may have written by then: a pipe write of up to PIPE_BUF bytes is
    # atomic (all or nothing); any other write, any prefix
    if not (stat.S_ISFIFO(os.fstat(fd).st_mode) and len(data) <= select.PIPE_BUF):
        real(fd, bytes(data)[: len(data) // 2])
    os._exit(9)

os.write = write
options = [*common_flags(False, 1000, 1000, "localhost"), "--ro-bind", "/", "/"]
for i in range(4):  # (one string of an environment may have 128 KiB at most)
    options += ["--setenv", f"BIG{i}", "x" * 50000]
options += ["--tmpfs", "/tmp", "--remount-ro", "/"]
proc = S.start("BWRAP", options, ["--", "/bin/sh", "-c", "echo ran >&7"], [(report, 7)], 0o022)
with proc:
    proc.wait()
sys.exit(proc.returncode)
"""


def test_kiln_dying_during_the_options_hand_over_starts_nothing(tmp_path) -> None:
    """kiln killed at each write of ``_start`` in turn (mid-write where the kernel
    allows): bwrap never runs the command with part of its options; once every write is
    done it runs it. (A single pipe of 200 KB took three writes, and bwrap ran the
    command, orphaned, with the options cut in the middle of ``BIG1``.)"""
    helper = tmp_path / "dying.py"
    helper.write_text(DYING.replace("BWRAP", BWRAP))
    for die_at in range(1, 10):
        r, w = os.pipe()
        try:
            p = subprocess.Popen([sys.executable, str(helper), str(die_at), str(w)], pass_fds=[w])
        finally:
            os.close(w)
        with os.fdopen(r, "rb") as report:
            ran = report.read()  # EOF: the helper, bwrap and the command are all gone
        rc = p.wait(timeout=30)
        if rc == 0:
            assert ran == b"ran\n"
            assert die_at > 2  # the options' memfd, the gate: at least two writes
            return
        assert rc == 9, rc
        assert ran == b"", f"kiln killed at write {die_at}: the command ran with part of its options"
    pytest.fail("the helper never completed")


def test_without_the_gate_bwrap_refuses_the_options(monkeypatch: pytest.MonkeyPatch, spawned) -> None:
    """What bwrap does when kiln dies before opening the gate (EOF on fd 3)."""
    real = os.write
    monkeypatch.setattr(os, "write", lambda fd, data: len(data) if data == S._GATE else real(fd, data))
    rc, log = _run(["/bin/echo", "ran"])
    assert rc == 1 and "ran" not in log.split() and "requires --unshare" in log, (rc, log)


def test_options_must_start_with_the_gated_ones() -> None:
    with pytest.raises(ValueError):
        S.start(BWRAP, ["--ro-bind", "/", "/", "--hostname", "x"], ["--", "/bin/true"], [], 0o022)


# --- interrupts and EMFILE at every step leak nothing -----------------------------------


class _Injected(Exception):
    pass


def test_every_fd_and_process_is_released_whatever_step_fails(monkeypatch, spawned) -> None:
    """A Ctrl-C before, or ``EMFILE`` from, each step of ``_start`` that makes an fd or a
    process (and the steps after bwrap is started): the exception comes out, and kiln
    is left with the fds it had and no bwrap."""
    creators = {"pipe": os, "open": os, "memfd_create": os, "fcntl": fcntl}
    calls: list[str] = []
    fail: dict[str, object] = {}

    def wrap(name: str, real):
        def step(*a, **kw):
            if name == "fcntl" and a[1] != fcntl.F_DUPFD_CLOEXEC:
                return real(*a, **kw)
            if name == "write" and a[1] != S._GATE:
                return real(*a, **kw)
            calls.append(name)
            if len(calls) == fail.get("at"):
                raise fail["exc"]  # type: ignore[misc]
            return real(*a, **kw)

        return step

    for name, mod in creators.items():
        monkeypatch.setattr(mod, name, wrap(name, getattr(mod, name)))
    monkeypatch.setattr(os, "write", wrap("write", os.write))
    monkeypatch.setattr(S, "spawn", wrap("spawn", S.spawn))
    monkeypatch.setattr(S, "fix_child", wrap("fix_child", S.fix_child))

    options = [*common_flags(False, 1000, 1000, "localhost"), "--ro-bind", "/", "/"]
    with S.start(BWRAP, options, ["--", "/bin/true"], [], 0o022) as proc:
        assert proc.wait() == 0
    complete = list(calls)
    assert {"pipe", "open", "spawn", "fix_child"} <= set(complete), complete  # (high_fd dups only low fds)
    for exc in (KeyboardInterrupt(), OSError(errno.EMFILE, "Too many open files")):
        for at in range(1, len(complete) + 1):
            calls.clear()
            fail.update(at=at, exc=exc)
            before = _fds_before()
            with pytest.raises(type(exc)):
                S.start(BWRAP, options, ["--", "/bin/true"], [], 0o022)
            where = f"{type(exc).__name__} at {complete[at - 1]} (step {at})"
            assert _fds() == before, where
            for pid in spawned:
                with pytest.raises(ChildProcessError):
                    os.waitpid(pid, os.WNOHANG)


def _interrupting_done(monkeypatch, first_wait) -> None:
    """Make the first ``wait`` on a spawn request's ``done`` run ``first_wait(event)``
    (which raises, as a Ctrl-C in the caller would); later waits are the real ones."""
    real_init = launcher._Request.__init__

    class Done(threading.Event):
        calls = 0

        def wait(self, timeout=None):
            Done.calls += 1
            if Done.calls == 1:
                first_wait(self)
            return super().wait(timeout)

    def init(self, *a, **kw):
        real_init(self, *a, **kw)
        self.done = Done()

    monkeypatch.setattr(launcher._Request, "__init__", init)


def test_interrupt_once_bwrap_is_started_reaps_it(monkeypatch, spawned) -> None:
    """Ctrl-C in the caller just as the launcher has started bwrap: that bwrap is
    killed and reaped, and the interrupt comes out."""

    def first_wait(done: threading.Event) -> None:
        threading.Event.wait(done)
        raise KeyboardInterrupt

    _interrupting_done(monkeypatch, first_wait)
    before = _fds_before()
    with pytest.raises(KeyboardInterrupt):
        _start(["/bin/true"])
    assert len(spawned) == 1
    assert _fds() == before


def test_interrupt_while_the_launcher_spawns_keeps_its_fds_open(monkeypatch, spawned) -> None:
    """Ctrl-C in the caller while the launcher is inside ``posix_spawn`` with the
    caller's fds: they stay open (not closed under the launcher, their numbers not
    reused meanwhile) until it is done, and what it started is reaped."""
    in_spawn, release, finished = threading.Event(), threading.Event(), threading.Event()
    real_wait = threading.Event.wait  # (patched below, to see the caller wait on)
    closed_under_launcher: list[int] = []
    real_spawn = os.posix_spawn  # (spawned's recorder)

    def posix_spawn(path, argv, env, *, file_actions, **kw):
        sources = {a[1]: os.fstat(a[1]) for a in file_actions if a[0] == os.POSIX_SPAWN_DUP2}
        in_spawn.set()
        real_wait(release, 10)
        for fd, st in sources.items():
            try:
                now = os.fstat(fd)
            except OSError:
                closed_under_launcher.append(fd)
                continue
            if (now.st_dev, now.st_ino) != (st.st_dev, st.st_ino):
                closed_under_launcher.append(fd)
        try:
            return real_spawn(path, argv, env, file_actions=file_actions, **kw)
        finally:
            finished.set()

    monkeypatch.setattr(os, "posix_spawn", posix_spawn)

    def first_wait(done: threading.Event) -> None:
        real_wait(in_spawn, 10)
        raise KeyboardInterrupt

    def later_wait(self, timeout=None):  # the caller waiting on, after the interrupt
        release.set()
        return real_wait(self, timeout)

    _interrupting_done(monkeypatch, first_wait)
    monkeypatch.setattr(threading.Event, "wait", later_wait)
    before = _fds_before()
    try:
        with pytest.raises(KeyboardInterrupt):
            _start(["/bin/true"])
    finally:
        release.set()  # (a caller that did not wait)
    monkeypatch.setattr(threading.Event, "wait", real_wait)
    assert finished.wait(10)  # (a launcher left running on its own: let it finish before we judge)
    assert not closed_under_launcher
    assert _fds() == before


def test_interrupt_after_waitpid_reaped_bwrap(monkeypatch) -> None:
    """Ctrl-C landing after ``waitpid`` returned: the interrupt comes out (not a
    ``ChildProcessError`` from ``__exit__`` reaping again), the pidfd is closed, and a
    later wait says the status is lost."""
    before = _fds_before()
    proc = _start(["/bin/true"])
    real = os.waitpid

    def waitpid(pid, flags):
        monkeypatch.setattr(os, "waitpid", real)
        real(pid, flags)
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "waitpid", waitpid)
    with pytest.raises(KeyboardInterrupt), proc:
        proc.wait()
    assert _fds() == before
    with pytest.raises(S.SandboxError, match="exit status"):
        proc.wait()


# --- no pidfd (kernel < 5.3) --------------------------------------------------------------


def _no_pidfd(monkeypatch) -> None:
    def pidfd_open(*_):
        raise OSError(errno.ENOSYS, "Function not implemented")

    monkeypatch.setattr(os, "pidfd_open", pidfd_open)


def test_wait_timeout_without_pidfd(monkeypatch, spawned) -> None:
    _no_pidfd(monkeypatch)
    proc = _start(["/bin/sleep", "3"])
    with proc:
        t = time.monotonic()
        with pytest.raises(subprocess.TimeoutExpired):
            proc.wait(0.2)
        assert time.monotonic() - t < 1.5
        kill_tree(proc)
    assert proc.returncode == -signal.SIGKILL
