"""A store on a file system that fills up mid-ingest: the real ENOSPC (a small ext4
image, loop-mounted), not an injected one. Needs root and loop devices; skipped
otherwise, with the reason."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from storekit import make_tree, tmp_leftovers

from kiln.store.localstore import LocalStore

IMAGE_MIB = 48


@pytest.fixture
def small_fs(tmp_path: Path):
    """A 48 MiB ext4 file system mounted at ``tmp_path / "mnt"``."""
    if os.geteuid() != 0 or not shutil.which("mkfs.ext4"):
        pytest.skip("needs root and mkfs.ext4 to loop-mount a small file system")
    img, mnt = tmp_path / "fs.img", tmp_path / "mnt"
    with open(img, "wb") as f:
        f.truncate(IMAGE_MIB << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(img)], check=True)
    mnt.mkdir()
    r = subprocess.run(["mount", "-o", "loop", str(img), str(mnt)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"cannot loop-mount here: {r.stderr.strip()}")
    try:
        yield mnt
    finally:
        # lazily if something (a failing test's leaked descriptor) still holds it
        if subprocess.run(["umount", str(mnt)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_a_full_disk_fails_cleanly_and_the_store_stays_usable(small_fs: Path, tmp_path: Path):
    # 64 MiB of random bytes: neither the copy nor the object fits in 48 MiB
    src = make_tree(tmp_path / "big", {f"f{i}": os.urandom(4 << 20) for i in range(16)})
    store = LocalStore.open(small_fs / "store")
    try:
        with pytest.raises(OSError) as e:
            store.add_path(src)
        assert e.value.errno == 28  # the disk error itself, not a clean-up error hiding it
        assert store.all_paths() == []
        assert tmp_leftovers(store) == []
        assert not list((store.root / "objects").rglob("*.nar.zst"))
        # space is back and the store works
        small = make_tree(tmp_path / "small", {"a": b"hello\n"})
        info = store.add_path(small)
        assert store.is_valid(info.path)
        assert store.verify().ok
    finally:
        store.close()


def test_cli_reports_a_full_disk(small_fs: Path, tmp_path: Path):
    src = make_tree(tmp_path / "big", {f"f{i}": os.urandom(4 << 20) for i in range(16)})
    env = dict(os.environ, KILN_HOME=str(small_fs / "store"))
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "store", "add", str(src)], capture_output=True, text=True, env=env
    )
    assert r.returncode != 0
    assert "No space left on device" in r.stderr
    assert "Traceback" not in r.stderr and "BufferError" not in r.stderr
