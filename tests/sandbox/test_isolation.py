"""Isolation: each test makes a build try something it must not be able to do, checks the
attempt failed *inside* the build for the expected reason (from the log), and where it
can, checks from the host side that nothing got through."""

from __future__ import annotations

import os
import socket
import uuid
from pathlib import Path

import pytest

STORE = "/kiln/store"


def test_trivial_build_writes_its_output(sh, tmp_path: Path) -> None:
    out = tmp_path / "out"
    out.mkdir()
    dest = f"{STORE}/aaaa-out"
    r = sh('echo hello > "$out/x"; echo done', env={"out": dest}, rw_mounts=((str(out), dest),))
    assert r.result.ok, r.log
    assert r.result.exit_status == 0 and r.result.signal is None
    assert r.log == "done\n"
    assert (out / "x").read_text() == "hello\n"


def test_failed_build_reports_exit_status_and_merged_log(sh) -> None:
    r = sh("echo out; echo err >&2; exit 3")
    assert r.result.reason == "failed" and r.result.exit_status == 3
    assert "out\n" in r.log and "err\n" in r.log


def test_a_sandbox_that_cannot_be_set_up_is_not_reported_as_the_builders_failure(sh, tmp_path) -> None:
    # an output mounted below a file input: bwrap cannot make the mount point, exits 1
    # before the builder starts, as a builder's "exit 1" would
    f = tmp_path / "input-file"
    f.write_text("x\n")
    out = tmp_path / "out"
    out.mkdir()
    r = sh(
        "echo builder ran; exit 1",
        ro_mounts=((str(f), f"{STORE}/aaaa-in"),),
        rw_mounts=((str(out), f"{STORE}/aaaa-in/out"),),
    )
    assert r.result.reason == "setup-failed" and r.result.exit_status == 1, r.log
    assert "builder ran" not in r.log and "bwrap:" in r.log
    assert "could not be set up, the builder never started" in r.result.describe()
    # a hostname the kernel refuses fails the same way
    r = sh("echo builder ran", hostname="h" * 100)
    assert r.result.reason == "setup-failed" and "builder ran" not in r.log, r.log
    # and a builder that fails after a good setup is still the builder's failure
    r = sh("exit 1")
    assert r.result.reason == "failed" and r.result.exit_status == 1


def test_no_tcp_to_host_loopback(sh) -> None:
    srv = socket.create_server(("127.0.0.1", 0))
    port = srv.getsockname()[1]
    srv.settimeout(0.2)
    try:
        r = sh(
            f"nc 127.0.0.1 {port} </dev/null; echo nc-rc=$?; "
            f"wget -q -O- http://127.0.0.1:{port}/; echo wget-rc=$?; "
            "nc 10.0.0.1 80 </dev/null; echo nc2-rc=$?; cat /proc/net/dev"
        )
        assert "nc-rc=1" in r.log and "wget-rc=1" in r.log and "nc2-rc=1" in r.log
        assert "(127.0.0.1): Connection refused" in r.log  # the sandbox's own, empty, loopback
        assert "Network is unreachable" in r.log  # no route anywhere else
        interfaces = [ln.split(":")[0].strip() for ln in r.log.splitlines() if ":" in ln and "|" not in ln]
        assert [i for i in interfaces if not i.startswith(("nc", "wget"))] == ["lo"]
        with pytest.raises(TimeoutError):
            srv.accept()  # nothing reached the host's server
        with socket.create_connection(("127.0.0.1", port), timeout=2):
            srv.accept()  # ...which does work from the host
    finally:
        srv.close()


def test_no_name_resolution(sh) -> None:
    dns = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    dns.bind(("127.0.0.1", 0))
    dns.settimeout(0.2)
    port = dns.getsockname()[1]
    try:
        r = sh(
            "test -e /etc/resolv.conf || echo no-resolv-conf; "
            "wget -q -O- http://kiln-probe.test/; echo wget-rc=$?; "
            f"nslookup kiln-probe.test 127.0.0.1:{port}; echo ns-rc=$?"
        )
        assert "no-resolv-conf" in r.log
        assert "bad address 'kiln-probe.test'" in r.log and "wget-rc=1" in r.log
        assert "Connection refused" in r.log and "ns-rc=1" in r.log
        with pytest.raises(TimeoutError):
            dns.recvfrom(512)  # the query never left the sandbox
    finally:
        dns.close()


