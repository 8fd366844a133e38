"""``BwrapExecutor``: run a ``SandboxSpec`` under Debian's bubblewrap (``/usr/bin/bwrap``).

Theory of operation. Each run is one ``bwrap`` process (its own session and process
group) whose command line is derived from the spec by ``bwrap_argv``:

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
  the PID namespace, and a private ``/tmp`` tmpfs;
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
import posixpath
import shutil
import subprocess
import termios
import threading
import time
from collections.abc import Mapping
from typing import BinaryIO

from .errors import SandboxError, SandboxUnavailable
from .executor import Executor, OutputCallback, Result
from .limits import Limits, kill_tree, supervise
from .seccomp import build_filter
from .spec import BUILD_TOP, HOMELESS, SandboxSpec, build_env

#: Top-level rootfs entries mapped into the sandbox, in mount order.
ROOTFS_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: Debian's update-alternatives links live under /etc; a toolchain tree needs them.
ROOTFS_ETC = ("etc/alternatives",)

#: Host device nodes bound into the sandbox's /dev (what bwrap's --dev binds, minus pts).
DEV_NODES = ("null", "zero", "full", "random", "urandom", "tty")
_DEV_LINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)

_probe_lock = threading.Lock()
_probed: dict[str, str] = {}  # bwrap path -> version string, for probes that passed


def etc_files(spec: SandboxSpec) -> dict[str, bytes]:
    """The generated /etc files: the build user, groups, and localhost."""
    return {"passwd": _passwd(spec).encode(), "group": _group(spec).encode(), "hosts": _HOSTS.encode()}


def _passwd(spec: SandboxSpec) -> str:
    return (
        "root:x:0:0:root:/:/noshell\n"
        f"kiln:x:{spec.uid}:{spec.gid}:kiln build user:{HOMELESS}:/noshell\n"
        "nobody:x:65534:65534:nobody:/:/noshell\n"
    )


def _group(spec: SandboxSpec) -> str:
    return f"root:x:0:\nkiln:x:{spec.gid}:\nnogroup:x:65534:\n"


_HOSTS = "127.0.0.1 localhost\n::1 localhost\n"

#: /proc entries that are not per-namespace, made read-only over the sandbox's /proc.
#: When kiln runs as root the sandbox's uid maps to host uid 0, and the kernel lets a
#: global-root euid write sysctls without any capability: kernel.core_pattern would run
#: a program of the build's choosing as root on the host. bwrap means to do this itself
#: but skips it when access(W_OK) on the 0555 directory fails, which it always does.
#: (/proc/sys/net reads the *reader's* namespace, so the host's /proc/sys serves.)
_PROC_RO = [
    *("--ro-bind-try", "/proc/sys", "/proc/sys"),
    *("--ro-bind-try", "/proc/sysrq-trigger", "/proc/sysrq-trigger"),
    *("--ro-bind-try", "/proc/irq", "/proc/irq"),
    *("--ro-bind-try", "/proc/bus", "/proc/bus"),
]


def _common_flags(spec_network: bool, uid: int, gid: int, hostname: str) -> list[str]:
    flags = ["--unshare-all", "--unshare-user"]
    if spec_network:
        flags.append("--share-net")
    flags += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    flags += ["--uid", str(uid), "--gid", str(gid), "--hostname", hostname]
    return flags


def dev_flags() -> list[str]:
    """The sandbox's /dev (see the module docstring)."""
    flags = ["--perms", "0755", "--tmpfs", "/dev"]
    for name in DEV_NODES:
        flags += ["--dev-bind", "/dev/" + name, "/dev/" + name]
    for target, link in _DEV_LINKS:
        flags += ["--symlink", target, link]
    # /dev/shm: a sticky dir on that tmpfs rather than a tmpfs of its own (each mount
    # costs the sandbox setup time)
    return flags + ["--perms", "1777", "--dir", "/dev/shm"]


def _unread(fd: int) -> int:
    """Bytes waiting in the pipe ``fd`` (``FIONREAD``)."""
    buf = array.array("i", [0])
    fcntl.ioctl(fd, termios.FIONREAD, buf)
    return buf[0]


