"""The kiln process's own state does not reach the build (``kiln.sandbox.procstate``).

Each test starts a small kiln (a Python process running one build through
``BwrapExecutor`` from a worker thread, as the build loop does) in a state an audit
found leaking: ``taskset -c 0``, ``ulimit -n/-c/-s``, ``nice -n 5``, ``setarch i686 -R``,
ignored and blocked signals (``nohup``, ``trap '' INT``), a host NIS domain name,
supplementary groups. The build reports what it sees; it must match what an unperturbed
kiln's build sees, the fixed values of ``procstate`` and what ``isolation()`` records.
"""

from __future__ import annotations

import ctypes
import io
import json
import os
import re
import resource
import signal
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from kiln.sandbox import BwrapExecutor, SandboxSpec
from kiln.sandbox.procstate import RLIMITS, fallback_limit

INF = resource.RLIM_INFINITY

#: What the builder reports, one ``key=value`` per line (busybox tools only).
PROBE = r"""
echo nproc=$(nproc)
echo cpus=$(sed -n 's/^Cpus_allowed_list:\t*//p' /proc/self/status)
echo sigign=$(sed -n 's/^SigIgn:\t*//p' /proc/self/status)
echo sigblk=$(sed -n 's/^SigBlk:\t*//p' /proc/self/status)
echo uname=$(uname -m)
echo personality=$(cat /proc/self/personality)
echo nice=$(cut -d' ' -f19 /proc/self/stat)
echo domainname=$(cat /proc/sys/kernel/domainname)
echo groups=$(sed -n 's/^Groups:\t*//p' /proc/self/status)
sed -n 's/^Max /limit=/p' /proc/self/limits
"""

#: One build, run from a worker thread: ``python HELPER rootfs build_dir`` prints its log,
#: then ``iso=`` and the ``processState`` of ``isolation()`` (JSON).
HELPER = """
import io, json, sys, threading
from kiln.sandbox import BwrapExecutor, SandboxSpec
spec = SandboxSpec(argv=("/bin/sh", "-c", sys.argv[3]), build_dir=sys.argv[2], env={"PATH": "/bin"},
                   rootfs=sys.argv[1], cores=1)
out = []
def build():
    buf = io.BytesIO()
    ex = BwrapExecutor()
    r = ex.run(spec, buf)
    out.append((r, buf.getvalue().decode(), ex.isolation()["processState"]))
t = threading.Thread(target=build)
t.start()
t.join()
r, log, state = out[0]
assert r.ok, (r, log)
sys.stdout.write(log)
print("iso=" + json.dumps(state))
"""

#: ``procstate.RLIMITS`` names -> /proc/PID/limits names
NAMES = {
    "core": "core file size",
    "nofile": "open files",
    "stack": "stack size",
    "memlock": "locked memory",
    "msgqueue": "msgqueue size",
    "nice": "nice priority",
    "rtprio": "realtime priority",
    "cpu": "cpu time",
    "fsize": "file size",
    "data": "data size",
    "rss": "resident set",
    "as": "address space",
    "locks": "file locks",
    "rttime": "realtime timeout",
    "nproc": "processes",
    "sigpending": "pending signals",
}


_libc = ctypes.CDLL(None, use_errno=True)
PER_LINUX32, ADDR_NO_RANDOMIZE = 0x0008, 0x0040000
GLIBC_INTERNAL = (1 << 31) | (1 << 32)  # signals 32 and 33 in /proc/PID/status masks