def test_cannot_read_etc_shadow_or_host_etc(sh) -> None:
    assert os.path.exists("/etc/shadow")
    r = sh("cat /etc/shadow; echo rc=$?; ls /etc")
    assert "can't open '/etc/shadow': No such file or directory" in r.log and "rc=1" in r.log
    assert r.log.splitlines()[-3:] == ["group", "hosts", "passwd"]  # generated, nothing else
    r = sh("ls -l /etc/passwd; cat /etc/passwd /etc/group /etc/hosts; echo x >> /etc/passwd; echo w=$?")
    assert r.log.startswith("-rw-r--r--")
    assert "kiln:x:1000:1000:kiln build user:/homeless-shelter:/noshell\n" in r.log
    assert "kiln:x:1000:\n" in r.log and "127.0.0.1 localhost\n" in r.log
    assert "Read-only file system" in r.log and "w=1" in r.log


def test_cannot_read_host_home(sh) -> None:
    home = os.path.expanduser("~")
    assert os.path.isdir(home)
    r = sh(f"ls {home}; echo rc=$?; ls /")
    assert "No such file or directory" in r.log and "rc=1" in r.log
    top = r.log.split("rc=1\n", 1)[1].split()
    assert sorted(top) == ["bin", "build", "dev", "etc", "proc", "sbin", "tmp", "usr"]


def test_cannot_see_store_paths_outside_the_closure(sh, tmp_path: Path) -> None:
    inside = tmp_path / "store" / "aaaa-in"
    outside = tmp_path / "store" / "bbbb-secret"
    for d in (inside, outside):
        d.mkdir(parents=True)
        (d / "f").write_text(d.name)
    r = sh(
        f"cat {STORE}/aaaa-in/f; echo; cat {outside}/f; echo rc=$?; cat {STORE}/bbbb-secret/f; echo rc2=$?; ls {STORE}",
        ro_mounts=((str(inside), f"{STORE}/aaaa-in"),),
    )
    assert r.log.startswith("aaaa-in\n")
    assert "rc=1" in r.log and "rc2=1" in r.log and "bbbb-secret\n" not in r.log.replace("/bbbb-secret/f", "")
    assert r.log.splitlines()[-1] == "aaaa-in"  # the store dir lists the closure only


def test_cannot_write_inputs(sh, tmp_path: Path) -> None:
    inp = tmp_path / "aaaa-in"
    inp.mkdir()
    (inp / "f").write_text("original")
    dest = f"{STORE}/aaaa-in"
    r = sh(
        f"echo x > {dest}/f; echo w=$?; rm -f {dest}/f; echo rm=$?; chmod 777 {dest}/f; echo ch=$?; "
        f"touch {dest}/new; echo t=$?",
        ro_mounts=((str(inp), dest),),
    )
    for k in ("w", "rm", "ch", "t"):
        assert f"{k}=1" in r.log
    assert "Read-only file system" in r.log
    assert (inp / "f").read_text() == "original" and sorted(os.listdir(inp)) == ["f"]
    assert oct((inp / "f").stat().st_mode & 0o777) != oct(0o777)


def test_cannot_write_outside_build_and_outputs(sh, build_dir: Path, tmp_path: Path) -> None:
    marker = f"kiln-sbx-{uuid.uuid4().hex}"
    targets = ["/x", "/etc/x", "/usr/x", "/bin/x", "/kiln", "/etc/passwd", "/homeless-shelter"]
    script = "; ".join(f"touch {t} 2>&1 || mkdir {t} 2>&1 || echo denied:{t}" for t in targets)
    script += f"; echo ok > /build/b; echo ok > /tmp/{marker} && echo tmp-ok"
    r = sh(script)
    for t in targets:
        assert f"denied:{t}" in r.log
    assert "Read-only file system" in r.log
    assert (build_dir / "b").read_text() == "ok\n" and "tmp-ok" in r.log
    assert not os.path.exists(f"/tmp/{marker}")  # /tmp is the sandbox's own tmpfs


def test_sees_only_its_own_processes(sh, tmp_path: Path) -> None:
    r = sh("for p in /proc/[0-9]*; do echo ${p#/proc/} $(tr '\\0' ' ' < $p/cmdline); done; ps")
    pids = [int(ln.split()[0]) for ln in r.log.splitlines() if ln and ln.split()[0].isdigit()]
    assert pids and max(pids) < 100 and 1 in pids
    assert "python" not in r.log and "pytest" not in r.log
    assert str(tmp_path) not in r.log  # pid 1's cmdline is "bwrap --args N": no host paths
    # bwrap's reaper (pid 1), the shell, and the shell's children: nothing else
    assert len({ln.split()[0] for ln in r.log.splitlines() if ln.split()[0].isdigit()}) <= 8


