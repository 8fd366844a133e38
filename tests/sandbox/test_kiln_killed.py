"""A kiln killed while a sandbox starts leaves no build running: until kiln holds the
sandbox's init, bwrap has no seccomp filter to apply (it comes through a pipe kiln writes
only then), so a bwrap whose kiln died reads an empty one and neither the init nor the
builder runs (before, the build ran on orphaned, with no timeout). bwrap itself may
leave a process asleep, never running anything (its child waits for a parent that
died before releasing it): those are killed here after each test."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

DRIVER = Path(__file__).with_name("die_at.py")

pytestmark = pytest.mark.skipif(
    not os.path.exists("/bin/sh"), reason="needs the host's /bin/sh as a toolchain"
)


def _bwraps_of(build_dir: Path) -> list[int]:
    """Pids of the bwrap processes (and sandbox inits) whose command line names
    ``build_dir``: the build script ends with it as a comment (``die_at.py``)."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/cmdline", "rb") as f:
                cmdline = f.read()
        except OSError:
            continue
        if cmdline.startswith(b"bwrap\0") and os.fsencode(str(build_dir)) in cmdline:
            found.append(int(entry))
    return found


@pytest.mark.parametrize("point", ["after-start", "info-read", "before-write"])
def test_a_kiln_killed_before_it_holds_the_init_leaves_no_build_running(tmp_path: Path, point: str) -> None:
    build_dir = tmp_path / "build"
    build_dir.mkdir()
    r = subprocess.run([sys.executable, str(DRIVER), point, str(build_dir)], capture_output=True, text=True)
    assert r.returncode == -signal.SIGKILL, r.stdout + r.stderr
    time.sleep(1.5)
    left = _bwraps_of(build_dir)
    try:
        assert not (build_dir / "started").exists(), f"the build ran after kiln died ({point})"
    finally:
        for pid in left:  # bwrap's own sleepers, if any (an init killed takes its namespace)
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
