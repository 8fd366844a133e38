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
* environment: ``--clearenv`` then exactly ``build_env(spec)``; ``spec.umask`` (022)
  set in the child before exec (inherited through bwrap);
* lifetime: ``--die-with-parent``, ``--new-session``; limits and killing in ``limits``.

Availability: the constructor locates bwrap and runs one probe sandbox with the very
flags builds use; any failure raises ``SandboxUnavailable`` with bwrap's own message.
The probe result is cached per binary for the life of the process, so per-build cost
is one ``Popen`` plus five memfds — no file is written to disk.
"""

from __future__ import annotations

import array
import fcntl
import os
import shutil
import subprocess
import termios
import threading
import time
from typing import BinaryIO

from .bwrapargv import bwrap_argv, common_flags, dev_flags, etc_files, proc_flags
from .errors import SandboxError, SandboxUnavailable
from .executor import Executor, OutputCallback, Result
from .limits import Limits, kill_tree, supervise
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
    ``pass_fds`` makes it inheritable in the child only)."""
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


def probe(bwrap: str) -> str:
    """Check that ``bwrap`` can create a build sandbox here; return its version.

    Runs ``bwrap --version`` inside a sandbox made with the flags builds use (the host
    root bound read-only only for the probe, so nothing else is needed). Raises
    ``SandboxUnavailable`` with bwrap's message on failure. Cached per path.
    """
    with _probe_lock:
        if bwrap in _probed:
            return _probed[bwrap]
        sfd = _memfd("kiln-seccomp", build_filter())
        cmd = [bwrap, *common_flags(False, 1000, 1000, "localhost"), "--seccomp", str(sfd)]
        cmd += ["--ro-bind", "/", "/", "--proc", "/proc", *proc_flags(), *dev_flags(), "--remount-ro", "/"]
        cmd += ["--", bwrap, "--version"]
        try:
            p = subprocess.run(
                cmd, stdin=subprocess.DEVNULL, capture_output=True, timeout=30, env={}, pass_fds=(sfd,)
            )
        except (OSError, subprocess.TimeoutExpired) as e:
            raise SandboxUnavailable(f"cannot run the bubblewrap sandbox {bwrap}: {e}") from e
        finally:
            os.close(sfd)
        out = p.stdout.decode(errors="replace").strip()
        if p.returncode != 0 or not out.startswith("bubblewrap"):
            msg = (p.stderr or p.stdout).decode(errors="replace").strip() or f"exit status {p.returncode}"
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
        self.version = probe(path)
        self._live: set[subprocess.Popen[bytes]] = set()
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
        # Everything bwrap reads besides the host paths comes from memfds: nothing is
        # written to disk per build (a temp dir with three files cost ~1-4 ms of ext4
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
            seccomp_fd = _memfd("kiln-seccomp", build_filter())
            fds.append(seccomp_fd)
            etc_fds = {}
            for name, data in etc_files(spec).items():
                etc_fds[name] = _memfd("kiln-etc-" + name, data)
                fds.append(etc_fds[name])
            argv = bwrap_argv(self.bwrap, spec, etc_fds, seccomp_fd, setup_r)
            # Options go through a memfd too (``--args FD``; bwrap takes only options from
            # it, the command stays on the command line): no ARG_MAX limit for large
            # closures, and the sandbox's pid 1 (a fork of bwrap) shows no host paths.
            sep = argv.index("--")
            argfd = _memfd("kiln-bwrap-args", os.fsencode("\0".join(argv[1:sep]) + "\0"))
            fds.append(argfd)
            limits = Limits(spec.timeout, spec.max_silent, spec.max_log_bytes)
            start = time.monotonic()
            # Started under the lock so cancel_all() never misses a run that is starting.
            with self._live_lock:
                proc = subprocess.Popen(
                    [self.bwrap, "--args", str(argfd), *argv[sep:]],
                    pass_fds=[*fds, setup_r],
                    stdin=subprocess.DEVNULL,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,  # own process group: killpg reaches bwrap
                    umask=spec.umask,  # inherited through bwrap by the builder
                    env={},
                    bufsize=0,
                )
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