def test_environment_is_exactly_the_expected_one(executor, rootfs, build_dir, monkeypatch) -> None:
    import io

    from kiln.sandbox import SandboxSpec

    monkeypatch.setenv("KILN_LEAK_TEST", "secret")
    spec = SandboxSpec(
        argv=("/bin/env",),
        build_dir=str(build_dir),
        env={"FOO": "bar baz", "HOME": "/root"},
        rootfs=str(rootfs),
        cores=3,
    )
    buf = io.BytesIO()
    res = executor.run(spec, buf)
    assert res.ok
    got = dict(ln.split("=", 1) for ln in buf.getvalue().decode().splitlines())
    assert got == {
        "FOO": "bar baz",
        "HOME": "/homeless-shelter",  # fixed vars win over the spec's
        "TZ": "UTC",
        "LC_ALL": "C.UTF-8",
        "SOURCE_DATE_EPOCH": "315532800",
        "TMPDIR": "/build",
        "TEMP": "/build",
        "TMP": "/build",
        "PWD": "/build",
        "KILN_CORES": "3",
        "KILN_BUILD_TOP": "/build",
        "TERM": "dumb",
    }


def test_identity_hostname_umask_caps(sh) -> None:
    old = os.umask(0o077)  # the parent's umask must not leak in
    try:
        r = sh(
            "id -u; id -g; whoami; hostname; cat /proc/sys/kernel/hostname; umask; pwd; "
            "grep CapEff /proc/self/status; test -e /homeless-shelter || echo no-home; "
            "unshare -U true; echo userns-rc=$?"
        )
    finally:
        os.umask(old)
    lines = r.log.splitlines()
    assert lines[:7] == ["1000", "1000", "kiln", "localhost", "localhost", "0022", "/build"]
    assert lines[7].split() == ["CapEff:", "0000000000000000"]
    assert "no-home" in r.log
    assert "userns-rc=1" in r.log  # seccomp: no nested user namespaces


def test_no_host_usr(sh) -> None:
    r = sh("ls /usr; ls /usr/bin | wc -l; test -e /usr/bin/python3 || echo no-python; readlink /bin")
    assert r.log.splitlines()[0] == "bin"
    assert "no-python" in r.log and "usr/bin" in r.log


def test_cannot_create_setuid_or_setgid_files(sh, tmp_path: Path) -> None:
    """seccomp refuses modes with S_ISUID/S_ISGID (the sandbox uid maps to the host's
    uid, root when kiln runs as root), while ordinary chmod/mknod keep working."""
    out = tmp_path / "out"
    out.mkdir()
    dest = f"{STORE}/aaaa-out"
    r = sh(
        'cp /bin/busybox "$out/s"; chmod 4755 "$out/s"; echo suid=$?; chmod 2755 "$out/s"; echo sgid=$?; '
        'chmod u+s "$out/s"; echo us=$?; chmod 0700 "$out/s"; echo plain=$?; '
        'mkdir "$out/d"; chmod g+s "$out/d"; echo dgid=$?; '
        'mknod -m 4644 "$out/p" p; echo mknod=$?; mknod -m 0644 "$out/q" p; echo mknod2=$?; '
        'install -m 4755 /bin/busybox "$out/i"; echo inst=$?',
        env={"out": dest},
        rw_mounts=((str(out), dest),),
    )
    for k in ("suid", "sgid", "us", "dgid", "mknod", "inst"):
        assert f"{k}=1" in r.log, (k, r.log)
    assert "plain=0" in r.log and "mknod2=0" in r.log
    assert "Operation not permitted" in r.log
    for p in out.rglob("*"):
        assert p.lstat().st_mode & 0o6000 == 0, p
    assert (out / "s").stat().st_mode & 0o777 == 0o700


