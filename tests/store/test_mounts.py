"""``store/mounts.py``: reading ``/proc/self/mountinfo`` (escapes, nesting, prefixes)."""

from __future__ import annotations

from pathlib import Path

from kiln.store.mounts import mounts_below

INFO = b"""\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/vda rw
90 22 0:50 / /s/tmp/vary-1/a/b/check-x/build rw,nosuid,nodev - fuse.disorderfs disorderfs rw
91 22 0:51 / /s/tmp/vary-1/a/b/check-x/store rw shared:7 master:2 - fuse.disorderfs disorderfs rw
92 90 0:52 / /s/tmp/vary-1/a/b/check-x/build/deeper rw - tmpfs tmpfs rw
93 22 0:53 / /s/tmp/vary-10/x rw - fuse.disorderfs disorderfs rw
94 22 0:54 / /s/tmp/vary\\0401/with\\134space rw - fuse.sshfs sshfs rw
"""


def test_mounts_below_a_directory_deepest_first():
    assert mounts_below(Path("/s/tmp/vary-1"), INFO) == [
        ("/s/tmp/vary-1/a/b/check-x/build/deeper", "tmpfs"),
        ("/s/tmp/vary-1/a/b/check-x/build", "fuse.disorderfs"),
        ("/s/tmp/vary-1/a/b/check-x/store", "fuse.disorderfs"),
    ]  # not vary-10: a sibling that shares the prefix


def test_mount_points_are_unescaped():
    assert mounts_below(Path("/s/tmp/vary 1"), INFO) == [("/s/tmp/vary 1/with\\space", "fuse.sshfs")]
    assert mounts_below(Path("/s/tmp/none"), INFO) == []


def test_fuse_unmount_takes_fusermount3_where_fusermount_is_missing(tmp_path, monkeypatch):
    """disorderfs depends on ``fuse | fuse3``: a machine may only have ``fusermount3``."""
    from kiln.store.mounts import fuse_unmount

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    log = tmp_path / "called"
    shim = bin_dir / "fusermount3"
    shim.write_text(f'#!/bin/sh\necho "$@" > {log}\n')
    shim.chmod(0o755)
    monkeypatch.setenv("PATH", str(bin_dir))
    assert fuse_unmount("/some/mount", lazy=True) is None
    assert log.read_text() == "-u -z /some/mount\n"
    shim.write_text("#!/bin/sh\necho busy >&2; exit 1\n")
    assert "cannot unmount /some/mount: busy" in (fuse_unmount("/some/mount") or "")
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    assert "neither fusermount nor fusermount3" in (fuse_unmount("/some/mount") or "")
