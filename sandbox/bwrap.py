"""``BwrapExecutor``: run a ``SandboxSpec`` under Debian's bubblewrap (``/usr/bin/bwrap``).

Theory of operation. Each run is one ``bwrap`` process (its own session and process
group) whose command line is derived from the spec by ``bwrapargv.bwrap_argv``:

* namespaces: ``--unshare-all`` (user, ipc, pid, net, uts, cgroup) with the user
  namespace required, not "try"; ``--share-net`` only when ``spec.network`` (never for
  builds); one user namespace only (see ``/dev`` below) and no nested ones: the
  seccomp filter refuses CLONE_NEWUSER (bwrap's ``--disable-userns`` would need a
  second namespace, ~1 ms per sandbox);
* identity: ``--uid/--gid`` (1000), ``--hostname localhost``, ``--cap-drop ALL``,
  generated ``/etc/passwd``, ``/etc/group``, ``/etc/hosts`` (passed in memfds and bound
  with ``--file`` onto the root tmpfs, read-only once it is remounted; the host's
  ``/etc`` is never touched or shown);
* setuid/setgid file modes and new user namespaces refused by a seccomp filter
  (``seccomp.py``);
* filesystem: the root is a fresh tmpfs, remounted read-only once everything is in
  place; rootfs dirs (``usr``, ``bin``, ``lib``...) read-only at the same names (a
  top-level symlink such as Debian's ``bin -> usr/bin`` is reproduced as a symlink);
  inputs read-only, outputs read-write, ``/build`` read-write and the cwd; a fresh
  ``/dev`` tmpfs with the host's null, zero, full, random, urandom and tty bound in,
  ``fd``/``stdin``/``stdout``/``stderr`` links and a sticky ``shm`` dir, but no ``pts``:
  mounting a devpts needs uid 0 in the namespace, i.e. a second user namespace for the
  build's uid 1000 (what ``--dev`` does), and builds need no terminals; ``/proc`` of
  the PID namespace with what is not per-namespace made read-only (``/proc/sys``...)
  and, when kiln runs as root, what only host root may read masked
  (``bwrapargv.proc_flags``), and a private ``/tmp`` tmpfs;
* environment: ``--clearenv`` then exactly ``build_env(spec)``;
* process state: nothing of the kiln process's (limits, signals, affinity, nice,
  personality, fds, domain name): ``procstate`` starts bwrap (``posix_spawn`` from one
  launcher thread, then ``fix_child`` while bwrap waits for the rest of its options on
  ``--args 3``) with the fixed state in its table, ``spec.umask`` (022) included;
* lifetime: ``--die-with-parent``, ``--new-session``; limits and killing in ``limits``.

Options hand-over (``_start``): all or nothing, whenever kiln dies. bwrap takes its
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

Reaping: ``_Bwrap.wait`` honours its timeout with or without a pidfd (kernel < 5.3:
``WNOHANG`` polls), and a bwrap already reaped (a Ctrl-C that landed after ``waitpid``
returned) raises ``SandboxError`` saying its status is lost, never ``ChildProcessError``
in place of the interrupt.

Availability: the constructor locates bwrap and runs one probe sandbox with the very
flags builds use; any failure raises ``SandboxUnavailable`` with bwrap's own message.
The probe result is cached per binary for the life of the process, so per-build cost
is one ``posix_spawn``, five memfds and three pipes — no file is written to disk.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import io
import os
import select
import shutil
import signal
import subprocess
import termios
import threading
import time
from typing import BinaryIO

from .bwrapargv import GATED, bwrap_argv, common_flags, dev_flags, etc_files, proc_flags
from .errors import SandboxError, SandboxUnavailable
from .executor import Executor, OutputCallback, Result
from .limits import Limits, kill_tree, supervise
from .procstate import (
    BLOCK_FD,
    ETC_FDS,
    GATE_FD,
    OPTIONS_FD,
    SECCOMP_FD,
    description,
    fix_child,
    high_fd,
    kill_and_reap,
    spawn,
)
from .seccomp import build_filter
from .spec import SandboxSpec

_probe_lock = threading.Lock()
_probed: dict[str, str] = {}  # bwrap path -> version string, for probes that passed


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe ``fd`` (``FIONREAD``)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def _memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding ``data``, positioned at 0 (close-on-exec;
    ``procstate.spawn`` copies it to the fixed number bwrap reads it from)."""
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


