"""The ingest's copy writer (``store/copywriter.py``): big files of the materialised
copy written on their own thread. Failures mid-file reach the walk; no descriptor or
thread outlives an ingest; descriptors stay bounded under a low ``RLIMIT_NOFILE``."""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from storekit import make_tree

from kiln.store import copywriter, ingest, nar, treeplan
from kiln.store.narsink import NarSink
from kiln.store.objects import CHUNK


def _open_under(root: Path) -> list[str]:
    """Files under ``root`` this process has open (other tests' garbage may close or
    open unrelated descriptors meanwhile, so only these are compared)."""
    out = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:
            continue
        if target.startswith(str(root)):
            out.append(target)
    return out


@pytest.mark.parametrize("direct", [True, False])
def test_a_write_error_in_the_copy_writer_reaches_the_walk(tmp_path: Path, monkeypatch, direct: bool):
    rng = random.Random(3)
    src = make_tree(tmp_path / "src", {f"f{i:02d}": rng.randbytes(CHUNK * 2 + 999) for i in range(12)})
    calls = [0]
    real_rate, real_all = copywriter.DirectRate.write_blocks, copywriter.write_all

    def failing(real):  # noqa: ANN001, ANN202
        def write(*args):  # noqa: ANN002, ANN202
            calls[0] += 1
            if calls[0] == 7:  # mid-file: the third file's first piece
                raise OSError(5, "Input/output error (injected)")
            return real(*args)

        return write

    monkeypatch.setattr(copywriter.DirectRate, "write_blocks", failing(real_rate))
    monkeypatch.setattr(copywriter, "write_all", failing(real_all))
    threads = threading.active_count()
    sink = NarSink(os.open(tmp_path / "obj", os.O_WRONLY | os.O_CREAT, 0o644))
    try:
        with pytest.raises(OSError, match="injected"):
            ingest.TreeIngest(sink, direct=direct).run(src, tmp_path / "copy")
    finally:
        sink.abort()
    assert _open_under(tmp_path) == []  # every copy file closed, by the walk or the writer
    assert threading.active_count() <= threads  # (other tests' threads may end meanwhile)
    assert calls[0] < 24  # it stopped early: the tree takes 36 piece writes


def test_many_big_files_under_a_low_descriptor_limit(tmp_path: Path):
    """300 files of 200 KiB (each one goes to the copy writer) with RLIMIT_NOFILE 16: the
    creator and the copy writer share a quarter of the limit."""
    rng = random.Random(4)
    src = make_tree(tmp_path / "src", {f"d{i % 3}/f{i:03d}": rng.randbytes(200 << 10) for i in range(300)})
    code = """
import os, resource, sys
from pathlib import Path
resource.setrlimit(resource.RLIMIT_NOFILE, (16, 16))
from kiln.store.localstore import LocalStore
s = LocalStore.open(Path(sys.argv[1]))
info = s.add_path(Path(sys.argv[2]))
print(s.real_path(info.path))
"""
    r = subprocess.run(
        [sys.executable, "-c", code, str(tmp_path / "store"), str(src)], capture_output=True, text=True
    )
    assert r.returncode == 0, r.stderr
    assert nar.dump_bytes(Path(r.stdout.strip())) == nar.dump_bytes(src)


@pytest.mark.parametrize("failing", ["writer", "creator"])
def test_a_thread_that_cannot_start_leaves_nothing_running(tmp_path: Path, monkeypatch, failing: str):
    """ "can't start new thread" (or Ctrl-C) while starting the copy writer or the
    creator: the error is raised and no thread or descriptor is left behind."""
    rng = random.Random(5)
    src = make_tree(tmp_path / "src", {f"f{i:03d}": rng.randbytes(200 << 10) for i in range(50)})
    cls = copywriter.CopyWriter if failing == "writer" else treeplan.Creator

    def refuse(self):  # noqa: ANN001, ANN202
        raise RuntimeError("can't start new thread (injected)")

    monkeypatch.setattr(cls, "start", refuse)
    threads = threading.active_count()
    sink = NarSink(os.open(tmp_path / "obj", os.O_WRONLY | os.O_CREAT, 0o644))
    try:
        with pytest.raises(RuntimeError, match="injected"):
            ingest.TreeIngest(sink).run(src, tmp_path / "copy")
    finally:
        sink.abort()
    assert _open_under(tmp_path) == []
    assert threading.active_count() <= threads
