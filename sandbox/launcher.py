"""The launcher: the one thread that starts every bwrap, in the fixed process state of
``procstate`` (which says what that state is and sets what is set from outside).

How, without ``fork``. A ``preexec_fn`` could set all of this in the child, but it makes
``Popen`` fork the whole kiln process instead of vfork-ing it (3.5 ms more CPU per
build here, 9 ms with a 150 MB heap: page tables are copied and every page the parent
writes afterwards faults), and running Python between fork and exec in a process with
threads (the build loop's) is unsafe. Instead:

* one long-lived thread, the launcher, starts every bwrap with ``os.posix_spawn``
  (vfork-like): it resets every signal disposition and the mask, makes a new session,
  and places bwrap's fds (``dup2`` to ``FIXED_FDS``, closing any other inheritable
  fd). State that ``posix_spawn`` takes from the *calling thread* is set once in the
  launcher: its own filesystem context (``unshare(CLONE_FS)``: a umask and cwd of its
  own, set per build without touching kiln's), personality, and, when allowed, a UTS
  namespace with the fixed domain name and no supplementary groups (``setgroups`` by
  the raw system call, which changes the calling thread's credentials alone; glibc's
  wrapper would change every thread's, kiln's own included);
* what is set per process from outside, the parent sets on bwrap (``fix_child``:
  ``prlimit``, ``sched_setaffinity``, ``sched_setscheduler``, ``setpriority``) while
  bwrap waits for its options: ``--args 3`` is a pipe the parent writes only after
  (``bwrapstart.start``), and bwrap reads it before anything else (parsing its options is
  the first thing it does, after reading ``/proc/sys/kernel/overflowuid``), so no
  process of the sandbox exists yet.

The launcher is also the thread bwrap's ``--die-with-parent`` (``PR_SET_PDEATHSIG``)
watches: it lives as long as the kiln process. It blocks every signal, from its birth
(it is started with them blocked): a signal sent to the kiln process goes to a thread
that does not block it, and code that blocks a signal in the main thread to collect it
with ``sigtimedwait`` (``kiln run``'s forwarding) must find it pending, not taken by
the launcher and handled as if kiln had got it. ``posix_spawn`` gives bwrap an empty
mask whatever the launcher's.

Interrupts. ``spawn`` may be called on the main thread (the probe, ``--check``
rebuilds), where a signal handler can raise (``KeyboardInterrupt``) at any bytecode.
The fds of a request belong to the caller, but the launcher reads them until the
request is done, so a request is either withdrawn before the launcher takes it
(``_Request.claim``: whoever takes it first decides) or waited for to the end, through
further interrupts. The launcher hands the pid over in the caller's ``started`` list as
it starts the child, so even an interrupt landing as ``spawn`` returns leaves the caller
its pid to reap (without ``started``, an interrupted ``spawn`` kills and reaps the child
itself). So when ``spawn`` returns or raises, the launcher no longer uses the caller's
fds and no child is left unowned.
"""

from __future__ import annotations

import contextlib
import ctypes
import os
import platform
import queue
import resource
import signal
import threading
from collections.abc import Sequence

from .procstate import DOMAINNAME, INF, STACK, libc

#: Every catchable signal (``valid_signals`` leaves out glibc's 32 and 33).
_SIGNALS = tuple(s for s in signal.valid_signals() if s not in (signal.SIGKILL, signal.SIGSTOP))
_PER_LINUX = 0
_CLONE_FS = 0x00000200
_CLONE_NEWUTS = 0x04000000
#: ``setgroups`` system call numbers (64-bit group ids) where kiln knows them.
_SYS_SETGROUPS = {"x86_64": 116, "aarch64": 159}

_personality = libc.personality
_personality.argtypes, _personality.restype = [ctypes.c_ulong], ctypes.c_int
_unshare = libc.unshare
_unshare.argtypes, _unshare.restype = [ctypes.c_int], ctypes.c_int
_setdomainname = libc.setdomainname
_setdomainname.argtypes = [ctypes.c_char_p, ctypes.c_size_t]
_setdomainname.restype = ctypes.c_int
_signal = libc.signal
_signal.argtypes, _signal.restype = [ctypes.c_int, ctypes.c_void_p], ctypes.c_void_p


