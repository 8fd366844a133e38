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
  ``/dev`` tmpfs with null, zero, full, random, urandom and tty bound in (the host's,
  or, when kiln owns those (root), copies no build can ``chmod``: ``devnodes``),
  ``fd``/``stdin``/``stdout``/``stderr`` links and a sticky ``shm`` dir, but no ``pts``:
  mounting a devpts needs uid 0 in the namespace, i.e. a second user namespace for the
  build's uid 1000 (what ``--dev`` does), and builds need no terminals; ``/proc`` of
  the PID namespace with what is not per-namespace made read-only (``/proc/sys``...),
  the key lists and, when kiln runs as root, what only host root may read masked
  (``bwrapargv.proc_flags``), and a private ``/tmp`` tmpfs;
* environment: ``--clearenv`` then exactly ``build_env(spec)``; one too large for
  ``execve`` (a variable or argument over 128 KiB, or 2 MiB in all) is refused before
  bwrap starts, naming it (``execsize``);
* process state: nothing of the kiln process's (limits, signals, affinity, nice,
  personality, fds, domain name): ``launcher`` starts bwrap (``posix_spawn`` from one
  launcher thread, then ``fix_child`` while bwrap waits for the rest of its options on
  ``--args 3``) with the fixed state in ``procstate``'s table, ``spec.umask`` (022) and
  ``spec.cpus`` (every CPU unless set) included;
* lifetime: ``--die-with-parent``, ``--new-session``; limits and killing in ``limits``.

Starting one bwrap (``bwrapstart.start``): its options are handed over all or nothing,
whenever kiln dies, and it is reaped whatever interrupts kiln.

