"""A GC root's name names its path for ``kiln store info`` and ``kiln push`` as it does
for ``kiln run``, ``sbom``, ``verify`` and ``log`` (they refused it)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path


def _kiln(home: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, KILN_HOME=str(home))
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args], env=env, capture_output=True, text=True, timeout=60
    )


def test_store_info_and_push_take_a_root_name(tmp_path: Path) -> None:
    src = tmp_path / "t"
    src.mkdir()
    (src / "f").write_text("x\n")
    home = tmp_path / "home"
    r = _kiln(home, "store", "add", str(src), "--add-root", "myroot")
    assert r.returncode == 0, r.stderr
    path = r.stdout.strip()
    r = _kiln(home, "store", "info", "myroot")
    assert r.returncode == 0 and f"path:          {path}" in r.stdout, r.stderr
    r = _kiln(home, "push", "--to", f"file://{tmp_path / 'reg'}", "myroot")
    assert r.returncode == 0 and "pushed 1 of 1 paths" in r.stdout, r.stderr
    r = _kiln(home, "store", "info", "nosuchroot")
    assert r.returncode == 1 and "'nosuchroot' is not a path in the store" in r.stderr
