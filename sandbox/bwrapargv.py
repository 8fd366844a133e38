"""The bubblewrap command line for a ``SandboxSpec`` (``bwrap_argv``), and its pieces
(``etc_files``, ``dev_flags``, ``proc_flags``, ``input_mount``). Pure: it reads the host
only to tell symlinks from directories and to see which /proc entries the kernel has,
and starts nothing; what each flag is for, and why, is in
``bwrap``'s module docstring, which runs it.
"""

from __future__ import annotations

import os
import posixpath
import stat
from collections.abc import Mapping

from .devnodes import DEV_NODES, HOST
from .spec import BUILD_TOP, HOMELESS, SandboxSpec, build_env

#: Top-level rootfs entries mapped into the sandbox, in mount order.
ROOTFS_DIRS = ("usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32")
#: Debian's update-alternatives links live under /etc; a toolchain tree needs them.
ROOTFS_ETC = ("etc/alternatives",)

_DEV_LINKS = (
    ("/proc/self/fd", "/dev/fd"),
    ("/proc/self/fd/0", "/dev/stdin"),
    ("/proc/self/fd/1", "/dev/stdout"),
    ("/proc/self/fd/2", "/dev/stderr"),
)


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
PROC_READONLY = ("sys", "sysrq-trigger", "irq", "bus")
#: /proc files hidden behind /dev/null from every build: ``keys`` and ``key-users`` are
#: 0444 and list the reading uid's keys (descriptions, ids) and key quotas: the keys of
#: the user running kiln, host root's for a root kiln (an audit's unprivileged build
#: wrote its user's key descriptions into its output).
PROC_MASKED = ("keys", "key-users")
#: ... and, when kiln runs as root, so the build is host uid 0 (uid 1000 maps to it):
#: the 0400 files whose only guard is the file mode (host slab, vmalloc, timer,
#: page-type and per-page data: ``kpagecount`` gave a build 50 MB; ``kmsg`` and
#: ``kcore`` are 0400 too but need capabilities a build does not have). An unprivileged
#: kiln's builds cannot read these, and every other /proc file is one any host user
#: may read. OCI runtimes mask more (``timer_stats``, ``sched_debug``, ...:
#: world-readable here); each mount costs ~0.1 ms per sandbox, which a build loop pays
#: per derivation.
PROC_MASKED_AS_ROOT = (
    *("slabinfo", "vmallocinfo", "pagetypeinfo", "timer_list"),
    *("kpagecount", "kpageflags", "kpagecgroup"),
)


def root_only_proc_files(proc: str = "/proc") -> tuple[str, ...]:
    """Top-level regular files of the host's /proc (``proc``) that only root may read,
    beyond the named ones: kernels and hypervisors add their own (a Firecracker guest
    here had a 0400 ``program_cpu`` that gave a root kiln's build 17 KB of host data), so
    a root kiln masks whatever this kernel has, not only what was audited. ``OSError``
    if /proc cannot be listed: a root kiln does not build without knowing what to mask."""
    out = []
    for name in sorted(os.listdir(proc)):
        if name.isdigit():
            continue  # (a process's directory)
        try:
            st = os.lstat(f"{proc}/{name}")
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode) and not st.st_mode & stat.S_IROTH:
            out.append(name)
    return tuple(out)


def proc_flags(as_root: bool | None = None, proc: str = "/proc") -> tuple[str, ...]:
    """The bwrap options, after ``--proc /proc``, that make ``PROC_READONLY`` read-only
    and mask ``PROC_MASKED`` and, when kiln runs as root (``as_root``; default: the
    effective uid is 0), ``PROC_MASKED_AS_ROOT`` and ``root_only_proc_files()``. Only
    entries this kernel has (seen in the host's /proc, ``proc``, the same kernel's): bwrap
    cannot mount over one that does not exist. Computed for every sandbox, not cached: a
    module loaded during a long ``kiln build`` can add a root-only file, and listing
    /proc costs under 0.5 ms."""
    if as_root is None:
        as_root = os.geteuid() == 0
    flags: list[str] = []
    for name in PROC_READONLY:
        if os.path.lexists(f"{proc}/{name}"):
            flags += ["--ro-bind", f"{proc}/{name}", "/proc/" + name]
    masked = PROC_MASKED + (PROC_MASKED_AS_ROOT + root_only_proc_files(proc) if as_root else ())
    for name in dict.fromkeys(masked):  # (in order, each once)
        if os.path.isfile(f"{proc}/{name}"):
            flags += ["--ro-bind", "/dev/null", "/proc/" + name]
    return tuple(flags)