Availability: the constructor locates bwrap and runs one probe sandbox with the very
flags builds use; any failure raises ``SandboxUnavailable`` with bwrap's own message.
The probe result is cached per binary for the life of the process, so per-build cost
is one ``posix_spawn``, four memfds and five pipes — no file is written to disk.
"""

from __future__ import annotations

import array
import contextlib
import fcntl
import io
import json
import os
import select
import shutil
import termios
import threading
import time
from collections.abc import Mapping
from typing import BinaryIO

from . import bwrapstart, devnodes, execsize
from .bwrapargv import bwrap_argv, common_flags, dev_flags, etc_files, proc_flags
from .bwrapstart import Bwrap, memfd
from .devnodes import HOST
from .errors import SandboxError, SandboxUnavailable
from .executor import Executor, OutputCallback, Result
from .launcher import domainname_fixed, groups_dropped
from .limits import Limits, kill_tree, supervise
from .procstate import (
    BLOCK_FD,
    ETC_FDS,
    INFO_FD,
    SECCOMP_FD,
    description,
    high_fd,
)
from .seccomp import build_filter
from .spec import SandboxSpec

#: bubblewrap refuses more arguments than this in all (``MAX_ARGS``; ``--args`` files
#: included): ``Exceeded maximum number of arguments 9000``. Each input is one mount of
#: three, so a build's input closure can hold about 2,900 paths.
BWRAP_MAX_ARGS = 9000

_probe_lock = threading.Lock()
_probed: dict[str, str] = {}  # bwrap path -> version string, for probes that passed


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe ``fd`` (``FIONREAD``)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def _close(*fds: int) -> None:
    for fd in fds:
        with contextlib.suppress(OSError):
            os.close(fd)


#: How long bwrap may take to name the sandbox's init on ``--info-fd`` (s): it writes it
#: right after forking it.
_INFO_TIMEOUT = 30.0


def _adopt_init(proc: Bwrap, info_fd: int) -> None:
    """Read bwrap's ``--info-fd`` JSON from ``info_fd`` and hand the sandbox's init (its
    pid and PID namespace) to ``proc.adopt_init``. Nothing if bwrap closed the fd without
    (it failed before making the sandbox: its status says why); ``SandboxError`` if it
    says nothing in ``_INFO_TIMEOUT`` or names no init."""
    buf = b""
    deadline = time.monotonic() + _INFO_TIMEOUT
    while True:
        # (bwrap's init may keep the write end open: the JSON ends the message, not EOF)
        with contextlib.suppress(ValueError):
            info = json.loads(buf)
            try:
                proc.adopt_init(int(info["child-pid"]), int(info["pid-namespace"]))
            except (KeyError, TypeError, ValueError):
                raise SandboxError(
                    f"bwrap's --info-fd names no init and PID namespace: {buf[:200]!r}"
                ) from None
            return
        left = deadline - time.monotonic()
        poller = select.poll()
        poller.register(info_fd, select.POLLIN)
        if left <= 0 or not poller.poll(int(left * 1000) + 1):
            raise SandboxError(f"bwrap did not name the sandbox's init within {_INFO_TIMEOUT:.0f} s")
        chunk = os.read(info_fd, 4096)
        if not chunk:
            return
        buf += chunk


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


def probe_options(dev_sources: Mapping[str, str] = HOST) -> list[str]:
    """The probe's options: a build's flags (/dev's nodes from ``dev_sources``), the
    host root bound read-only (so it needs nothing else), ``--seccomp`` on ``SECCOMP_FD``."""
    options = [*common_flags(False, 1000, 1000, "localhost"), "--seccomp", str(SECCOMP_FD)]
    return options + [
        "--ro-bind",
        "/",
        "/",
        "--proc",
        "/proc",
        *proc_flags(),
        *dev_flags(dev_sources),
        "--remount-ro",
        "/",
    ]


def probe(bwrap: str, dev_sources: Mapping[str, str] = HOST) -> str:
    """Check that ``bwrap`` can create a build sandbox here; return its version.

    Runs ``bwrap --version`` inside a sandbox made with the flags builds use (the host
    root bound read-only only for the probe, so nothing else is needed). Raises
    ``SandboxUnavailable`` with bwrap's message on failure. Cached per path.
    """
    with _probe_lock:
        if bwrap in _probed:
            return _probed[bwrap]
        # started as builds are (``bwrapstart.start``), so a process state kiln cannot set fails here
        options = probe_options(dev_sources)
        log = io.BytesIO()
        sfd = high_fd(memfd("kiln-seccomp", build_filter()))
        try:
            proc = bwrapstart.start(bwrap, options, ["--", bwrap, "--version"], [(sfd, SECCOMP_FD)], 0o022)
            with proc:
                outcome = supervise(proc, log, None, Limits(timeout=30), time.monotonic())
        except OSError as e:
            raise SandboxUnavailable(f"cannot run the bubblewrap sandbox {bwrap}: {e}") from e
        finally:
            os.close(sfd)
        if outcome.breached is not None:
            raise SandboxUnavailable(f"cannot run the bubblewrap sandbox {bwrap}: no answer within 30 s")
        out = log.getvalue().decode(errors="replace").strip()
        if outcome.returncode != 0 and "Unknown option" in out:  # (not a user-namespace problem)
            raise SandboxUnavailable(
                f"the bubblewrap at {bwrap} is too old for kiln ({out}): kiln needs bubblewrap 0.5 or "
                "later (Debian 12 and Ubuntu 22.04 have it)"
            )
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
        # kiln's copies of /dev's nodes when it owns the host's (``devnodes``)
        self._dev_needed = devnodes.needs_copies()
        self._dev_copied = self._dev_needed and devnodes.copies() is not None
        self.version = probe(path, self._dev_sources())
        self._live: set[Bwrap] = set()
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
            "devNodes": devnodes.describe(self._dev_copied, self._dev_needed),
            "processState": description(domainname_fixed(), groups_dropped()),
        }

    def _dev_sources(self) -> Mapping[str, str]:
        """The files to bind as /dev's nodes in the next run (``SandboxError`` if kiln's
        copies are gone and cannot be remade)."""
        if not self._dev_copied:
            return HOST
        try:
            sources = devnodes.copies()
        except OSError as e:
            raise SandboxError(str(e)) from e
        assert sources is not None
        return sources

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
        # a command or environment execve refuses (E2BIG), named here, not by errno
        execsize.check(spec, self.bwrap)
        dev_sources = self._dev_sources()
        # Everything bwrap reads besides the host paths comes from memfds and pipes:
        # nothing is written to disk per build (a temp dir with three files cost ~1-4 ms of ext4
        # metadata work under load, as much as the sandbox itself).
        fds: list[int] = []
        # One byte the sandbox reads once every mount is made, just before the seccomp
        # filter and the builder's exec (bwrap's ``--block-fd``). Still unread after a
        # failed run, it says bwrap failed to set the sandbox up: not the builder's
        # failure (both exit with status 1). Our read end stays open to look.
        # The seccomp filter goes through a pipe written (in one write of under PIPE_BUF
        # bytes: all or nothing) once kiln holds the sandbox's init (``_adopt_init``):
        # bwrap reads it to EOF right after the block byte, so the builder waits for it.
        # If kiln dies first, bwrap reads nothing and both the init and the builder die
        # applying an empty filter (EINVAL): no build runs orphaned.
        # ``keep``: ours for the run (closed on a failure here); ``fds``: bwrap's (closed
        # once it has its copies). Each fd is in one of them from the statement that
        # makes it: nothing leaks, nothing is closed twice.
        keep: list[int] = []
        try:
            setup_r, block_w = bwrapstart.pipe_above()
            keep.append(setup_r)
            fds.append(block_w)
            os.write(block_w, b"\0")
            info_r, info_w = bwrapstart.pipe_above()  # bwrap's ``--info-fd``: the init's pid
            keep.append(info_r)
            fds.append(info_w)
            sec_r, setup_w = bwrapstart.pipe_above()
            keep.append(setup_w)
            fds.append(sec_r)
            # Each fd bwrap gets is at a fixed number in the child (``procstate.FIXED_FDS``),
            # whatever its number here: the sandbox's pid 1 (a fork of bwrap) is always
            # ``bwrap --args 3 --args 4 -- <argv>`` and holds the same fds in every build.
            seccomp = build_filter()
            assert len(seccomp) <= select.PIPE_BUF
            child_fds = [(sec_r, SECCOMP_FD), (setup_r, BLOCK_FD), (info_w, INFO_FD)]
            for name, data in etc_files(spec).items():
                fd = high_fd(memfd("kiln-etc-" + name, data))
                fds.append(fd)
                child_fds.append((fd, ETC_FDS[name]))
            argv = bwrap_argv("bwrap", spec, ETC_FDS, SECCOMP_FD, BLOCK_FD, dev_sources, INFO_FD)
            # bwrap counts its command line (``--args 3 --args 4 -- <argv>``, argv[0] aside)
            # and the options read from the fds: len(argv) - 1 + 4
            if (n := len(argv) + 3) > BWRAP_MAX_ARGS:
                raise SandboxError(
                    f"this build needs {n} bubblewrap arguments, with its {len(spec.ro_mounts)} "
                    f"inputs (one mount of three each); bubblewrap takes at most {BWRAP_MAX_ARGS}, "
                    f"about {BWRAP_MAX_ARGS // 3 - 100} inputs"
                )
            # Options go through fds (``--args``; bwrap takes only options from them,
            # the command stays on the command line): no ARG_MAX limit for large
            # closures, and the sandbox's pid 1 (a fork of bwrap) shows no host paths.
            sep = argv.index("--")
            limits = Limits(spec.timeout, spec.max_silent, spec.max_log_bytes)
            start = time.monotonic()
            # Started under the lock so cancel_all() never misses a run that is starting.
            with self._live_lock:
                proc = bwrapstart.start(self.bwrap, argv[1:sep], argv[sep:], child_fds, spec.umask, spec.cpus)
                self._live.add(proc)
        except OSError as e:
            _close(*keep)
            raise SandboxUnavailable(f"cannot start the sandbox {self.bwrap}: {e}") from e
        except BaseException:
            _close(*keep)
            raise
        finally:
            _close(*fds)
        try:
            try:
                with proc:
                    try:
                        _adopt_init(proc, info_r)
                        with contextlib.suppress(BrokenPipeError):  # bwrap failed: its status says why
                            os.write(setup_w, seccomp)  # the sandbox may run the builder now
                    except BaseException:
                        kill_tree(proc)
                        raise
                    finally:
                        _close(info_r, setup_w)
                    outcome = supervise(proc, log, on_output, limits, start)
            finally:
                with self._live_lock:
                    self._live.discard(proc)
            set_up = _unread(setup_r) == 0
        finally:
            os.close(setup_r)
        duration = time.monotonic() - start
        rc = outcome.returncode
        if proc.outlived:  # bwrap's exit was forged: whatever it said, the build is not ok
            note = b"\nkiln: the build took over its sandbox's init and outlived bwrap; killed\n"
            log.write(note)
            return Result(None, 9, "killed", duration, outcome.log_bytes + len(note))
        if outcome.breached is not None:
            return Result(None, -rc if rc < 0 else None, outcome.breached, duration, outcome.log_bytes)
        if rc < 0:
            return Result(None, -rc, "killed", duration, outcome.log_bytes)
        if rc != 0 and not set_up:
            return Result(rc, None, "setup-failed", duration, outcome.log_bytes)
        return Result(rc, None, "ok" if rc == 0 else "failed", duration, outcome.log_bytes)
