"""``kiln`` started with descriptor 0, 1 or 2 closed (a script's ``2>&-``, ``>&-``,
``<&-``): ``kiln.main.open_closed_std_fds`` opens ``/dev/null`` on them first, so
nothing meant for stderr reaches stdout and no file kiln opens takes their number. With
stdout closed every command fails at once (status 1): its results would be lost.

Before: ``2>&-`` made every command that imports the build loop end with an internal
error on stdout (``sys.stderr.isatty()`` at import time), ``store gc --dry-run 2>&-``
printed its "would delete" line on stdout (``print(file=None)``), and ``>&-`` exited 0
with the result lost."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest


def _sh(redirs: str, *args: str, env: dict | None = None) -> subprocess.CompletedProcess:
    """``python -m kiln ARGS`` run by ``sh`` with ``redirs`` (e.g. ``2>&-``) applied."""
    return subprocess.run(
        ["sh", "-c", f'exec "$@" {redirs}', "sh", sys.executable, "-m", "kiln", *args],
        capture_output=True,
        timeout=120,
        env={**os.environ, **(env or {})},
    )


@pytest.fixture
def store_with_garbage(tmp_path: Path) -> tuple[Path, str]:
    store = tmp_path / "s"
    (tmp_path / "f").write_text("garbage\n")
    r = _sh("", "store", "add", "--store", str(store), str(tmp_path / "f"))
    assert r.returncode == 0, r.stderr
    return store, r.stdout.decode().strip()


def test_closed_stderr_discards_messages_and_never_moves_them_to_stdout(store_with_garbage):
    store, path = store_with_garbage
    # store verify imports the build loop, which asked stderr isatty() at import time
    normal = _sh("2>/dev/null", "store", "verify", "--store", str(store))
    closed = _sh("2>&-", "store", "verify", "--store", str(store))
    assert normal.returncode == 0 and closed.returncode == 0, closed.stdout
    assert closed.stdout == normal.stdout and b"internal error" not in closed.stdout
    # gc lists paths on stdout and its summary is a message (stderr), which went to
    # stdout with stderr closed
    normal = _sh("2>/dev/null", "store", "gc", "--dry-run", "--store", str(store))
    closed = _sh("2>&-", "store", "gc", "--dry-run", "--store", str(store))
    assert normal.returncode == 0 and closed.returncode == 0, closed.stdout
    assert closed.stdout == normal.stdout == f"{path}\n".encode()
    r = _sh("2>&-", "store", "gc", "--store", str(store))
    assert r.returncode == 0 and r.stdout == normal.stdout, r.stdout
    assert _sh("", "store", "info", "--store", str(store), path).returncode == 1  # it did run


def test_closed_stdout_fails_before_doing_anything(tmp_path: Path):
    store, f = tmp_path / "s", tmp_path / "f"
    f.write_text("x\n")
    r = _sh(">&-", "store", "add", "--store", str(store), str(f))
    assert r.returncode == 1 and b"standard output is closed" in r.stderr, r.stderr
    assert not store.exists()  # refused before the command ran
    r = _sh(">&- 2>&-", "--version")
    assert r.returncode == 1 and r.stderr == b""
    r = _sh(">/dev/null", "--version")  # discarding it is asked for so
    assert r.returncode == 0 and r.stderr == b""


def test_closed_stdin_reads_as_empty(tmp_path: Path):
    (tmp_path / "f").write_text("x\n")
    r = _sh("<&-", "store", "add", "--store", str(tmp_path / "s"), str(tmp_path / "f"))
    assert r.returncode == 0 and r.stdout.startswith(b"/kiln/store/"), r.stderr


def test_the_descriptors_opened_are_dev_null_inheritable_and_given_streams():
    code = (
        "import os, sys\n"
        "from kiln.main import open_closed_std_fds\n"
        "closed = open_closed_std_fds()\n"
        "ok = [os.readlink(f'/proc/self/fd/{fd}') == os.devnull and os.get_inheritable(fd) for fd in (0, 2)]\n"
        "print(sorted(closed), ok, sys.stdin is not None and sys.stderr is not None)\n"
        "print('to stderr', file=sys.stderr)\n"
    )
    r = subprocess.run(
        ["sh", "-c", 'exec "$@" <&- 2>&-', "sh", sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout == "[0, 2] [True, True] True\n", r.stdout


def test_the_build_loop_imports_without_a_stderr():
    code = (
        "import sys\nsys.stderr = None\nfrom kiln.store import build\nprint(build.BuildOptions().progress)\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "False\n", r.stdout


def test_run_command_in_a_process_without_stderr_keeps_messages_off_stdout():
    """A caller in the same process (``main`` is not the console script) started without
    fd 2: ``print(file=sys.stderr)`` with ``sys.stderr`` None would write to stdout."""
    code = (
        "import sys\n"
        "sys.stderr = None\n"
        "from kiln.common import run_command\n"
        "print(run_command(lambda argv: print('a message', file=sys.stderr) or 0, ['x']))\n"
    )
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and r.stdout == "0\n", r.stdout
