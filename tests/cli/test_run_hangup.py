"""``kiln run`` as its session's leader (``ssh -t host kiln run ...``, a terminal that
runs kiln itself): when the terminal hangs up, the kernel sends SIGHUP to the session
leader alone, not to the program in its process group. kiln left every signal from the
kernel (a terminal's) to reach the program directly, so the program never heard of the
hangup and ran on."""

from __future__ import annotations

import os
import select
import signal
import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from test_run_cli import World, _kiln_run_on_a_pty, pytestmark  # noqa: E402, F401


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("runhup"))


def test_a_hangup_reaches_the_program_when_kiln_leads_the_session(world: World, tmp_path: Path) -> None:
    pkg = tmp_path / "hupper"
    (pkg / "bin").mkdir(parents=True)
    # (the program's output goes to a file: the terminal is gone when it reacts)
    seen = tmp_path / "seen"
    (pkg / "bin" / "wait-hup").write_text(
        f"#!/bin/sh\ntrap 'echo HUP >> {seen}; exit 9' HUP\necho ready\n"
        "i=0; while [ $i -lt 300 ]; do sleep 0.1; i=$((i+1)); done\nexit 3\n"
    )
    (pkg / "bin" / "wait-hup").chmod(0o755)
    assert world.kiln("store", "add", str(pkg), "--add-root", "hupper").returncode == 0
    pid, fd = _kiln_run_on_a_pty(world, "hupper", "wait-hup")  # (pty.fork: kiln leads its session)
    out, deadline = b"", time.monotonic() + 60
    while b"ready" not in out and time.monotonic() < deadline:
        if select.select([fd], [], [], 1)[0]:
            try:
                out += os.read(fd, 1024)
            except OSError:
                break
    assert b"ready" in out, out
    os.close(fd)  # the terminal hangs up
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        done, status = os.waitpid(pid, os.WNOHANG)
        if done:
            break
        time.sleep(0.1)
    else:
        os.killpg(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        raise AssertionError("the program never got the hangup: it ran on")
    assert seen.exists() and seen.read_text() == "HUP\n"
    assert os.waitstatus_to_exitcode(status) == 9