SECCOMP_PROBE = """
import ctypes, errno, os
def try_(name, f):
    try:
        f()
        print(name, "ok")
    except OSError as e:
        print(name, errno.errorcode[e.errno])
try_("open-suid", lambda: os.close(os.open("a", os.O_CREAT | os.O_WRONLY, 0o4755)))
try_("open-plain", lambda: os.close(os.open("b", os.O_CREAT | os.O_WRONLY, 0o755)))
try_("open-nocreat", lambda: os.close(os.open("b", os.O_RDONLY, 0o4755)))
try_("tmpfile-sgid", lambda: os.close(os.open(".", os.O_TMPFILE | os.O_WRONLY, 0o2755)))
try_("chmod-suid", lambda: os.chmod("b", 0o4755))
try_("fchmod-sgid", lambda: os.fchmod(os.open("b", os.O_RDONLY), 0o2755))
try_("mknod-suid", lambda: os.mknod("c", 0o4644 | 0o010000))
libc = ctypes.CDLL(None, use_errno=True)
r = libc.syscall(437, -100, b"b", None, 0)
print("openat2", errno.errorcode[ctypes.get_errno()] if r < 0 else "ok")
CLONE_NEWUSER, CLONE_NEWNS = 0x10000000, 0x00020000
r = libc.unshare(CLONE_NEWUSER)
print("unshare-user", errno.errorcode[ctypes.get_errno()] if r < 0 else "ok")
r = libc.unshare(CLONE_NEWNS)  # allowed by the filter; no capabilities, so the kernel says no
print("unshare-mount", errno.errorcode[ctypes.get_errno()] if r < 0 else "ok")
r = libc.syscall(56, CLONE_NEWUSER | 17, None, None, None, None)  # clone(CLONE_NEWUSER|SIGCHLD)
print("clone-user", errno.errorcode[ctypes.get_errno()] if r < 0 else "ok")
r = libc.syscall(435, None, 0)
print("clone3", errno.errorcode[ctypes.get_errno()] if r < 0 else "ok")
for name, nr, args in (("add_key", 248, (b"user", b"k", b"v", 1, -3)), ("keyctl", 250, (0, -3, 0)),
                        ("request_key", 249, (b"user", b"k", None, 0)), ("io_uring_setup", 425, (8, None))):
    r = libc.syscall(nr, *args)
    print(name, errno.errorcode[ctypes.get_errno()] if r < 0 else "ok")
try_("write-sysctl", lambda: open("/proc/sys/fs/lease-break-time", "w").write("46"))
pid = os.fork()  # glibc's fork: plain clone, allowed
if pid == 0:
    os._exit(7)
print("fork", os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
"""


@pytest.mark.skipif(not os.path.exists("/usr/bin/python3"), reason="needs the host's python3 as a toolchain")
def test_seccomp_filter_syscall_by_syscall(executor, build_dir: Path) -> None:
    """Exercise each filtered call directly (host / as the rootfs, for python3 only)."""
    import io

    from kiln.sandbox import SandboxSpec

    spec = SandboxSpec(argv=("/usr/bin/python3", "-c", SECCOMP_PROBE), build_dir=str(build_dir), rootfs="/")
    buf = io.BytesIO()
    res = executor.run(spec, buf)
    log = buf.getvalue().decode()
    assert res.ok, log
    got = dict(ln.split() for ln in log.splitlines())
    assert got == {
        "open-suid": "EPERM",
        "open-plain": "ok",
        "open-nocreat": "ok",
        "tmpfile-sgid": "EPERM",
        "chmod-suid": "EPERM",
        "fchmod-sgid": "EPERM",
        "mknod-suid": "EPERM",
        "openat2": "ENOSYS",
        "unshare-user": "EPERM",
        "unshare-mount": "EPERM",
        "clone-user": "EPERM",
        "clone3": "ENOSYS",
        "add_key": "ENOSYS",  # keyrings: the host login session's keys stay out of reach
        "keyctl": "ENOSYS",
        "request_key": "ENOSYS",
        "io_uring_setup": "ENOSYS",  # its file operations would bypass the filter
        # as root the sandbox uid is host uid 0, which may write sysctls: the mount stops it
        "write-sysctl": "EROFS" if os.geteuid() == 0 else "EACCES",
        "fork": "7",
    }
    assert not any(p.stat().st_mode & 0o6000 for p in build_dir.iterdir())


def test_setuid_bit_is_inert_inside(sh, tmp_path: Path) -> None:
    """A build may set a setuid bit on its output, but mounts are nosuid and the build has
    no capabilities, so it gains nothing inside. (Stripping such bits from outputs is
    the store's job when it registers them — see docs/sandbox.md.)"""
    out = tmp_path / "out"
    out.mkdir()
    dest = f"{STORE}/aaaa-out"
    r = sh(f"grep -E ' ({dest.replace('/', '.')}|/build) ' /proc/mounts", rw_mounts=((str(out), dest),))
    mounts = r.log.splitlines()
    assert len(mounts) == 2 and all("nosuid" in m.split()[3] for m in mounts)


