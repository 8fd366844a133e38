"""``Scratch.remove`` and ``scratch.writing``: a temp name that cannot be removed (here an
immutable file, ``chattr +i``) keeps neither the other names nor the writer's own error
from being seen: every name is tried, the first failure is raised after, and a failing
write's own exception is what its caller gets."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from kiln.store.scratch import Scratch, writing

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("chattr") is None, reason="needs root and chattr (immutable files)"
)


def _immutable(p: Path) -> None:
    p.write_bytes(b"stuck")
    r = subprocess.run(["chattr", "+i", str(p)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"this file system has no immutable files: {r.stderr.strip()}")


def _release(p: Path) -> None:
    subprocess.run(["chattr", "-i", str(p)], check=True)


def test_every_name_is_tried_then_the_first_failure_raised(tmp_path: Path) -> None:
    s = Scratch(tmp_path / "w")
    stuck, other = s / "a-object", s / "b-tree"
    _immutable(stuck)
    other.mkdir()
    (other / "f").write_text("x")
    try:
        with pytest.raises(PermissionError):
            s.remove()
        assert not other.exists() and stuck.exists()
    finally:
        _release(stuck)


def test_a_failing_writer_keeps_its_own_exception(tmp_path: Path) -> None:
    lock, scratch_dir = tmp_path / "gc.lock", tmp_path / "tmp"
    held: list[Path] = []
    try:
        with pytest.raises(ValueError, match="the writer's own"), writing(lock, scratch_dir) as s:
            held.append(s / "object")
            _immutable(held[0])
            raise ValueError("the writer's own error")
    finally:
        for p in held:
            _release(p)
