"""Builds of an unprivileged kiln: run by the tests (as root) as uid 65534 with the
system Python and this tree's ``kiln.sandbox``. An audit's unprivileged build wrote its
user's key descriptions (``/proc/keys``, 0444) into its output."""

from __future__ import annotations

import json
import os
import platform
import pwd
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

import kiln.sandbox

NOBODY = 65534
PYTHON = "/usr/bin/python3"
#: add_key and keyctl system call numbers
SYSCALLS = {"x86_64": (248, 250), "aarch64": (217, 219)}

#: ``python HELPER IMPORT_DIR ROOTFS BUILD DESCRIPTION``: adds a key with DESCRIPTION to
#: its user keyring, runs SCRIPT, prints the isolation JSON line, then the log.
HELPER = """
import ctypes, io, json, sys
sys.path.insert(0, sys.argv[1])
from kiln.sandbox import BwrapExecutor, SandboxSpec, SandboxUnavailable
add_key, keyctl = int(sys.argv[5]), int(sys.argv[6])
libc = ctypes.CDLL(None, use_errno=True)
libc.syscall.restype = ctypes.c_long
key = libc.syscall(add_key, b"user", sys.argv[4].encode(), b"v", ctypes.c_size_t(1), ctypes.c_int(-4))
assert key > 0, ctypes.get_errno()
try:
    try:
        ex = BwrapExecutor()
    except SandboxUnavailable as e:
        print("unavailable", e)
        sys.exit(0)
    assert sys.argv[4] in open("/proc/keys").read()  # what a build could read before
    buf = io.BytesIO()
    r = ex.run(SandboxSpec(argv=("/bin/sh", "-c", sys.argv[7]), build_dir=sys.argv[3], env={"PATH": "/bin"},
                           rootfs=sys.argv[2]), buf)
    assert r.ok, (r, buf.getvalue())
    print(json.dumps(ex.isolation()))
    sys.stdout.write(buf.getvalue().decode())
finally:
    libc.syscall(keyctl, ctypes.c_int(21), ctypes.c_int(key))  # KEYCTL_INVALIDATE
"""

SCRIPT = (
    "cat /proc/keys /proc/key-users 2>&1; sed -n 's/^Groups:\\t*/groups=/p' /proc/self/status; "
    "chmod 666 /dev/null 2>/dev/null && echo chmod-allowed; echo x > /dev/null && echo null-ok"
)


@pytest.fixture
def as_nobody(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("needs root to run a kiln as another user")
    if platform.machine() not in SYSCALLS or not os.path.exists(PYTHON):
        pytest.skip(f"needs {PYTHON} on x86_64 or aarch64")
    try:
        pwd.getpwuid(NOBODY)
    except KeyError:
        pytest.skip(f"no user {NOBODY}")
    top = Path(subprocess.check_output(["mktemp", "-d", "/tmp/kiln-test-unpriv-XXXXXX"], text=True).strip())
    try:
        top.chmod(0o755)
        (top / "kiln").mkdir()
        (top / "kiln" / "__init__.py").write_text("")
        # a copy, not a link: the checkout may be where nobody cannot read (under /root)
        shutil.copytree(
            Path(kiln.sandbox.__file__).parent,
            top / "kiln" / "sandbox",
            ignore=shutil.ignore_patterns("__pycache__"),
        )
        ubin = top / "rootfs" / "usr" / "bin"
        ubin.mkdir(parents=True)
        shutil.copy2("/bin/busybox", ubin / "busybox")
        for a in ("sh", "cat", "sed", "chmod", "echo"):
            (ubin / a).symlink_to("busybox")
        (top / "rootfs" / "bin").symlink_to("usr/bin")
        for d in (top / "rootfs", top / "rootfs" / "usr", ubin):
            d.chmod(0o755)
        (top / "build").mkdir()
        os.chown(top / "build", NOBODY, NOBODY)
        (top / "helper.py").write_text(HELPER)
        for d, _dirs, files in os.walk(top / "kiln"):  # (readable by nobody whatever the umask)
            os.chmod(d, 0o755)
            for f in files:
                os.chmod(os.path.join(d, f), 0o644)
        (top / "helper.py").chmod(0o644)
        yield top
    finally:
        shutil.rmtree(top)


def test_builds_cannot_read_the_users_keys_nor_change_dev(as_nobody: Path) -> None:
    top = as_nobody
    desc = f"kiln-test-key-{uuid.uuid4().hex}"
    argv = [PYTHON, str(top / "helper.py"), str(top), str(top / "rootfs"), str(top / "build"), desc]
    p = subprocess.run(
        [*argv, *map(str, SYSCALLS[platform.machine()]), SCRIPT],
        capture_output=True,
        text=True,
        user=NOBODY,
        group=NOBODY,
        extra_groups=[NOBODY - 1, 5],
        env={"PATH": "/usr/bin:/bin", "HOME": "/", "PYTHONDONTWRITEBYTECODE": "1"},
        cwd="/",
        timeout=60,
    )
    assert p.returncode == 0, p.stderr
    if p.stdout.startswith("unavailable"):
        pytest.skip(p.stdout)
    first, _, log = p.stdout.partition("\n")
    iso = json.loads(first)
    assert desc not in log, log
    assert "cat: can't open '/proc/keys': Permission denied" in log, log
    assert "cat: can't open '/proc/key-users': Permission denied" in log, log
    assert "chmod-allowed" not in log and "null-ok" in log, log
    assert iso["devNodes"].startswith("host's (not kiln's")
    # the supplementary groups a user namespace cannot drop (docs/sandbox.md): said so
    assert iso["processState"]["supplementaryGroups"] == "host's"
    assert "groups=65534 65534 \n" in log, log  # its two extra groups, unmapped
