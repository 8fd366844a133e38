"""The real toolchain lock: unpack every pinned .deb from the hashed mirror and compile a C
program with gcc inside bwrap, with no host /usr, /bin or /lib visible.

Needs the mirror filled by tests/fixtures/fill-mirror.py (``$KILN_MIRROR`` or
/var/cache/kiln-mirror); skipped otherwise.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.store import nar
from kiln.store.apt import parse_lock
from kiln.store.debpin import DebPin
from kiln.store.debunpack import unpack_debs_verbose
from kiln.store.fetch import fetch_url
from kiln.store.hashes import Hash

REPO = Path(__file__).resolve().parents[2]
LOCK = REPO / "recipes" / "toolchain.lock.recipe"
MIRROR = Path(os.environ.get("KILN_MIRROR", "/var/cache/kiln-mirror"))

pytestmark = [pytest.mark.slow, pytest.mark.bwrap]


@pytest.fixture(scope="module")
def rootfs(tmp_path_factory):
    entries = parse_lock(LOCK.read_text())
    missing = [e.name for e in entries if not (MIRROR / "sha256" / e.sha256).is_file()]
    if missing:
        pytest.skip(f"mirror {MIRROR} lacks {len(missing)} .debs (run tests/fixtures/fill-mirror.py)")
    tmp = tmp_path_factory.mktemp("toolchain")
    # fetch through the real fetcher from the mirror only (no URL reachable: proves the mirror path)
    debs = []
    for e in entries:
        dest = tmp / "debs" / f"{e.sha256}.deb"
        fetch_url([], Hash("sha256", bytes.fromhex(e.sha256)), dest, mirrors=[str(MIRROR)], progress=False)
        debs.append(dest)
    # every .deb is what its lock entry says (full version), and what its pool file name
    # says (what the build checks, and what the SBOM reports)
    notes = unpack_debs_verbose(debs, tmp / "rootfs", [DebPin.of_entry(e) for e in entries])
    unpack_debs_verbose(debs, tmp / "by-name", [DebPin.of_pool_name(e.filename) for e in entries])
    return tmp / "rootfs", debs, notes


def test_links_added(rootfs):
    root, _, notes = rootfs
    for link, target in [
        ("bin/sh", "bash"),
        ("usr/bin/awk", "gawk"),
        ("usr/bin/cc", "gcc"),
        ("usr/bin/c++", "g++"),
    ]:
        assert os.readlink(root / link) == target
        assert f"added link {link} -> {target}" in notes


def test_gcc_works_without_host_usr(rootfs, tmp_path):
    if not shutil.which("bwrap"):
        pytest.skip("bwrap not installed")
    root, _, _ = rootfs
    script = (
        'gcc --version && echo "int main(){return 0;}" | gcc -x c - -o /tmp/a && /tmp/a'
        ' && printf "#include <stdio.h>\\nint main(){puts(\\"hi from cc\\");}\\n" | cc -x c - -o /tmp/b && /tmp/b'
        " && awk 'BEGIN{print \"awk ok\"}' && sh -c 'echo sh ok' && make --version | head -1"
        " && perl -e 'print \"perl ok\\n\"' && test ! -e /usr/bin/apt && test ! -e /etc/os-release"
    )
    cmd = ["bwrap", "--unshare-all", "--clearenv", "--setenv", "PATH", "/usr/bin:/bin"]
    for d in ("usr", "bin", "lib", "lib64"):
        cmd += ["--ro-bind", str(root / d), f"/{d}"]
    cmd += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "/bin/bash", "-c", script]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "gcc (Debian 12" in proc.stdout
    for want in ("hi from cc", "awk ok", "sh ok", "GNU Make", "perl ok"):
        assert want in proc.stdout


def test_unpack_is_deterministic(rootfs, tmp_path):
    root, debs, _ = rootfs
    unpack_debs_verbose(debs, tmp_path / "again")
    assert nar.hash_path(root)[0] == nar.hash_path(tmp_path / "again")[0]