def _check_host_paths(spec: SandboxSpec) -> None:
    """Fail early, with a clear message, on host paths bwrap could not bind."""
    if not os.path.isdir(spec.build_dir):
        raise SandboxError(f"build directory {spec.build_dir} does not exist (expected a directory)")
    if spec.rootfs is not None and (os.path.islink(spec.rootfs) or not os.path.isdir(spec.rootfs)):
        found = (
            "a symlink"
            if os.path.islink(spec.rootfs)
            else "nothing there"
            if not os.path.lexists(spec.rootfs)
            else "not a directory"
        )
        raise SandboxError(f"toolchain rootfs {spec.rootfs}: expected a directory, found {found}")
    for host, dest in spec.ro_mounts:
        if not os.path.lexists(host):
            raise SandboxError(f"input {host} (for {dest}) does not exist on the host")
    for host, dest in spec.rw_mounts:
        if not os.path.isdir(host):
            raise SandboxError(f"output directory {host} (for {dest}) does not exist on the host")


def probe_options() -> list[str]:
    """The probe's options: a build's flags, the host root bound read-only (so it needs
    nothing else), ``--seccomp`` on ``SECCOMP_FD``."""
    options = [*common_flags(False, 1000, 1000, "localhost"), "--seccomp", str(SECCOMP_FD)]
    return options + [
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        *proc_flags(),
        *dev_flags(),
        "--remount-ro",
        "/",
    ]


def probe(bwrap: str) -> str:
    """Check that ``bwrap`` can create a build sandbox here; return its version.

    Runs ``bwrap --version`` inside a sandbox made with the flags builds use (the host
    root bound read-only only for the probe, so nothing else is needed). Raises
    ``SandboxUnavailable`` with bwrap's message on failure. Cached per path.
    """
    with _probe_lock:
        if bwrap in _probed:
            return _probed[bwrap]
        # started as builds are (``_start``), so a process state kiln cannot set fails here
        options = probe_options()
        log = io.BytesIO()
        sfd = high_fd(_memfd("kiln-seccomp", build_filter()))
        try:
            proc = _start(bwrap, options, ["--", bwrap, "--version"], [(sfd, SECCOMP_FD)], 0o022)
            with proc:
                outcome = supervise(proc, log, None, Limits(timeout=30), time.monotonic())
        except OSError as e:
            raise SandboxUnavailable(f"cannot run the bubblewrap sandbox {bwrap}: {e}") from e
        finally:
            os.close(sfd)
        if outcome.breached is not None:
            raise SandboxUnavailable(f"cannot run the bubblewrap sandbox {bwrap}: no answer within 30 s")
        out = log.getvalue().decode(errors="replace").strip()
        if outcome.returncode != 0 or not out.startswith("bubblewrap"):
            msg = out or f"exit status {outcome.returncode}"
            raise SandboxUnavailable(
                f"the bubblewrap sandbox does not work on this machine ({bwrap}): {msg}\n"
                "kiln builds only inside a sandbox (user, mount, pid, net namespaces); "
                "enable unprivileged user namespaces (sysctl user.max_user_namespaces > 0; "
                "Debian < 11: kernel.unprivileged_userns_clone=1; Ubuntu >= 23.10: "
                "kernel.apparmor_restrict_unprivileged_userns=0 or an AppArmor profile for bwrap; "
                "in a container: allow unshare/mount, e.g. a seccomp profile permitting them)"
            )
        _probed[bwrap] = out
        return out


