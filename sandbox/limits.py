"""Parent-side supervision of a sandboxed process: stream its log, enforce the limits.

Theory of operation. The sandbox leader (bwrap) is started in its own session, so its
process group id equals its pid, with stdout+stderr on one pipe. ``supervise`` waits on
that pipe and on a pidfd of the leader with ``poll`` — no sleeping, no polling
interval: it wakes exactly when output arrives, when the leader exits, or when the
nearest deadline (wall clock or silence) passes. Output is copied to the log as it
arrives (and to ``on_output``), truncated at the log limit.

Killing: ``kill_tree`` sends SIGKILL to the leader's process group and ``proc.kill()``
(for a ``bwrapstart.Bwrap``: bwrap and the sandbox's init, held by a pidfd). Everything
inside the sandbox is in a PID namespace whose init the kernel tears down with every
process in it — including ones that called setsid() or double-forked. ``supervise``
returns only after the pipe reached EOF and the leader was reaped; the leader's context
(``Bwrap.__exit__``) then sees the init gone, killing it if it outlived bwrap (a build
can take it over and forge bwrap's exit: ``bwrapstart``). Any exception while
supervising (Ctrl-C, an ``on_output`` that raises) kills the tree before propagating.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import BinaryIO, Literal, Protocol

from .executor import OutputCallback

_CHUNK = 1 << 16
#: After a kill, how long to wait for the pipe to close before giving up (s). The
#: kernel tears a PID namespace down in milliseconds; this only bounds a pathology.
_DRAIN_AFTER_KILL = 10.0


@dataclass(frozen=True, slots=True)
class Limits:
    """Wall-clock seconds, seconds of silence, log bytes; ``None`` = unlimited."""

    timeout: float | None = None
    max_silent: float | None = None
    max_log_bytes: int | None = None


#: the limit a run broke (``Outcome.breached``; a ``Result.reason`` too)
Breach = Literal["timeout", "silent", "log-limit"]


@dataclass(frozen=True, slots=True)
class Outcome:
    """What ``supervise`` saw: the limit that was breached (if any) and the log size."""

    breached: Breach | None
    log_bytes: int
    returncode: int


_MAX_WAIT_MS = 86_400_000  # a day


class Process(Protocol):
    """What is used of the sandbox leader (a ``subprocess.Popen`` has it all)."""

    pid: int

    @property
    def stdout(self) -> BinaryIO | None: ...

    def wait(self, timeout: float | None = None) -> int: ...

    def kill(self) -> None: ...


def kill_tree(proc: Process) -> None:
    """SIGKILL the process group led by ``proc`` (started with start_new_session=True),
    unless ``proc`` is reaped (its group id may be someone else's now), and ``proc.kill()``."""
    if getattr(proc, "returncode", None) is None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        proc.kill()


def _drain(fd: int, deadline: float) -> None:
    """Read and discard until EOF or ``deadline`` (monotonic)."""
    os.set_blocking(fd, True)
    while True:
        left = deadline - time.monotonic()
        if left <= 0:
            return
        p = select.poll()  # (not select: any fd number, a kiln with over 1024 open)
        p.register(fd, select.POLLIN)
        if p.poll(int(left * 1000) + 1) and not os.read(fd, _CHUNK):
            return


def supervise(
    proc: Process,
    log: BinaryIO,
    on_output: OutputCallback | None,
    limits: Limits,
    start: float,
) -> Outcome:
    """Stream ``proc.stdout`` into ``log`` until EOF and exit, enforcing ``limits``.

    ``start`` is the monotonic time the run began (the wall-clock limit counts from it).
    On return the process tree is gone and ``proc`` has been reaped.
    """
    assert proc.stdout is not None
    fd = proc.stdout.fileno()
    os.set_blocking(fd, False)
    try:
        pidfd: int | None = os.pidfd_open(proc.pid)
    except OSError:  # kernel < 5.3: notice the exit via EOF + wait instead
        pidfd = None
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    if pidfd is not None:
        poller.register(pidfd, select.POLLIN)
    written = 0
    breached: Breach | None = None
    eof = exited = False
    last_output = start
    end = start + limits.timeout if limits.timeout is not None else None
    cap = limits.max_log_bytes
    try:
        while not (eof and exited):
            now = time.monotonic()
            deadline = end
            reason: Breach = "timeout"
            if limits.max_silent is not None and (
                deadline is None or last_output + limits.max_silent < deadline
            ):
                deadline, reason = last_output + limits.max_silent, "silent"
            if deadline is not None and now >= deadline:
                breached = reason
                break
            if eof and pidfd is None:
                # No pidfd: the pipe closed, so the sandbox is ending; wait for the leader.
                try:
                    proc.wait(None if deadline is None else deadline - now)
                except subprocess.TimeoutExpired:
                    continue
                exited = True
                break
            # poll takes a C int of milliseconds: a deadline further off (a limit of weeks,
            # or 1e308 s) waits in steps of a day
            wait_ms = -1 if deadline is None else min(_MAX_WAIT_MS, max(0, int((deadline - now) * 1000) + 1))
            for ready, _ in poller.poll(wait_ms):
                if ready == pidfd:
                    exited = True
                    poller.unregister(pidfd)
                    continue
                while True:  # read everything available now
                    try:
                        chunk = os.read(fd, _CHUNK)
                    except BlockingIOError:
                        break
                    except OSError as e:  # pragma: no cover - EIO etc.: treat as EOF
                        if e.errno != errno.EINTR:
                            chunk = b""
                        else:
                            continue
                    if not chunk:
                        eof = True
                        poller.unregister(fd)
                        break
                    last_output = time.monotonic()
                    if cap is not None and written + len(chunk) > cap:
                        chunk = chunk[: cap - written]
                        breached = "log-limit"
                    if chunk:
                        log.write(chunk)
                        written += len(chunk)
                        if on_output is not None:
                            on_output(chunk)
                    if breached:
                        break
                if breached:
                    break
            if breached:
                break
        if breached:
            kill_tree(proc)
            if not eof:
                _drain(fd, time.monotonic() + _DRAIN_AFTER_KILL)
        returncode = proc.wait()
    except BaseException:
        kill_tree(proc)
        with contextlib.suppress(Exception):
            _drain(fd, time.monotonic() + _DRAIN_AFTER_KILL)
        with contextlib.suppress(Exception):
            proc.wait()
        raise
    finally:
        if pidfd is not None:
            os.close(pidfd)
    return Outcome(breached=breached, log_bytes=written, returncode=returncode)