class _Request:
    __slots__ = ("path", "argv", "fds", "umask", "started", "claim", "done", "pid", "error")

    def __init__(
        self,
        path: str,
        argv: Sequence[str],
        fds: Sequence[tuple[int, int]],
        umask: int,
        started: list[int] | None,
    ) -> None:
        self.path, self.argv, self.fds, self.umask = path, list(argv), tuple(fds), umask
        self.started = started
        # Taken (never blocking: an interrupt cannot stop it halfway) by the launcher
        # before it reads the request, or by an interrupted caller withdrawing it.
        self.claim = threading.Lock()
        self.done = threading.Event()
        self.pid: int | None = None
        self.error: BaseException | None = None


def kill_and_reap(pid: int) -> None:
    """SIGKILL and reap our child ``pid`` (not yet anyone else's to reap), whatever
    interrupts come meanwhile (they are dropped: the caller is propagating one)."""
    with contextlib.suppress(ProcessLookupError):
        os.kill(pid, signal.SIGKILL)
    while True:
        try:
            os.waitpid(pid, 0)
            return
        except ChildProcessError:
            return
        except BaseException:  # another Ctrl-C: finish reaping first
            continue


class _Launcher:
    """The thread that starts every bwrap (see the module docstring)."""

    def __init__(self) -> None:
        self._requests: queue.SimpleQueue[_Request] = queue.SimpleQueue()
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self.domainname_fixed = False
        self.groups_dropped = False
        # SIGCHLD ignored (inherited: ``trap '' CHLD``) makes the kernel reap children
        # at once, and bwrap's exit status is lost. Its default action is to ignore it
        # too, so the default changes nothing else for kiln.
        # (Through Python when it can, so that ``signal.getsignal`` says so too; only the
        # main thread may, and the launcher may be made by a build loop's worker.)
        if signal.getsignal(signal.SIGCHLD) == signal.SIG_IGN:
            if threading.current_thread() is threading.main_thread():
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
            else:
                _signal(signal.SIGCHLD, signal.SIG_DFL)
        thread = threading.Thread(target=self._serve, name="kiln-sandbox-launcher", daemon=True)
        # A new thread starts with its creator's mask: all blocked from its first
        # instruction (see the module docstring), ours restored at once.
        mask = signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals())
        try:
            thread.start()
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        self._ready.wait()
        if self._error is not None:
            raise self._error

    def spawn(
        self,
        path: str,
        argv: Sequence[str],
        fds: Sequence[tuple[int, int]],
        umask: int,
        started: list[int] | None,
    ) -> int:
        req = _Request(path, argv, fds, umask, started)
        try:
            self._requests.put(req)
            req.done.wait()
        except BaseException:
            # Interrupted. Not yet taken (or not even queued): withdrawn, the launcher
            # will skip it. Taken: it may be using our fds right now, so wait for the
            # end, then undo what it started.
            if req.claim.acquire(blocking=False):
                raise
            while not req.done.is_set():
                with contextlib.suppress(BaseException):  # another Ctrl-C: still wait
                    req.done.wait()
            if req.pid is not None and started is None:  # (else the caller's, in ``started``)
                kill_and_reap(req.pid)
            raise
        if req.error is not None:
            raise req.error
        assert req.pid is not None
        return req.pid

    def _serve(self) -> None:
        try:
            # A filesystem context (umask, cwd) of this thread's own: os.umask below
            # then changes no other thread's.
            if _unshare(_CLONE_FS) != 0:
                raise OSError(ctypes.get_errno(), "unshare(CLONE_FS) for the sandbox launcher thread")
            os.chdir("/")
            _personality(_PER_LINUX)
            # A UTS namespace needs CAP_SYS_ADMIN; without it the host's name stays.
            if _unshare(_CLONE_NEWUTS) == 0:
                self.domainname_fixed = _setdomainname(DOMAINNAME, len(DOMAINNAME)) == 0
            # bwrap passes kiln's supplementary groups on (those the sandbox does not
            # map as 65534); dropping them needs CAP_SETGID (root). This thread only.
            nr = _SYS_SETGROUPS.get(platform.machine())
            if nr is not None:
                self.groups_dropped = libc.syscall(ctypes.c_long(nr), ctypes.c_int(0), None) == 0
        except BaseException as e:
            self._error = e
            return
        finally:
            self._ready.set()
        while True:
            req = self._requests.get()
            if not req.claim.acquire(blocking=False):
                continue  # withdrawn by its interrupted caller, whose fds may be closed
            try:
                req.pid = self._spawn(req)
                if req.started is not None:
                    req.started.append(req.pid)
            except BaseException as e:
                req.error = e
            req.done.set()

    @staticmethod
    def _spawn(req: _Request) -> int:
        targets = {dst for _, dst in req.fds}
        sources = {src for src, _ in req.fds}
        actions: list[tuple[int, ...]] = []
        after: list[tuple[int, ...]] = []
        # fds kiln (or whoever started it) left inheritable: not for the build; an
        # inheritable source only once it is copied
        for entry in os.listdir("/proc/self/fd"):
            fd = int(entry)
            if fd > 2 and fd not in targets:
                with contextlib.suppress(OSError):  # (the listing's own fd, now closed)
                    if os.get_inheritable(fd):
                        (after if fd in sources else actions).append((os.POSIX_SPAWN_CLOSE, fd))
        actions += [(os.POSIX_SPAWN_DUP2, src, dst) for src, dst in req.fds]
        actions += after
        os.umask(req.umask)
        # RLIMIT_STACK cannot be set from outside like the other limits: exec saves it
        # when it starts and writes it back when it ends, after posix_spawn returned
        # (vfork resumes the parent as the old memory is released), undoing a
        # ``prlimit`` made meanwhile. So it is inherited: kiln's soft limit is set
        # just for the spawn (the hard limit, which kiln could not raise back, is left).
        soft, hard = resource.getrlimit(resource.RLIMIT_STACK)
        want = STACK if hard == INF or hard >= STACK else hard
        if want != soft:
            resource.setrlimit(resource.RLIMIT_STACK, (want, hard))
        try:
            return os.posix_spawn(
                req.path,
                req.argv,
                {},
                file_actions=actions,
                setsid=True,
                setsigmask=(),
                setsigdef=_SIGNALS,
            )
        finally:
            if want != soft:
                resource.setrlimit(resource.RLIMIT_STACK, (soft, hard))