def test_inputs_over_a_writable_scratch_store(sh, tmp_path: Path) -> None:
    """The store's layout: a writable scratch dir at the store dir, the read-only closure
    bound on top (listed first here on purpose: the executor orders parents first)."""
    scratch, inp = tmp_path / "scratch", tmp_path / "aaaa-in"
    scratch.mkdir()
    inp.mkdir()
    (inp / "f").write_text("input")
    r = sh(
        f"cat {STORE}/aaaa-in/f; echo; echo x > {STORE}/aaaa-in/f; echo w=$?; mkdir {STORE}/bbbb-out && echo made > {STORE}/bbbb-out/o; echo o=$?",
        ro_mounts=((str(inp), f"{STORE}/aaaa-in"),),
        rw_mounts=((str(scratch), STORE),),
    )
    assert r.log.startswith("input\n") and "w=1" in r.log and "o=0" in r.log
    assert (scratch / "bbbb-out" / "o").read_text() == "made\n"
    assert (inp / "f").read_text() == "input"


def test_network_flag_shares_the_host_network(sh) -> None:
    """``network=True`` (reserved for fixed-output fetches) is the only way out."""
    import threading

    srv = socket.create_server(("127.0.0.1", 0))
    srv.settimeout(10)
    got: list[bytes] = []

    def serve() -> None:
        conn, _ = srv.accept()
        with conn:
            got.append(conn.recv(16))

    t = threading.Thread(target=serve)
    t.start()
    try:
        r = sh(f"echo hi | nc 127.0.0.1 {srv.getsockname()[1]}; echo rc=$?", network=True, timeout=20)
        t.join(10)
        assert got == [b"hi\n"] and "rc=0" in r.log
    finally:
        srv.close()


def test_umask_can_be_varied(sh, build_dir: Path) -> None:
    """``--check --vary`` rebuilds with umask 077; files then come out 0600."""
    r = sh("umask; echo x > f; mkdir d", umask=0o077)
    assert r.log == "0077\n"
    assert (build_dir / "f").stat().st_mode & 0o777 == 0o600
    assert (build_dir / "d").stat().st_mode & 0o777 == 0o700


def test_dev_has_the_usual_nodes_and_nothing_of_the_host(sh) -> None:
    """A fresh /dev: the standard character devices work, the fd links resolve, /dev/shm
    is writable; no host disks, no pts (docs/sandbox.md)."""
    r = sh(
        "ls /dev | sort | tr '\\n' ' '; echo; "
        "head -c 4 /dev/zero | od -An -tx1; head -c 16 /dev/urandom | wc -c; "
        "echo x > /dev/null && echo null-ok; echo y > /dev/full; echo full-rc=$?; "
        "readlink /dev/fd; readlink /dev/stdin; echo s > /dev/shm/f && cat /dev/shm/f"
    )
    lines = r.log.splitlines()
    assert lines[0].split() == sorted(
        ["fd", "full", "null", "random", "shm", "stderr", "stdin", "stdout", "tty", "urandom", "zero"]
    )
    assert lines[1].split() == ["00"] * 4 and lines[2].strip() == "16"
    assert "null-ok" in r.log and "full-rc=1" in r.log
    assert "/proc/self/fd" in r.log and "/proc/self/fd/0" in r.log and lines[-1] == "s"


def test_in_memory_file_systems_are_bounded(sh) -> None:
    """/tmp and /dev (with /dev/shm) are tmpfs of fixed sizes, not half of RAM each: a
    build filling them cannot take the host's memory (tmpfs pages belong to no process,
    so the OOM killer would pick someone else)."""
    from kiln.sandbox.bwrapargv import DEV_SIZE, TMP_SIZE

    r = sh("df -k /tmp /dev/shm | tail -n +2")
    assert r.result.ok, r.log
    sizes = [int(line.split()[1]) * 1024 for line in r.log.splitlines()]
    assert sizes == [TMP_SIZE, DEV_SIZE], r.log
    r = sh("dd if=/dev/zero of=/dev/shm/f bs=1M count=600 2>&1; echo rc=$?")
    assert "No space left on device" in r.log and "rc=1" in r.log, r.log