def _kiln_build(rootfs: Path, build_dir: Path, tmp_path: Path, perturb: Callable[[], None] | None) -> dict:
    """Run HELPER with ``perturb`` applied to it first; the build's report as a dict."""
    helper = tmp_path / "kiln_helper.py"
    helper.write_text(HELPER)
    p = subprocess.run(
        [sys.executable, str(helper), str(rootfs), str(build_dir), PROBE],
        capture_output=True,
        text=True,
        preexec_fn=perturb,  # noqa: PLW1509 - the perturbation under test
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    report: dict = {"limit": {}}
    for line in p.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "limit":  # "max open files   1024   524288   files"
            m = re.match(r"(.+?)\s{2,}(\S+)\s+(\S+)", value)
            assert m, line
            report["limit"][m[1]] = (m[2], m[3])
        elif key == "iso":
            report[key] = json.loads(value)
        else:
            report[key] = value
    return report


@pytest.fixture(scope="module")
def baseline(rootfs, tmp_path_factory) -> dict:
    tmp = tmp_path_factory.mktemp("baseline")
    (tmp / "build").mkdir()
    return _kiln_build(rootfs, tmp / "build", tmp, None)


@pytest.fixture
def kiln_build(rootfs, build_dir, tmp_path):
    return lambda perturb: _kiln_build(rootfs, build_dir, tmp_path, perturb)


def test_cpu_affinity_of_kiln_does_not_reach_the_build(kiln_build, baseline) -> None:
    """``taskset -c 0 kiln build``: the build still sees every CPU kiln's cgroup allows."""
    allowed = os.sched_getaffinity(0)
    if len(allowed) < 2:
        pytest.skip("needs two CPUs")
    r = kiln_build(lambda: os.sched_setaffinity(0, {min(allowed)}))
    assert r["nproc"] == baseline["nproc"] == str(len(allowed)), r
    assert r["cpus"] == baseline["cpus"]


def test_resource_limits_of_kiln_do_not_reach_the_build(kiln_build, baseline) -> None:
    """``ulimit -n 1000 -c unlimited -s unlimited``: the build sees procstate's limits."""

    def perturb() -> None:
        for res, soft in (
            (resource.RLIMIT_NOFILE, 1000),
            (resource.RLIMIT_CORE, INF),
            (resource.RLIMIT_STACK, INF),
        ):
            hard = resource.getrlimit(res)[1]
            resource.setrlimit(res, (soft if hard == INF or soft != INF and soft <= hard else hard, hard))
        resource.setrlimit(resource.RLIMIT_DATA, (64 << 30, resource.getrlimit(resource.RLIMIT_DATA)[1]))

    r = kiln_build(perturb)
    assert r["limit"] == baseline["limit"]
    lim = r["limit"]
    assert lim["core file size"] == ("0", "0")
    assert lim["open files"][0] == str(min(1024, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    if resource.getrlimit(resource.RLIMIT_STACK)[1] == INF:
        assert lim["stack size"] == (str(8 << 20), "unlimited")
    assert lim["data size"][0] == "unlimited" or lim["data size"][0] == lim["data size"][1]


def test_every_limit_is_procstates(baseline) -> None:
    """Each limit the build sees is the target, or (a hard limit kiln may not raise)
    the fallback computed from this process's hard limit."""
    assert len(NAMES) == len(RLIMITS) and set(baseline["limit"]) == set(NAMES.values())
    for name, res, soft, hard in RLIMITS:
        cur_hard = resource.getrlimit(res)[1]
        seen = tuple(INF if v == "unlimited" else int(v) for v in baseline["limit"][NAMES[name]])
        if cur_hard == INF or (hard != INF and hard <= cur_hard):  # lowering: always allowed
            assert seen == (soft, hard), (name, seen)
        else:  # the target with CAP_SYS_RESOURCE, else the fallback
            assert seen in {(soft, hard), fallback_limit(soft, hard, cur_hard)}, (name, seen)


def _recorded_limits_are_seen(report: dict) -> None:
    for name, res, _, _ in RLIMITS:
        recorded = report["iso"]["rlimits"][name]
        seen = [v if v == "unlimited" else int(v) for v in report["limit"][NAMES[name]]]
        if res == resource.RLIMIT_STACK:
            assert recorded == [seen[0], "kiln's"], (name, recorded, seen)
        else:
            assert recorded == seen, (name, recorded, seen)


def test_provenance_records_the_limits_builds_get(baseline) -> None:
    _recorded_limits_are_seen(baseline)


def test_provenance_records_the_limits_a_kiln_without_cap_sys_resource_could_not_set(kiln_build) -> None:
    """Root in a container without CAP_SYS_RESOURCE (or any user) may not raise a hard
    limit: the build gets kiln's (here ``nproc`` 5000), and provenance must say that,
    not the target (it said ``unlimited``); likewise the soft stack limit under a hard
    one below 8 MiB."""
    with open("/proc/self/status") as f:
        caps = int(next(ln for ln in f if ln.startswith("CapEff:")).split()[1], 16)
    if not caps & (1 << 8):  # CAP_SETPCAP, to drop CAP_SYS_RESOURCE from the bounding set
        pytest.skip("cannot drop capabilities here (no CAP_SETPCAP)")

    def perturb() -> None:
        resource.setrlimit(resource.RLIMIT_NPROC, (1000, 5000))
        resource.setrlimit(resource.RLIMIT_STACK, (4 << 20, 4 << 20))  # (below the 8 MiB target)
        if _libc.prctl(24, 24, 0, 0, 0) != 0:  # PR_CAPBSET_DROP CAP_SYS_RESOURCE: gone after exec
            os._exit(98)

    r = kiln_build(perturb)
    assert r["limit"]["processes"] == ("5000", "5000")
    assert r["iso"]["rlimits"]["nproc"] == [5000, 5000]
    assert r["iso"]["rlimits"]["stack"] == [4 << 20, "kiln's"]
    _recorded_limits_are_seen(r)


def test_supplementary_groups_of_a_root_kiln_do_not_reach_the_build(kiln_build, baseline) -> None:
    """Root started with supplementary groups (``sudo`` gives root those /etc/group
    lists): its builds have none (they saw ``1000 65534 65534``). An unprivileged
    kiln's builds keep its groups: ``test_unprivileged``."""
    if os.geteuid() != 0:
        pytest.skip("an unprivileged kiln cannot drop its groups")
    r = kiln_build(lambda: os.setgroups([0, 5, 27]))
    assert r["groups"] == baseline["groups"] == "", r["groups"]
    assert r["iso"]["supplementaryGroups"] == baseline["iso"]["supplementaryGroups"] == "none"


def test_fallback_limit() -> None:
    assert fallback_limit(1024, 524288, 4096) == (1024, 4096)
    assert fallback_limit(1024, 524288, 512) == (512, 512)
    assert fallback_limit(INF, INF, 96364) == (96364, 96364)
    assert fallback_limit(8 << 20, INF, 4 << 20) == (4 << 20, 4 << 20)


def test_nice_value_of_kiln_does_not_reach_the_build(kiln_build, baseline) -> None:
    """``nice -n 5 kiln build``: the build runs at nice 0 (kiln may lower it here: root)."""
    if os.getpriority(os.PRIO_PROCESS, 0) != 0:
        pytest.skip("the test process is niced itself")
    r = kiln_build(lambda: os.setpriority(os.PRIO_PROCESS, 0, 5))
    assert r["nice"] == baseline["nice"] == "0"


def test_personality_of_kiln_does_not_reach_the_build(kiln_build, baseline) -> None:
    """``setarch i686 -R kiln build``: the build sees the real machine and has ASLR."""
    r = kiln_build(lambda: _libc.personality(PER_LINUX32 | ADDR_NO_RANDOMIZE))
    assert r["uname"] == baseline["uname"] == os.uname().machine
    assert r["personality"] == baseline["personality"] == "00000000"


def test_ignored_and_blocked_signals_of_kiln_do_not_reach_the_build(kiln_build, baseline) -> None:
    """``nohup``/``trap '' HUP INT`` and a blocked mask: nothing ignored or blocked inside."""

    def perturb() -> None:
        for sig in (signal.SIGHUP, signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGCHLD, 40):
            signal.signal(sig, signal.SIG_IGN)
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGUSR2, signal.SIGALRM, signal.SIGTERM, 50})

    r = kiln_build(perturb)
    assert r["sigign"] == baseline["sigign"] and r["sigblk"] == baseline["sigblk"] == "0000000000000000"
    # only 32 and 33, glibc's internal signals, which its posix_spawn leaves ignored
    assert int(r["sigign"], 16) & ~GLIBC_INTERNAL == 0, r["sigign"]


def test_host_nis_domain_name_does_not_reach_the_build(kiln_build, baseline) -> None:
    """A host that set a NIS domain name (here one the perturbed kiln sets in a UTS
    namespace of its own, so the host's is untouched): builds of a kiln that may make
    a UTS namespace see ``(none)``."""
    with open("/proc/self/status") as f:
        caps = int(next(ln for ln in f if ln.startswith("CapEff:")).split()[1], 16)
    if not caps & (1 << 21):  # CAP_SYS_ADMIN, for a UTS namespace
        pytest.skip("cannot make a UTS namespace here (no CAP_SYS_ADMIN)")

    def perturb() -> None:
        name = b"kiln-leak.example"
        if _libc.unshare(0x04000000) != 0 or _libc.setdomainname(name, len(name)) != 0:  # CLONE_NEWUTS
            os._exit(99)

    r = kiln_build(perturb)
    assert r["domainname"] == baseline["domainname"] == "(none)"


def test_sandbox_pid1_command_line_and_fds_are_fixed(rootfs, build_dir, tmp_path) -> None:
    """PID 1 of the sandbox is ``bwrap --args 3 --args 4 -- <argv>`` and holds the same fds,
    whatever bwrap's host path (``KILN_BWRAP``) and however many fds kiln has open;
    an inheritable fd of kiln's reaches neither it nor the build."""
    other = tmp_path / "bin" / "bwrap"
    other.parent.mkdir()
    other.symlink_to("/usr/bin/bwrap")
    script = "tr '\\0' ' ' </proc/1/cmdline; echo; ls /proc/1/fd | tr '\\n' ' '; echo; ls /proc/self/fd | tr '\\n' ' '"
    spec = SandboxSpec(
        argv=("/bin/sh", "-c", script), build_dir=str(build_dir), env={"PATH": "/bin"}, rootfs=str(rootfs)
    )
    seen = []
    for bwrap, extra in (("/usr/bin/bwrap", 0), (str(other), 37)):
        held = [os.open("/dev/null", os.O_RDONLY) for _ in range(extra)]
        held.append(os.open("/dev/null", os.O_RDONLY))
        os.set_inheritable(held[-1], True)  # as ``kiln build 9</dev/null`` would leave one
        try:
            buf = io.BytesIO()
            r = BwrapExecutor(bwrap).run(spec, buf)
        finally:
            for fd in held:
                os.close(fd)
        assert r.ok, buf.getvalue()
        seen.append(buf.getvalue().decode())
    assert seen[0] == seen[1], seen
    cmdline, pid1_fds, build_fds = seen[0].splitlines()
    assert cmdline == f"bwrap --args 3 --args 4 -- /bin/sh -c {script} ", cmdline
    assert pid1_fds.split()[:3] == ["0", "1", "2"] and len(pid1_fds.split()) <= 4, pid1_fds  # (+ an eventfd)
    assert build_fds.split() == ["0", "1", "2", "3"], build_fds  # 3: ls's own directory