_launcher: _Launcher | None = None
_launcher_lock = threading.Lock()


def spawn(
    path: str,
    argv: Sequence[str],
    fds: Sequence[tuple[int, int]],
    umask: int,
    started: list[int] | None = None,
) -> int:
    """Start ``path`` with ``argv`` and no environment in a session of its own, from
    the launcher thread: signals default and unblocked, personality ``PER_LINUX``,
    ``umask``, cwd ``/``, the fixed domain name when allowed, and exactly the fds
    ``fds`` maps (ours -> the child's, 0-2 included). Returns the pid; call
    ``fix_child`` on it before letting it run on. ``OSError`` if it cannot be started.

    The launcher also appends the pid to ``started`` as it starts the child, so a
    caller interrupted before it has the return value still has the pid to reap: with
    ``started``, an interrupted ``spawn`` leaves the child to the caller (else it kills
    and reaps it itself). When ``spawn`` returns or raises, the launcher no longer uses
    ``fds``.

    No source fd may be one of the child's numbers but its own (``dup2`` runs in
    order): see ``high_fd``."""
    global _launcher
    with _launcher_lock:
        if _launcher is None:
            _launcher = _Launcher()
    return _launcher.spawn(path, argv, fds, umask, started)


def domainname_fixed() -> bool:
    """Whether builds get ``DOMAINNAME`` (kiln may make a UTS namespace)."""
    launcher = _launcher
    return launcher is not None and launcher.domainname_fixed


def groups_dropped() -> bool:
    """Whether builds start without supplementary groups (kiln may ``setgroups``)."""
    launcher = _launcher
    return launcher is not None and launcher.groups_dropped
