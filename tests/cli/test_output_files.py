"""A file named with ``-o`` is replaced atomically when it is a regular file, through a
symbolic link when it is one, and written into — never replaced — when it is a device or
FIFO: as root, ``kiln sbom PATH -o /dev/null`` renamed a regular file over the machine's
``/dev/null``. A key file is never written over anything but a regular file."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.outfile import write_output


def _kiln(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "KILN_HOME": str(home)}
    return subprocess.run([sys.executable, "-m", "kiln", *args], capture_output=True, text=True, env=env)


@pytest.mark.skipif(os.geteuid() != 0, reason="mknod of a device needs root")
def test_a_device_is_written_into_not_replaced(tmp_path: Path) -> None:
    null = tmp_path / "null"
    os.mknod(null, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    (tmp_path / "f").write_text("x\n")
    home = tmp_path / "home"
    path = _kiln(home, "store", "add", str(tmp_path / "f")).stdout.strip()
    r = _kiln(home, "sbom", path, "-o", str(null))
    assert r.returncode == 0, r.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)  # still the device
    r = _kiln(home, "key", "generate", "k-1", "-o", str(null), "--force")
    assert r.returncode == 1 and "is not a regular file; refusing to replace it" in r.stderr
    assert stat.S_ISCHR(os.lstat(null).st_mode)


def test_a_link_keeps_being_a_link_and_a_file_is_replaced(tmp_path: Path) -> None:
    real = tmp_path / "real.json"
    real.write_text("old\n")
    os.chmod(real, 0o600)
    link = tmp_path / "link.json"
    link.symlink_to(real)
    write_output(link, json.dumps({"a": 1}))
    assert link.is_symlink() and json.loads(real.read_text()) == {"a": 1}
    os.chmod(real, 0o600)
    write_output(real, "kept mode\n", mode=None)
    assert stat.S_IMODE(os.stat(real).st_mode) == 0o600 and real.read_text() == "kept mode\n"
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    pid = os.fork()
    if pid == 0:  # a reader, so the write into the FIFO can go on
        with open(fifo, "rb") as f:
            f.read()
        os._exit(0)
    write_output(fifo, "into the fifo\n")
    os.waitpid(pid, 0)
    assert stat.S_ISFIFO(os.lstat(fifo).st_mode)
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temp left
