"""``kiln store verify`` on a terminal shows how far it got (a store of thousands of
paths took minutes without a word, and a GC waited on it silently); ``kiln store gc``
shows its deletion the same way. Off a terminal nothing is added. Run under a real
pseudo-terminal."""

from __future__ import annotations

import os
import pty
import subprocess
import sys
from pathlib import Path

from kiln.store.localstore import LocalStore


def _on_a_terminal(*args: str) -> tuple[int, str]:
    """Run ``kiln ARGS`` with stderr (and stdin/stdout) on a new pseudo-terminal."""
    master, slave = pty.openpty()
    p = subprocess.Popen([sys.executable, "-m", "kiln", *args], stdin=slave, stdout=slave, stderr=slave)
    os.close(slave)
    out = b""
    while True:
        try:
            chunk = os.read(master, 65536)
        except OSError:  # EIO: the child closed its side
            break
        if not chunk:
            break
        out += chunk
    os.close(master)
    return p.wait(), out.decode(errors="replace")


def test_verify_and_gc_show_progress_on_a_terminal(tmp_path: Path) -> None:
    root = tmp_path / "s"
    with LocalStore.open(root) as store:
        for i in range(12):
            (tmp_path / f"f{i}").write_text(f"{i}\n")
            store.add_path(tmp_path / f"f{i}")
    rc, out = _on_a_terminal("store", "verify", "--store", str(root))
    assert rc == 0, out
    assert "verifying (a GC waits until this is done): 12/12" in out, out
    assert "checked 12 paths: 0 problem(s)" in out
    rc, out = _on_a_terminal("store", "gc", "--store", str(root))
    assert rc == 0, out
    assert "removing garbage (the store is unlocked): " in out, out
    # not on a terminal: no meter
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "store", "verify", "--store", str(root)],
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0 and "verifying" not in r.stderr + r.stdout
