"""Same recipe ⇒ same store path, on every machine: the output paths of recipes/ are
pinned in tests/data/recipes/out-paths.txt and must come out the same from a fresh
store, another working directory and another hash seed. (If a recipe or the toolchain
lock changes on purpose, regenerate the file with `kiln path`.)"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PINNED = [
    line.split() for line in (ROOT / "tests/data/recipes/out-paths.txt").read_text().splitlines() if line
]


@pytest.mark.parametrize(("attr", "expected"), PINNED)
def test_output_path_is_pinned(attr, expected, tmp_path):
    env = dict(
        os.environ, KILN_HOME=str(tmp_path / "home"), PYTHONHASHSEED="12345", LC_ALL="C", TZ="Asia/Tokyo"
    )
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "path", str(ROOT / "recipes" / f"{attr}.recipe"), attr],
        env=env,
        cwd="/",
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == expected
