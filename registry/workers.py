"""Running the registry server: one listening socket, ``workers`` pre-forked processes,
kept running by the parent.

Theory of operation
-------------------
- **One socket, many workers.** The parent binds the socket (so ``--listen
  127.0.0.1:0`` works and errors surface before forking), then forks ``workers``
  processes; each runs its own event loop and its own source (own database connection)
  and accepts on the shared socket; the kernel spreads connections. With one worker the
  process serves by itself (a service manager restarts it if it dies).
- **Slot 0 runs the background tasks** (the app's ``kiln_background`` list: the signed
  index timestamp's re-signing, the temp-file sweep). Whichever process holds slot 0
  runs them, so a restarted worker 0 runs them again.
- **A dead worker is logged and replaced.** The parent blocks SIGCHLD, SIGTERM, SIGINT
  and SIGHUP and takes them one at a time with ``sigtimedwait`` (no handler runs in the
  middle of a fork or a ``waitpid``). A worker that ends without being asked to is
  logged on stderr (slot, pid, signal or exit status) and its slot is forked again after
  ``BACKOFF_FIRST`` seconds, doubling with each death of that slot within
  ``RESTART_WINDOW``. The ``RESTARTS_MAX + 1``-th death of one slot within the window is
  a crash loop: the parent stops every worker and raises ``KilnError`` (``kiln serve``
  exits 1, so ``Restart=on-failure`` applies; hiding a crash loop would not help).
- **Signals.** SIGTERM or SIGINT: the parent sends SIGTERM to every worker, waits for
  all and returns (``kiln serve`` exits 0, as before). SIGHUP: sent on to every worker,
  which reopens its access log (``servelog.reopen_access_logs``: logrotate's ``mv`` then
  HUP) and goes on serving. A forked worker inherits the blocked mask and restores the
  caller's only once its event loop handles those signals, so a signal sent meanwhile
  waits instead of ending a half-started worker. Workers ask the kernel for SIGTERM when
  the parent dies (even by SIGKILL), so none outlives it holding the port.
- **Who is alive** (``live_workers``, for ``GET /healthz``): the parent keeps one byte
  per slot in an anonymous shared mapping made before the first fork, 1 from a worker's
  fork to its reaping, so every worker reads how many are running. Only the parent
  writes it; a worker may read a count a moment old.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import mmap
import os
import signal
import socket
import sys
import time
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import NoReturn

from aiohttp import web

from kiln.store.errors import KilnError

from . import servelog

#: a slot whose worker died more than RESTARTS_MAX times within RESTART_WINDOW seconds
#: stops the server
RESTART_WINDOW = 60.0
RESTARTS_MAX = 5
#: seconds before the first restart of a slot; doubled for each further death in the window
BACKOFF_FIRST = 0.1
#: the parent wakes at least this often (a signal another thread took sets a flag only)
_TICK = 1.0
_SIGNALS = frozenset({signal.SIGCHLD, signal.SIGTERM, signal.SIGINT, signal.SIGHUP})

App = Callable[[], Awaitable[web.Server]] | Callable[[], web.Server]

#: one byte per worker slot, shared by the parent and its workers (module docstring);
#: None outside ``serve`` or with one worker (``_SINGLE``)
_LIVE: mmap.mmap | None = None
_SINGLE = False


def live_workers() -> tuple[int, int] | None:
    """``(running, configured)`` workers of the server this process belongs to, or None
    when not run by ``serve`` (an app made by a test, say)."""
    if _SINGLE:
        return 1, 1
    if _LIVE is None:
        return None
    return sum(_LIVE[:]), len(_LIVE)


def bind(host: str, port: int) -> socket.socket:
    fam = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(fam, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.listen(4096)
    sock.setblocking(False)
    return sock


async def _run(make: App, sock: socket.socket, background: bool, mask: Iterable[int]) -> None:
    """Serve ``make()``'s app on ``sock`` until SIGTERM/SIGINT, reopening the access log
    on SIGHUP; with ``background``, also run the coroutines of its ``kiln_background``
    list. The signal mask becomes ``mask`` once the loop handles those signals."""
    made = make()
    app = made if isinstance(made, web.Server) else await made
    # Every request allocates a few dozen short-lived objects: with the default
    # threshold (700) the cyclic GC runs every few requests and re-scans the long-lived
    # ones (the app, the caches). Move those out of its sight and let it run less often
    # (5-10 % more narinfo requests per second in A/B runs here).
    gc.freeze()
    gc.set_threshold(100_000, 50, 100)
    # (the shutdown timeout is the runner's since aiohttp 3.9: a site's is deprecated)
    runner = web.ServerRunner(app, handle_signals=False, shutdown_timeout=1.0)
    await runner.setup()
    site = web.SockSite(runner, sock)
    await site.start()
    tasks = [asyncio.create_task(t()) for t in getattr(app, "kiln_background", ())] if background else []
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    loop.add_signal_handler(signal.SIGHUP, servelog.reopen_access_logs)
    signal.pthread_sigmask(signal.SIG_SETMASK, mask)
    await stop.wait()
    for t in tasks:
        t.cancel()
    await runner.cleanup()


def _die_with_parent() -> None:
    """Ask the kernel to SIGTERM this worker if the parent dies (even by SIGKILL), so a
    killed ``kiln serve`` never leaves workers holding the port."""
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _say(text: str) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(f"kiln serve: {text}", file=sys.stderr, flush=True)


def _fork(make: App, sock: socket.socket, slot: int, mask: Iterable[int]) -> int:
    """Fork the worker of ``slot``; its pid. The child never returns: it serves, then
    exits 0 (asked to stop) or 1 (it failed, said in one line on stderr)."""
    for stream in (sys.stdout, sys.stderr):  # (a child flushing inherited buffers would repeat them)
        with contextlib.suppress(OSError, ValueError, AttributeError):
            stream.flush()
    pid = os.fork()
    if pid == 0:
        _child(make, sock, slot, mask)
    return pid


def _child(make: App, sock: socket.socket, slot: int, mask: Iterable[int]) -> NoReturn:
    status = 1
    try:
        _die_with_parent()
        asyncio.run(_run(make, sock, slot == 0, mask))
        status = 0
    except BaseException as e:  # noqa: BLE001 - a worker must never unwind into the parent's code
        _say(f"worker {slot} (pid {os.getpid()}) failed: {servelog.one_line(str(e)) or type(e).__name__}")
    finally:
        os._exit(status)


def describe(status: int) -> str:
    """How a process ended, from its ``waitpid`` status: "was killed by SIGKILL",
    "exited with status 1"."""
    if os.WIFSIGNALED(status):
        sig = os.WTERMSIG(status)
        try:
            name = signal.Signals(sig).name
        except ValueError:
            name = f"signal {sig}"
        return f"was killed by {name}" + (" (core dumped)" if os.WCOREDUMP(status) else "")
    return f"exited with status {os.WEXITSTATUS(status)}"


def _mark(slot: int, alive: bool) -> None:
    """Record in the shared map whether ``slot`` has a worker (the parent only)."""
    if _LIVE is not None:
        _LIVE[slot] = 1 if alive else 0


@dataclass
class _Slot:
    """One worker place: its process (None while it waits to be forked again), when it
    is due to be forked, and when its workers died within the window."""

    pid: int | None = None
    due: float | None = None
    deaths: list[float] = field(default_factory=list)


def serve(make: App, sock: socket.socket, workers: int = 1, ready: Callable[[], None] | None = None) -> None:
    """Run the app on ``sock`` in ``workers`` processes until SIGTERM/SIGINT (module
    docstring); ``KilnError`` once one worker slot is in a crash loop."""
    global _LIVE, _SINGLE
    old_mask = signal.pthread_sigmask(signal.SIG_BLOCK, _SIGNALS)
    try:
        if workers <= 1:
            _SINGLE = True
            if ready:
                ready()
            asyncio.run(_run(make, sock, True, old_mask))
            return
        _LIVE = mmap.mmap(-1, workers)  # (MAP_SHARED | MAP_ANONYMOUS: inherited by every fork)
        _Supervisor(make, sock, workers, old_mask).run(ready)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old_mask)
        _SINGLE = False
        if _LIVE is not None:
            _LIVE.close()
            _LIVE = None


class _Supervisor:
    """The parent of ``workers`` forked workers (module docstring)."""

    def __init__(self, make: App, sock: socket.socket, workers: int, mask: Iterable[int]) -> None:
        self.make, self.sock, self.mask = make, sock, set(mask)
        self.slots = [_Slot() for _ in range(workers)]
        self.stopping = False
        self.failure: str | None = None
        self.flagged: list[int] = []  # signals a handler took instead of sigtimedwait

    def run(self, ready: Callable[[], None] | None) -> None:
        # The signals are blocked in this thread; should another thread take one, its
        # handler notes it here instead of ending the command (``cli/interrupts.py``).
        old = {
            s: signal.signal(s, lambda signum, _f: self.flagged.append(signum))
            for s in _SIGNALS - {signal.SIGCHLD}
        }
        try:
            for i, slot in enumerate(self.slots):
                slot.pid = _fork(self.make, self.sock, i, self.mask)
                _mark(i, True)
            if ready:
                ready()
            self._loop()
        finally:
            for s, h in old.items():
                signal.signal(s, h)
        if self.failure is not None:
            raise KilnError(self.failure)

    def _loop(self) -> None:
        while True:
            self._reap()
            if self.stopping and all(s.pid is None for s in self.slots):
                return
            now = time.monotonic()
            if not self.stopping:
                for i, slot in enumerate(self.slots):
                    if slot.pid is None and slot.due is not None and slot.due <= now:
                        slot.due = None
                        try:
                            slot.pid = _fork(self.make, self.sock, i, self.mask)
                        except OSError as e:  # (no memory or processes left: as a death)
                            self._died(i, f"worker {i} could not be forked ({e.strerror or e})")
                            continue
                        _mark(i, True)
                        _say(f"worker {i} restarted (pid {slot.pid})")
            dues = [s.due - now for s in self.slots if s.due is not None]
            got = signal.sigtimedwait(_SIGNALS, max(0.0, min([_TICK, *dues])))
            flagged, self.flagged = self.flagged, []
            for signum in [*([got.si_signo] if got is not None else []), *flagged]:
                self._on_signal(signum)

    def _on_signal(self, signum: int) -> None:
        if signum in (signal.SIGTERM, signal.SIGINT):
            self._stop()
        elif signum == signal.SIGHUP:
            self._send(signal.SIGHUP)

    def _send(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(slot.pid, signum)

    def _stop(self) -> None:
        self.stopping = True
        for slot in self.slots:
            slot.due = None
        self._send(signal.SIGTERM)

    def _reap(self) -> None:
        """Collect every ended worker: log it and schedule its slot, unless stopping."""
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            found = [(i, s) for i, s in enumerate(self.slots) if s.pid == pid]
            if not found:
                continue  # (not a worker)
            i, slot = found[0]
            slot.pid = None
            _mark(i, False)
            if self.stopping:
                continue
            self._died(i, f"worker {i} (pid {pid}) {describe(status)}")

    def _died(self, i: int, how: str) -> None:
        """Slot ``i`` lost its worker (``how``, for the log): fork it again after its
        backoff, or stop the server if that is one death too many within the window."""
        slot = self.slots[i]
        now = time.monotonic()
        slot.deaths = [t for t in slot.deaths if now - t < RESTART_WINDOW] + [now]
        n = len(slot.deaths)
        if n > RESTARTS_MAX:
            self.failure = f"{how}: {n} deaths within {RESTART_WINDOW:g} s; stopped every worker"
            _say(f"{how}; {n} deaths within {RESTART_WINDOW:g} s: stopping every worker")
            self._stop()
            return
        delay = BACKOFF_FIRST * 2 ** (n - 1)
        slot.due = now + delay
        _say(f"{how}; restarting it in {delay:g} s")
