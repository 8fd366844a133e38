"""A small real file system to fill: an ext4 image loop-mounted for a test (root only),
and a way to take its free space, for tests of what kiln does on a full disk; and a
socket bound at a path of any length."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest


@contextlib.contextmanager
def small_file_system(tmp_path: Path, size_mb: int = 32) -> Iterator[Path]:
    """A fresh ext4 file system of ``size_mb`` MiB (4 KiB blocks, no reserved blocks)
    loop-mounted at ``tmp_path/mnt`` for the ``with`` block; skips the test without
    root, ``mkfs.ext4`` or a loop device."""
    if os.geteuid() != 0 or shutil.which("mkfs.ext4") is None:
        pytest.skip("needs root and mkfs.ext4 (a loop-mounted file system)")
    img, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    with open(img, "wb") as f:
        f.truncate(size_mb << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", "-m", "0", "-b", "4096", str(img)], check=True)
    mnt.mkdir()
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount a file system here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def fill(mnt: Path, leave: int = 0) -> None:
    """Take all but ``leave`` bytes of ``mnt``'s free space."""
    for n in range(8):  # (an extent tree's own blocks: ask for a little less each time)
        os.sync()
        st = os.statvfs(mnt)
        want = st.f_bavail * st.f_frsize - leave - n * (64 << 10)
        if want <= 0:
            return
        with contextlib.suppress(OSError):
            with open(mnt / f"filler{n}", "wb") as f:
                os.posix_fallocate(f.fileno(), 0, want)
            os.sync()
            return


def bind_socket(sock: socket.socket, path: Path) -> None:
    """Bind the AF_UNIX ``sock`` at ``path`` whatever its length. A socket address holds
    at most 107 bytes and a test's ``tmp_path`` under a deep ``TMPDIR`` or basetemp can
    be longer, so the bind goes through ``/proc/self/fd/N/NAME`` of the directory."""
    fd = os.open(path.parent, os.O_PATH | os.O_DIRECTORY)
    try:
        sock.bind(f"/proc/self/fd/{fd}/{path.name}")
    finally:
        os.close(fd)
