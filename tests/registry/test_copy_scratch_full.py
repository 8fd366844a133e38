"""``kiln copy`` between registries stages objects in a scratch directory under
``$TMPDIR``; when that file system is full the error names the directory, ``$TMPDIR`` and
what to do (it said only "No space left on device"). A real 1 MiB tmpfs as TMPDIR."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.store.localstore import LocalStore


def test_a_full_scratch_file_system_is_named(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root (mounts a small tmpfs)")
    store_root = tmp_path / "s"
    with LocalStore.open(store_root) as store:
        src = tmp_path / "big"
        src.write_bytes(os.urandom(3 << 20))  # incompressible: a 3 MiB object
        path = store.add_path(src).path
    env = {**os.environ, "KILN_HOME": str(store_root)}
    kiln = [sys.executable, "-m", "kiln"]
    key = tmp_path / "k.sec"
    gen = subprocess.run(
        [*kiln, "key", "generate", "t-1", "-o", str(key)], env=env, capture_output=True, text=True
    )
    assert gen.returncode == 0, gen.stderr
    pub = gen.stdout.strip()
    r = subprocess.run(
        [*kiln, "push", path, "--to", f"file://{tmp_path / 'r1'}", "--sign-key", str(key)],
        env=env,
        capture_output=True,
        text=True,
    )
    assert r.returncode == 0, r.stderr
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(small)], check=True)
    try:
        r = subprocess.run(
            [
                *kiln,
                "copy",
                "--from",
                f"file://{tmp_path / 'r1'}",
                "--to",
                f"file://{tmp_path / 'r2'}",
                path,
                "--trusted-key",
                pub,
            ],
            env={**env, "TMPDIR": str(small)},
            capture_output=True,
            text=True,
        )
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
    assert r.returncode == 1, r.stderr
    assert "is on a full file system" in r.stderr and f"$TMPDIR (now {small})" in r.stderr, r.stderr
    assert "Traceback" not in r.stderr