def bwrap_argv(
    bwrap: str,
    spec: SandboxSpec,
    etc_fds: Mapping[str, int],
    seccomp_fd: int | None = None,
    block_fd: int | None = None,
) -> list[str]:
    """The full bwrap command line for ``spec``. ``etc_fds`` maps ``passwd``, ``group``,
    ``hosts`` to fds bwrap inherits holding their contents (``etc_files(spec)``);
    ``seccomp_fd`` (if given) is an inherited fd holding ``build_filter()``; ``block_fd``
    (if given) one the sandbox reads a byte from once it is set up (``--block-fd``)."""
    argv = [bwrap, *_common_flags(spec.network, spec.uid, spec.gid, spec.hostname), "--clearenv"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    if block_fd is not None:
        argv += ["--block-fd", str(block_fd)]
    for k, v in build_env(spec).items():
        argv += ["--setenv", k, v]
    if spec.rootfs is not None:
        for name in ROOTFS_DIRS + ROOTFS_ETC:
            host = os.path.join(spec.rootfs, name)
            if _link_above(spec.rootfs, name):
                continue  # (``etc`` a symlink: ``etc/alternatives`` would be the host's)
            if os.path.islink(host):
                argv += ["--symlink", os.readlink(host), "/" + name]
            elif os.path.isdir(host):
                argv += ["--ro-bind", host, "/" + name]
    argv += [
        *dev_flags(),
        "--proc",
        "/proc",
        *_PROC_RO,
        "--tmpfs",
        "/tmp",
        "--perms",
        "0755",
        "--dir",
        "/etc",
    ]
    for name, fd in etc_fds.items():
        # copied onto the root tmpfs (read-only with it after --remount-ro): no bind
        # mount per file, as --ro-bind-data would make
        argv += ["--perms", "0644", "--file", str(fd), "/etc/" + name]
    argv += ["--bind", spec.build_dir, BUILD_TOP]
    # bwrap would create missing parents of mount points mode 0700; make them 0755 so
    # paths like /kiln/store are traversable by everyone, as on the host.
    parents = {posixpath.dirname(d) for _, d in spec.ro_mounts + spec.rw_mounts}
    for p in sorted({a for d in parents for a in _ancestors(d)}):
        argv += ["--perms", "0755", "--dir", p]
    # Parents before children (sorted by depth, then path), so an input mounted inside a
    # writable directory (e.g. store paths over a scratch store dir) stays visible.
    mounts = [input_mount(h, d) for h, d in spec.ro_mounts]
    mounts += [("--bind", h, d) for h, d in spec.rw_mounts]
    for flag, host, dest in sorted(mounts, key=lambda m: (m[2].count("/"), m[2])):
        argv += [flag, host, dest]
    argv += ["--chdir", BUILD_TOP, "--remount-ro", "/", "--", *spec.argv]
    return argv


def input_mount(host: str, dest: str) -> tuple[str, str, str]:
    """The bwrap option showing input ``host`` read-only at ``dest``. An input that is a
    symlink (a store path may be one) is made as that symlink: a bind mount would follow
    it, mounting whatever it points to on the host (``ln -s /etc $out`` would show the
    host's /etc to every build using it)."""
    if os.path.islink(host):
        return ("--symlink", os.readlink(host), dest)
    return ("--ro-bind", host, dest)


def _link_above(top: str, rel: str) -> bool:
    """Whether a directory between ``top`` and ``top/rel`` (exclusive) is a symlink."""
    parts = rel.split("/")[:-1]
    return any(os.path.islink(os.path.join(top, *parts[: i + 1])) for i in range(len(parts)))


def _ancestors(d: str) -> list[str]:
    """``/a/b/c`` -> ``[/a, /a/b, /a/b/c]`` (``/`` excluded)."""
    parts = d.strip("/").split("/") if d != "/" else []
    return ["/" + "/".join(parts[: i + 1]) for i in range(len(parts))]


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
        cmd = [bwrap, *_common_flags(False, 1000, 1000, "localhost"), "--seccomp", str(sfd)]
        cmd += ["--ro-bind", "/", "/", "--proc", "/proc", *dev_flags(), "--remount-ro", "/"]
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