class _Bwrap:
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
        self._pidfd_lock = threading.Lock()  # kill() (any thread) vs closing the pidfd

    def wait(self, timeout: float | None = None) -> int:
        """bwrap's exit status (-N: killed by signal N), waiting at most ``timeout``
        seconds (``TimeoutExpired``). ``SandboxError`` if it was reaped elsewhere."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.001
        while not self._reap(block=deadline is None):
            assert deadline is not None
            left = deadline - time.monotonic()
            if left <= 0:
                raise subprocess.TimeoutExpired("bwrap", timeout)  # type: ignore[arg-type]
            if self._pidfd is not None:
                select.select([self._pidfd], [], [], left)
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
            if self.returncode is not None or self._lost or self._closed:
                return  # reaped (the pid may be another process's now) or being reaped
            with contextlib.suppress(ProcessLookupError):
                if self._pidfd is not None:
                    signal.pidfd_send_signal(self._pidfd, signal.SIGKILL)
                else:
                    os.kill(self.pid, signal.SIGKILL)

    def __enter__(self) -> _Bwrap:
        return self

    def __exit__(self, exc_type: object, *exc: object) -> None:
        try:
            self.stdout.close()
            try:
                self.wait()
            except SandboxError:
                if exc_type is None:
                    raise
                # else the exception in flight says more (it interrupted our waitpid)
        finally:
            with self._pidfd_lock:
                self._closed = True
                if self._pidfd is not None:
                    os.close(self._pidfd)
                    self._pidfd = None


def _nul_joined(options: list[str]) -> bytes:
    return os.fsencode("\0".join(options) + "\0")


#: What the gate pipe carries (see the module docstring): atomic as one write.
_GATE = _nul_joined(list(GATED))
assert len(_GATE) <= select.PIPE_BUF


def _pipe() -> tuple[int, int]:
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


def _start(
    bwrap: str, options: list[str], command: list[str], fds: list[tuple[int, int]], umask: int
) -> _Bwrap:
    """Start ``bwrap --args 3 --args 4 <command>`` (``argv[0]`` is ``bwrap``, never its
    host path) in the fixed process state of ``procstate``, with stdin ``/dev/null``,
    stdout and stderr one pipe (``.stdout``), and ``fds`` (ours, above ``FIXED_FDS`` ->
    the child's) as its only other fds. ``options`` start with ``GATED`` and set
    ``--hostname``: the rest go in a memfd (fd 4), ``GATED`` through the gate pipe (fd
    3) once ``fix_child`` has set bwrap's limits; until then it waits, reading. See the
    module docstring for why this is all or nothing.

    Every fd made here is in ``owned`` from the statement that makes it until closed
    (or, for ``.stdout``, taken over by the ``_Bwrap``), and the started bwrap in
    ``started`` (filled by the launcher) until a ``_Bwrap`` has it: whatever fails, a
    Ctrl-C included, each is closed, or killed and reaped, once."""
    if tuple(options[: len(GATED)]) != GATED or "--hostname" not in options:
        raise ValueError(f"bwrap options must start with {GATED} and set --hostname (see _start)")
    owned: list[int] = []
    started: list[int] = []
    proc: _Bwrap | None = None
    try:
        owned.append(high_fd(_memfd("kiln-bwrap-options", _nul_joined(options[len(GATED) :]))))
        owned.extend(_pipe())
        owned.extend(_pipe())
        owned.append(high_fd(os.open(os.devnull, os.O_RDWR | os.O_CLOEXEC)))  # as Popen's DEVNULL
        opts, gate_r, gate_w, out_r, out_w, null = owned
        child = [(null, 0), (out_w, 1), (out_w, 2), (gate_r, GATE_FD), (opts, OPTIONS_FD), *fds]
        argv = ["bwrap", "--args", str(GATE_FD), "--args", str(OPTIONS_FD), *command]
        spawn(bwrap, argv, child, umask, started)
        owned.remove(out_r)  # (first: a Ctrl-C between the two leaks it, never closes it twice)
        proc = _Bwrap(started[0], out_r)
        fix_child(proc.pid)
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


class BwrapExecutor(Executor):
    """Runs builds under bubblewrap. See the module docstring.

    ``bwrap`` is the binary to use (default: ``bwrap`` on PATH, else /usr/bin/bwrap).
    Raises ``SandboxUnavailable`` if bwrap is missing or broken.
    """

    def __init__(self, bwrap: str | os.PathLike[str] | None = None) -> None:
        if bwrap is None:
            found = shutil.which("bwrap") or shutil.which("bwrap", path="/usr/bin:/bin")
            if found is None:
                raise SandboxUnavailable(
                    "bubblewrap (bwrap) is not installed; kiln builds only inside its sandbox "
                    "(Debian: apt-get install bubblewrap)"
                )
            bwrap = found
        path = os.path.abspath(os.fspath(bwrap))
        if not (os.path.isfile(path) and os.access(path, os.X_OK)):
            raise SandboxUnavailable(f"bubblewrap not found at {path} (expected an executable bwrap)")
        self.bwrap = path
        self.version = probe(path)
        self._live: set[_Bwrap] = set()
        self._live_lock = threading.Lock()

    def isolation(self) -> dict[str, object]:
        """The sandbox settings every build gets, for provenance (see module docstring)."""
        return {
            "executor": "bubblewrap",
            "version": self.version.removeprefix("bubblewrap "),
            "namespaces": ["user", "mount", "pid", "ipc", "uts", "net", "cgroup"],
            "nestedUserNamespaces": False,
            "capabilities": [],
            "seccomp": "no-setuid-setgid",
            "rootReadOnly": True,
            "uid": 1000,
            "gid": 1000,
            "hostname": "localhost",
            "umask": "022",
            "processState": description(),
        }

    def cancel_all(self) -> None:
        """Kill every build this executor is running (from any thread); each ``run``
        then returns a Result with reason 'killed'. Safe to call from a signal handler's
        thread while worker threads are inside ``run``."""
        with self._live_lock:
            live = list(self._live)
        for proc in live:
            kill_tree(proc)

    def run(self, spec: SandboxSpec, log: BinaryIO, *, on_output: OutputCallback | None = None) -> Result:
        _check_host_paths(spec)
        # Everything bwrap reads besides the host paths comes from memfds and pipes:
        # nothing is written to disk per build (a temp dir with three files cost ~1-4 ms of ext4
        # metadata work under load, as much as the sandbox itself).
        fds: list[int] = []
        # One byte the sandbox reads once every mount is made, just before the seccomp
        # filter and the builder's exec (bwrap's ``--block-fd``). Still unread after a
        # failed run, it says bwrap failed to set the sandbox up: not the builder's
        # failure (both exit with status 1). Our read end stays open to look.
        setup_r, setup_w = os.pipe()
        os.write(setup_w, b"\0")
        os.close(setup_w)
        try:
            setup_r = high_fd(setup_r)
            # Each fd bwrap gets is at a fixed number in the child (``procstate.FIXED_FDS``),
            # whatever its number here: the sandbox's pid 1 (a fork of bwrap) is always
            # ``bwrap --args 3 --args 4 -- <argv>`` and holds the same fds in every build.
            seccomp_fd = high_fd(_memfd("kiln-seccomp", build_filter()))
            fds.append(seccomp_fd)
            child_fds = [(seccomp_fd, SECCOMP_FD), (setup_r, BLOCK_FD)]
            for name, data in etc_files(spec).items():
                fd = high_fd(_memfd("kiln-etc-" + name, data))
                fds.append(fd)
                child_fds.append((fd, ETC_FDS[name]))
            argv = bwrap_argv("bwrap", spec, ETC_FDS, SECCOMP_FD, BLOCK_FD)
            # Options go through fds (``--args``; bwrap takes only options from them,
            # the command stays on the command line): no ARG_MAX limit for large
            # closures, and the sandbox's pid 1 (a fork of bwrap) shows no host paths.
            sep = argv.index("--")
            limits = Limits(spec.timeout, spec.max_silent, spec.max_log_bytes)
            start = time.monotonic()
            # Started under the lock so cancel_all() never misses a run that is starting.
            with self._live_lock:
                proc = _start(self.bwrap, argv[1:sep], argv[sep:], child_fds, spec.umask)
                self._live.add(proc)
        except OSError as e:
            os.close(setup_r)
            raise SandboxUnavailable(f"cannot start the sandbox {self.bwrap}: {e}") from e
        except BaseException:
            os.close(setup_r)
            raise
        finally:
            for fd in fds:
                os.close(fd)
        try:
            try:
                with proc:
                    outcome = supervise(proc, log, on_output, limits, start)
            finally:
                with self._live_lock:
                    self._live.discard(proc)
            set_up = _unread(setup_r) == 0
        finally:
            os.close(setup_r)
        duration = time.monotonic() - start
        rc = outcome.returncode
        if outcome.breached is not None:
            return Result(None, -rc if rc < 0 else None, outcome.breached, duration, outcome.log_bytes)  # type: ignore[arg-type]
        if rc < 0:
            return Result(None, -rc, "killed", duration, outcome.log_bytes)
        if rc != 0 and not set_up:
            return Result(rc, None, "setup-failed", duration, outcome.log_bytes)
        return Result(rc, None, "ok" if rc == 0 else "failed", duration, outcome.log_bytes)