#: The options every bwrap command line starts with, which ``bwrapstart.start`` sends last,
#: once bwrap's process state is set: bwrap refuses the rest without them (``--hostname``
#: requires ``--unshare-uts``).
GATED = ("--unshare-all", "--unshare-user")


def common_flags(spec_network: bool, uid: int, gid: int, hostname: str) -> list[str]:
    flags = [*GATED]
    if spec_network:
        flags.append("--share-net")
    flags += ["--die-with-parent", "--new-session", "--cap-drop", "ALL"]
    flags += ["--uid", str(uid), "--gid", str(gid), "--hostname", hostname]
    return flags


#: Sizes of the sandbox's in-memory file systems (bytes). A tmpfs's pages belong to no
#: process, so the out-of-memory killer would pick host processes, not the build, if
#: one filled RAM (bwrap's default is half of RAM each). Builds write temporary files
#: to /build (``TMPDIR``); /tmp is for tools that ignore it, /dev for POSIX shared
#: memory (/dev/shm).
TMP_SIZE = 1 << 30
DEV_SIZE = 512 << 20


def dev_flags(sources: Mapping[str, str] = HOST) -> list[str]:
    """The sandbox's /dev (see the module docstring): each of ``DEV_NODES`` bound from
    ``sources`` (default: the host's; ``devnodes.copies()`` when kiln owns those)."""
    flags = ["--perms", "0755", "--size", str(DEV_SIZE), "--tmpfs", "/dev"]
    for name in DEV_NODES:
        flags += ["--dev-bind", sources[name], "/dev/" + name]
    for target, link in _DEV_LINKS:
        flags += ["--symlink", target, link]
    # /dev/shm: a sticky dir on that tmpfs rather than a tmpfs of its own (each mount
    # costs the sandbox setup time)
    return flags + ["--perms", "1777", "--dir", "/dev/shm"]


def bwrap_argv(
    bwrap: str,
    spec: SandboxSpec,
    etc_fds: Mapping[str, int],
    seccomp_fd: int | None = None,
    block_fd: int | None = None,
    dev_sources: Mapping[str, str] = HOST,
    info_fd: int | None = None,
) -> list[str]:
    """The full bwrap command line for ``spec``. ``etc_fds`` maps ``passwd``, ``group``,
    ``hosts`` to fds bwrap inherits holding their contents (``etc_files(spec)``);
    ``seccomp_fd`` (if given) is an inherited fd holding ``build_filter()``; ``block_fd``
    (if given) one the sandbox reads a byte from once it is set up (``--block-fd``);
    ``dev_sources`` the files bound as /dev's nodes (``dev_flags``); ``info_fd`` (if
    given) one bwrap writes the sandbox init's pid and namespaces to (``--info-fd``)."""
    argv = [bwrap, *common_flags(spec.network, spec.uid, spec.gid, spec.hostname), "--clearenv"]
    if seccomp_fd is not None:
        argv += ["--seccomp", str(seccomp_fd)]
    if block_fd is not None:
        argv += ["--block-fd", str(block_fd)]
    if info_fd is not None:
        argv += ["--info-fd", str(info_fd)]
    for k, v in build_env(spec).items():
        argv += ["--setenv", k, v]
    # /etc first: bwrap makes a missing parent of a mount point (/etc/alternatives
    # below) mode 0700, and a later ``--dir`` leaves an existing directory's mode alone
    argv += ["--perms", "0755", "--dir", "/etc"]
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
        *dev_flags(dev_sources),
        "--proc",
        "/proc",
        *proc_flags(),
        "--size",
        str(TMP_SIZE),
        "--tmpfs",
        "/tmp",
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
