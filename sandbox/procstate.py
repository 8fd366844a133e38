"""The process state every build starts with, whatever the state of the kiln process.

A child inherits much of its parent's process state through ``fork`` and ``exec``, and
bwrap passes all of it on to the builder. A build's output must not depend on how kiln
was started (``taskset``, ``ulimit``, ``nice``, ``setarch``, ``nohup``...), so bwrap is
started with every attribute below set to a fixed value (``spawn``, then ``fix_child``).
Another ``Executor`` must give its builders the same state (``executor.py``).

=====================  ===========================================================
Attribute              Value the builder starts with
=====================  ===========================================================
signal dispositions    ``SIG_DFL`` for every signal that can be caught, whatever
                       kiln ignores (``nohup``, ``trap '' INT``, ``cmd &``); except
                       32 and 33, glibc's internal signals, which glibc's
                       ``posix_spawn`` leaves ignored (a program's glibc installs
                       its handlers for them when it needs them)
signal mask            empty (nothing blocked)
personality            ``PER_LINUX`` (0): ``uname -m`` is the kernel's, ASLR on
                       (``setarch i686 -R`` does not reach the build)
CPU affinity           every CPU: the kernel keeps those kiln's cpuset cgroup allows
                       and that are online, so ``nproc`` counts them (under
                       ``taskset -c 0 kiln`` too; ``visible_cpus``); ``KILN_CORES``
                       is what to use. With ``spec.cpus`` set (``--check --vary``
                       sets 1), only the lowest-numbered ``spec.cpus`` of those
scheduling policy      ``SCHED_OTHER`` when allowed (from ``SCHED_IDLE`` it is not
                       without privilege: stays)
nice value             0 when allowed: lowering it (kiln run with ``nice -n 5``)
                       needs ``CAP_SYS_NICE`` or ``RLIMIT_NICE``; otherwise kiln's
resource limits        ``RLIMITS`` (soft, hard): ``core`` 0/0, ``nofile``
                       1024/524288, ``stack`` 8 MiB/kiln's hard limit (normally
                       unlimited; see ``launcher._Launcher._spawn``), ``memlock`` and
                       ``msgqueue`` the kernel's defaults, ``nice`` and ``rtprio``
                       0/0, all others unlimited. Lowering a limit always works;
                       raising a hard limit needs ``CAP_SYS_RESOURCE``, so a kiln
                       without it whose hard limit is below the target keeps that
                       hard limit and uses it as the soft limit too (capped at the
                       target soft value; ``fallback_limit``)
file descriptors       0 ``/dev/null``, 1 and 2 the log pipe; bwrap's own fds at
                       fixed numbers (``--args 3 --args 4``, ``FIXED_FDS``), nothing
                       else: the sandbox's pid 1 is ``bwrap --args 3 --args 4 -- <argv>``
argv[0] of bwrap       ``bwrap`` (the binary's host path is only the executable)
umask, cwd             ``spec.umask``; ``/`` (bwrap then enters ``/build``)
NIS domain name        ``(none)`` when kiln may make a UTS namespace
                       (``CAP_SYS_ADMIN``: root, or root of its user namespace):
                       bwrap starts in one whose domain name is ``(none)``, and the
                       build's, which bwrap unshares, copies it. Otherwise the
                       host's (see docs/sandbox.md)
supplementary groups   none when kiln may ``setgroups`` (``CAP_SETGID``: root; the
                       launcher drops them); otherwise kiln's, each shown as 65534
                       unless it is kiln's primary group (see docs/sandbox.md)
=====================  ===========================================================

How: the launcher thread (``launcher``) starts bwrap with ``os.posix_spawn`` in the
state ``posix_spawn`` and the calling thread give; ``fix_child`` sets the rest on
bwrap from outside while bwrap waits for its options (``bwrapstart.start``).
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import fcntl
import os
import resource
import threading
from collections.abc import Mapping

INF = resource.RLIM_INFINITY
MiB = 1 << 20

#: (name, resource, soft, hard) set on bwrap (``fix_child``). Values are those of a stock Linux
#: login session (systemd's ``nofile`` 1024/524288, the kernel's 8 MiB stack, 8 MiB
#: ``memlock`` since 5.16, 800 KiB ``msgqueue``), except ``core`` (no core dumps: a
#: crash would hand the build's memory to the host's ``core_pattern`` handler).
RLIMITS: tuple[tuple[str, int, int, int], ...] = (
    ("core", resource.RLIMIT_CORE, 0, 0),
    ("nofile", resource.RLIMIT_NOFILE, 1024, 524288),
    ("stack", resource.RLIMIT_STACK, 8 * MiB, INF),  # hard: kiln's (see launcher._Launcher._spawn)
    ("memlock", resource.RLIMIT_MEMLOCK, 8 * MiB, 8 * MiB),
    ("msgqueue", resource.RLIMIT_MSGQUEUE, 819200, 819200),
    ("nice", resource.RLIMIT_NICE, 0, 0),
    ("rtprio", resource.RLIMIT_RTPRIO, 0, 0),
    ("cpu", resource.RLIMIT_CPU, INF, INF),
    ("fsize", resource.RLIMIT_FSIZE, INF, INF),
    ("data", resource.RLIMIT_DATA, INF, INF),
    ("rss", resource.RLIMIT_RSS, INF, INF),
    ("as", resource.RLIMIT_AS, INF, INF),
    ("locks", getattr(resource, "RLIMIT_LOCKS", 10), INF, INF),  # (Python does not name it; 10 everywhere)
    ("rttime", resource.RLIMIT_RTTIME, INF, INF),
    ("nproc", resource.RLIMIT_NPROC, INF, INF),
    ("sigpending", resource.RLIMIT_SIGPENDING, INF, INF),
)

STACK = 8 * MiB

#: bwrap's fds in the child, always at these numbers: the two ``--args`` (the gate pipe,
#: then the options; see ``bwrapstart.start``), ``--seccomp``, ``--block-fd``, the
#: generated /etc files (``--file``), then ``--info-fd`` (where bwrap names the
#: sandbox's init: ``bwrap.BwrapExecutor.run``).
GATE_FD = 3
OPTIONS_FD = 4
SECCOMP_FD = 5
BLOCK_FD = 6
ETC_FDS: Mapping[str, int] = {"passwd": 7, "group": 8, "hosts": 9}
INFO_FD = 10
FIXED_FDS = (GATE_FD, OPTIONS_FD, SECCOMP_FD, BLOCK_FD, *ETC_FDS.values(), INFO_FD)

#: The NIS domain name of a fresh kernel (``UTS_DOMAINNAME``), as Nix sets it.
DOMAINNAME = b"(none)"

_CPU_BYTES = 8192 // 8  # the kernel reads as much of the mask as it has CPUs (NR_CPUS <= 8192)
_ALL_CPUS = (ctypes.c_ubyte * _CPU_BYTES)(*([0xFF] * _CPU_BYTES))

libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
_setaffinity = libc.sched_setaffinity
_setaffinity.argtypes = [ctypes.c_int, ctypes.c_size_t, ctypes.c_void_p]
_setaffinity.restype = ctypes.c_int


def fallback_limit(soft: int, hard: int, cur_hard: int) -> tuple[int, int]:
    """The limit to set when raising the hard limit to ``hard`` is not allowed: keep
    ``cur_hard`` and the soft limit ``soft`` if it fits under it, else ``cur_hard``."""
    if cur_hard == INF or (soft != INF and soft <= cur_hard):
        return soft, cur_hard
    return cur_hard, cur_hard


#: The limits ``fix_child`` could not set to the target, by name: what it set instead
#: (read back), for ``description``. Kiln's hard limits do not change while it runs, so
#: every build gets the same (the probe, ``bwrap.probe``, is the first).
FELL_BACK: dict[str, tuple[int, int]] = {}


def fix_child(pid: int, cpus: int | None = None) -> None:
    """Give process ``pid`` (bwrap, not yet running anything) the fixed limits, CPU
    affinity, scheduling policy and nice value of the module docstring; ``cpus``: at most
    that many CPUs in its affinity (``SandboxSpec.cpus``), ``None`` all. What only
    privilege could change (raising a hard limit or the priority) is left, as the
    table says (``FELL_BACK``); nothing else raises. Narrowing the affinity needs no
    privilege (``pid`` is our child), so failing to (``OSError``: ``pid`` gone) raises:
    a rebuild meant to see fewer CPUs never runs seeing all."""
    for name, res, soft, hard in RLIMITS:
        if res == resource.RLIMIT_STACK:
            continue  # set by the launcher (``launcher._Launcher._spawn``)
        try:
            resource.prlimit(pid, res, (soft, hard))
        except (ValueError, OSError):  # a hard limit we may not raise
            with contextlib.suppress(ValueError, OSError):
                resource.prlimit(pid, res, fallback_limit(soft, hard, resource.prlimit(pid, res)[1]))
            with contextlib.suppress(ValueError, OSError):
                FELL_BACK[name] = resource.prlimit(pid, res)
    # Fails (EINVAL) only if no CPU at all were allowed; the kernel intersects the mask
    # with the cpuset and the online CPUs.
    _setaffinity(pid, len(_ALL_CPUS), _ALL_CPUS)
    if cpus is not None:
        # The lowest-numbered of what the kernel left, not of kiln's own affinity
        # (``taskset -c 1 kiln`` must not make the rebuild's CPU depend on it).
        allowed = sorted(os.sched_getaffinity(pid))
        if len(allowed) > cpus:
            os.sched_setaffinity(pid, allowed[:cpus])
    with contextlib.suppress(OSError):
        if os.sched_getscheduler(pid) != os.SCHED_OTHER:
            os.sched_setscheduler(pid, os.SCHED_OTHER, os.sched_param(0))
    with contextlib.suppress(OSError):  # raising priority needs privilege
        os.setpriority(os.PRIO_PROCESS, pid, 0)


def visible_cpus() -> int:
    """How many CPUs a build sees here when its spec sets no ``cpus`` (its ``nproc``):
    those the kernel leaves of an every-CPU affinity (the online CPUs kiln's cpuset
    allows), whatever kiln's own affinity. Found on a short-lived thread of ours, whose
    affinity is its own (``sched_setaffinity`` with pid 0 is per thread), as
    ``fix_child`` finds it on bwrap."""
    found: list[int] = []

    def count() -> None:
        if _setaffinity(0, len(_ALL_CPUS), _ALL_CPUS) == 0:
            found.append(len(os.sched_getaffinity(0)))

    t = threading.Thread(target=count, name="kiln-cpu-count", daemon=True)
    t.start()
    t.join()
    return found[0] if found else len(os.sched_getaffinity(0))


def high_fd(fd: int) -> int:
    """``fd``, moved above ``FIXED_FDS`` if it is one of them (a spawn's ``dup2``s
    would overwrite it before copying it). Takes ``fd`` over: closed if it cannot be
    moved (``EMFILE``), so the caller owns exactly what it returns."""
    if fd > max(FIXED_FDS):
        return fd
    try:
        moved = fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, max(FIXED_FDS) + 1)
    finally:
        os.close(fd)
    return moved


def description(domainname_fixed: bool, groups_dropped: bool) -> dict[str, object]:
    """The fixed process state, for ``Executor.isolation()`` (JSON-serialisable);
    ``domainname_fixed``: whether builds get ``DOMAINNAME`` (``launcher.domainname_fixed``),
    ``groups_dropped``: whether they start without supplementary groups. The resource
    limits are those builds get: the target, or what ``fix_child`` set instead
    (``FELL_BACK``), and the hard stack limit is kiln's."""
    rlimits: dict[str, list[int | str]] = {}
    for name, res, soft, hard in RLIMITS:
        if res == resource.RLIMIT_STACK:  # (as ``launcher._Launcher._spawn`` sets it)
            kiln_hard = resource.getrlimit(res)[1]
            rlimits[name] = [STACK if kiln_hard == INF or kiln_hard >= STACK else kiln_hard, "kiln's"]
            continue
        soft, hard = FELL_BACK.get(name, (soft, hard))
        rlimits[name] = [_lim(soft), _lim(hard)]
    return {
        "signals": "default, none blocked",
        "personality": "linux",
        "cpuAffinity": "all",
        "nice": 0,
        "rlimits": rlimits,
        "domainname": DOMAINNAME.decode() if domainname_fixed else "host's",
        "supplementaryGroups": "none" if groups_dropped else "host's",
    }


def _lim(v: int) -> int | str:
    return "unlimited" if v == INF else v
