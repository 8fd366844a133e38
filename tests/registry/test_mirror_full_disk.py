"""``kiln mirror sync`` into a file system that fills up: whenever it fills, nothing is
published that the mirror's index does not list (registry.md: "on any failure ... leave
DST's narinfos and index untouched"). Before, the narinfos were written one by one after
the checks, and a full disk part-way left those written by then published without the
index that lists them (a client of the mirror got them, a mirror of the mirror refused).
Each failure names the full file system (it said "No space left on device", or that
line per object). A real small tmpfs, filled to each of a range of levels by a filler file."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest
from regkit import add_chain, make_store

from kiln.registry.client import open_client
from kiln.registry.mirror import MirrorError, sync
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.storage import open_storage

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="needs root (mounts a small tmpfs)")


def _listed(dst: Path) -> set[str]:
    """The hash parts DST's signed index lists (none without an index)."""
    try:
        ts = json.loads((dst / "index/timestamp.json").read_bytes())["signed"]
    except FileNotFoundError:
        return set()
    snap = json.loads((dst / f"index/{ts['meta']['snapshot.json']['version']}.snapshot.json").read_bytes())
    v = snap["signed"]["meta"]["index.json"]["version"]
    return set(json.loads((dst / f"index/{v}.index.json").read_bytes())["signed"]["paths"])


def _published(dst: Path) -> set[str]:
    return {p.name[:32] for p in dst.glob("*.narinfo")} if dst.is_dir() else set()


def test_a_full_file_system_at_any_point_publishes_nothing_unlisted(tmp_path: Path, keys) -> None:
    store = make_store(tmp_path / "store")
    paths = add_chain(store, tmp_path, 40)
    reg = tmp_path / "src"
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    root = (reg / "index/root.json").read_bytes()
    small = tmp_path / "small"
    small.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(small)], check=True)
    try:
        failed = 0
        # free space from 8 to 300 pages: the disk fills while objects, narinfos or the
        # index are written (a full sync needs ~95 pages here), or not at all
        for pages in range(8, 300, 7):
            for p in small.iterdir():
                subprocess.run(["rm", "-rf", str(p)], check=True)
            st = os.statvfs(small)
            filler = small / "filler"
            with open(filler, "wb") as f:
                os.posix_fallocate(f.fileno(), 0, (st.f_bavail - pages) * st.f_frsize)
            dst = small / "m"
            try:
                sync(f"file://{reg}", dst, root=root, progress=False)
            except MirrorError as e:  # (not a bare "No space left on device" any more)
                failed += 1
                assert f"the file system holding {dst} is full (" in str(e) and "sync again" in str(e), str(e)
            assert _published(dst) <= _listed(dst), (pages, sorted(_published(dst) - _listed(dst))[:3])
            filler.unlink()  # room again: the next sync completes
            sync(f"file://{reg}", dst, root=root, progress=False)
            assert _published(dst) == _listed(dst) and len(_listed(dst)) == len(paths)
        assert failed, "the disk never filled: the test measured nothing"
    finally:
        subprocess.run(["umount", "-l", str(small)], check=False)
