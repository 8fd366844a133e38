"""GC deletes failed builds' ``tmp/kiln-failed-*`` dirs (``kiln build -K``) once they are
``keep_failed_days`` old (``store/gcside.py``), never one a running build may still be
filling. Real sandboxed builds (bubblewrap, busybox) fail and keep their dirs; the
running build is a real one in another process."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from storekit import run_py
from test_gc_side_logs import build, busybox_graph

from kiln.store.build import BuildError
from kiln.store.gc import collect as gc
from kiln.store.localstore import LocalStore

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]

DAY = 86400


def fail_kept(store: LocalStore, drv: str) -> Path:
    """Build ``drv`` (it fails) with ``-K``; the dir it kept."""
    with pytest.raises(BuildError) as e:
        build(store, drv, keep_failed=True)
    kept = Path(str(e.value).split("kept build directory: ")[1].split("\n")[0])
    assert kept.parent == store.tmp and (kept / "build" / "left").exists()
    return kept


def age(p: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(p, (t, t))


def test_gc_deletes_failed_build_dirs_by_age(store, tmp_path):
    """A dir kept 8 days ago goes at the default (7 days); one kept today stays, until
    ``keep_failed_days`` 0 (or config.json's ``keep_failed_days``) says otherwise. Only
    what ``-K`` makes is touched: a symlink named like one (its target survives) and
    other names stay."""
    g = busybox_graph(store, tmp_path)
    old_drv, _ = g.drv(
        "old", "echo x > /build/left; mkdir /build/ro; echo y > /build/ro/f; chmod 555 /build/ro; exit 1"
    )
    new_drv, _ = g.drv("new", "echo x > /build/left; exit 1")
    old, new = fail_kept(store, old_drv), fail_kept(store, new_drv)
    age(old, 8)
    target = tmp_path / "mine"
    target.mkdir()
    (target / "f").write_text("keep\n")
    lookalike = store.tmp / "kiln-failed-link-abcd1234"
    os.symlink(target, lookalike)
    other = store.tmp / "kiln-failed-by-hand"  # (not a mkdtemp name)
    other.mkdir()
    for p in (lookalike, other):
        os.utime(p, (1, 1), follow_symlinks=False)
    dry = gc(store, dry_run=True)
    assert dry.failed_dirs == (str(old),) and old.exists() and dry.bytes_freed >= 4
    r = gc(store)
    assert r.failed_dirs == (str(old),) and not old.exists() and new.exists()
    assert r.disk_bytes_freed > 0
    # the store's config: a day; the dir is an hour old, so it stays
    cfg = store.root / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "keep_failed_days": 1}))
    age(new, 1 / 24)
    assert gc(store).failed_dirs == ()
    age(new, 2)
    assert gc(store).failed_dirs == (str(new),) and not new.exists()
    assert os.path.islink(lookalike) and (target / "f").read_text() == "keep\n" and other.is_dir()
    # 0: every one, whatever its age
    again = fail_kept(store, new_drv)
    assert gc(store, keep_failed_days=0).failed_dirs == (str(again),)
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "keep_failed_days": "soon"}))
    with pytest.raises(Exception, match="keep_failed_days"):
        gc(store)


def _held_build_dir(tmp: Path) -> bool:
    """Whether a ``build-*`` dir in ``tmp`` is held by its (live) owner."""
    from kiln.store.buildtmp import owner_gone

    return any(e.name.startswith("build-") and not owner_gone(e.path) for e in os.scandir(tmp))


def test_gc_keeps_a_failed_dir_a_running_build_may_be_filling(store, tmp_path):
    """``-K`` moves a failed build's entries into its new dir while that build's process
    holds its ``build-*`` dir: GC cannot tell which process fills which dir, so a dir
    made after a still running build started stays, even at ``keep_failed_days`` 0, and
    goes once that build has ended. An old dir (from before the build started) goes at
    once. A real build runs meanwhile in another process."""
    g = busybox_graph(store, tmp_path)
    old = fail_kept(store, g.drv("before", "echo x > /build/left; exit 1")[0])
    age(old, 30)
    time.sleep(1.1)  # (the running build starts after the old dir's mtime, to the second)
    slow, _ = g.drv("slow", "sleep 60; echo done > $out")
    code = (
        "import sys; from pathlib import Path; from kiln.sandbox.bwrap import BwrapExecutor; "
        "from kiln.store.build import Builder, BuildOptions; from kiln.store.localstore import LocalStore; "
        "s = LocalStore.open(Path(sys.argv[1])); "
        "Builder(s, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([sys.argv[2]])"
    )
    runner = run_py(code, str(store.root), slow, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 60
        while not _held_build_dir(store.tmp):
            assert runner.poll() is None, runner.stderr.read()
            assert time.monotonic() < deadline, "the running build never held its build dir"
            time.sleep(0.1)
        during = fail_kept(store, g.drv("during", "echo x > /build/left; exit 1")[0])
        dry = gc(store, dry_run=True, keep_failed_days=0)
        assert dry.failed_dirs == (str(old),)
        r = gc(store, keep_failed_days=0)
        assert r.failed_dirs == (str(old),) and not old.exists() and during.exists()
        assert any(str(during) in k and f"process {runner.pid}" in k for k in r.kept), r.kept
        assert runner.poll() is None  # (the build ran all along)
    finally:
        runner.send_signal(signal.SIGKILL)
        runner.wait()
    r = gc(store, keep_failed_days=0)  # the build is gone (killed): its dir and the kept one go
    assert r.failed_dirs == (str(during),) and not during.exists()
    assert any(os.path.basename(t).startswith("build-") for t in r.tmp_dirs), r.tmp_dirs


def test_gc_keeps_a_failed_dir_whose_lock_a_process_holds(store, tmp_path):
    """A process that holds the ``flock`` of a kept dir (one working in it) keeps it
    from GC; once that process is gone the dir goes."""
    g = busybox_graph(store, tmp_path)
    kept = fail_kept(store, g.drv("locked", "echo x > /build/left; exit 1")[0])
    age(kept, 30)
    code = (
        "import fcntl, os, sys; fd = os.open(sys.argv[1], os.O_RDONLY | os.O_DIRECTORY); "
        "fcntl.flock(fd, fcntl.LOCK_EX); print('held', flush=True); sys.stdin.read()"
    )
    holder = run_py(code, str(kept), stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline() == "held\n"
        r = gc(store, keep_failed_days=0)
        assert r.failed_dirs == () and kept.exists()
        assert any(str(kept) in k and "holds its lock" in k for k in r.kept), r.kept
    finally:
        holder.stdin.close()
        holder.wait()
    assert gc(store, keep_failed_days=0).failed_dirs == (str(kept),) and not kept.exists()


def test_gc_cli_keep_failed_option(store, tmp_path):
    """``kiln store gc --keep-failed DAYS`` lists each failed dir it deletes and counts
    them in its summary; ``--dry-run`` deletes nothing."""
    g = busybox_graph(store, tmp_path)
    kept = fail_kept(store, g.drv("cli", "echo x > /build/left; exit 1")[0])
    age(kept, 3)
    store.close()

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "kiln", "store", "gc", "--store", str(store.root), *args],
            capture_output=True,
            text=True,
            timeout=120,
        )

    r = cli()
    assert r.returncode == 0 and "0 failed build dirs" in r.stderr and kept.exists(), r.stderr
    r = cli("--keep-failed", "2", "--dry-run")
    assert f"{kept} (failed build's directory)" in r.stdout and "would delete" in r.stderr and kept.exists()
    r = cli("--keep-failed", "2")
    assert r.returncode == 0 and f"{kept} (failed build's directory)" in r.stdout, r.stderr
    assert "1 failed build dirs" in r.stderr and "on disk" in r.stderr and not kept.exists()
    bad = cli("--keep-failed", "-1")
    assert bad.returncode == 2 and "--keep-failed" in bad.stderr
