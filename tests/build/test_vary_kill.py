"""A ``kiln build --check --vary`` killed mid-rebuild leaves disorderfs mounts (and their
daemons) in its ``tmp/vary-*`` dir; the next GC takes them down and removes the dir.
Real bubblewrap, real disorderfs, a real SIGKILL."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time

import pytest

from kiln.sandbox.bwrap import BwrapExecutor
from kiln.store.build import Builder, BuildOptions
from kiln.store.localstore import LocalStore
from kiln.store.mounts import mounts_below

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
    pytest.mark.skipif(
        shutil.which("disorderfs") is None or not os.path.exists("/dev/fuse"), reason="disorderfs not usable"
    ),
]


def test_gc_takes_down_the_mounts_of_a_killed_vary_check(store, graph):
    # only the varied rebuild (umask 077) hangs, so the first build finishes
    # (the varied rebuild leaves 1 MB in its build dir, which a dry run must count once)
    a, _ = graph.drv(
        "hangs-varied",
        'echo a > $out; [ "$(umask)" = 0077 ] && { head -c 1000000 /dev/zero > /build/big; exec sleep 300; }; true',
    )
    Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([a])
    env = dict(os.environ, KILN_HOME=str(store.root))
    p = subprocess.Popen(
        [sys.executable, "-m", "kiln", "build", "--check", "--vary", a],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    tmp = store.root / "tmp"
    try:  # (the mounts are taken down whatever fails, the wait included)
        try:
            deadline = time.monotonic() + 60
            # three mounts: the build dir, the scratch store dir and the view of the inputs
            # (read-only: a dry run must not count the store through it, nor GC remove it)
            # and the 1 MB file written whole
            while sum(t == "fuse.disorderfs" for _, t in mounts_below(tmp)) < 3 or [
                f.stat().st_size for f in tmp.glob("vary-*/a/deeper/path/*/build.real/big")
            ] != [1_000_000]:
                assert time.monotonic() < deadline and p.poll() is None, "the varied rebuild never mounted"
                time.sleep(0.05)
        finally:
            os.kill(p.pid, signal.SIGKILL)
            p.wait()
        assert mounts_below(tmp) and [e.name for e in tmp.iterdir() if e.name.startswith("vary-")]
        store.close()
        s = LocalStore.open(store.root)
        for i, p in enumerate(s.all_paths()):  # only the leftover dir is garbage
            s.add_root(f"keep-{i}", p)
        dry = s.gc(dry_run=True)  # lists it, unmounts nothing, counts its bytes once
        assert any("/vary-" in t for t in dry.tmp_dirs) and mounts_below(tmp), dry
        assert 1_000_000 <= dry.bytes_freed < 1_500_000, dry.bytes_freed
        r = s.gc()
        assert not r.kept, r.kept
        assert any("/vary-" in t for t in r.tmp_dirs), r.tmp_dirs
        assert mounts_below(tmp) == []
        assert not [e.name for e in tmp.iterdir() if e.name.startswith("vary-")]
        assert s.verify().ok
    finally:
        for point, _ in mounts_below(tmp):  # never leave a mount behind a failed test
            subprocess.run(["fusermount", "-u", "-z", point], capture_output=True)


#: ``kiln ARGS...`` whose first unmount of a disorderfs view (argv[1]: the trial mount's,
#: or one of the rebuild's) sends the process SIGINT
_INTERRUPTED_UNMOUNT = """
import os, signal, sys
from kiln.store import vary
real, sent, which = vary._unmount, [], sys.argv.pop(1)
def unmount(point):
    if not sent and (point.name == ".probe-view") == (which == "trial"):
        sent.append(point)
        os.kill(os.getpid(), signal.SIGINT)
    real(point)
vary._unmount = unmount
sys.argv = ["kiln", *sys.argv[1:]]
from kiln.main import cli
cli()
"""


@pytest.mark.parametrize("which", ["trial", "rebuild"])
def test_a_signal_as_the_mounts_are_taken_down_takes_them_all_down(store, graph, which):
    """^C as the trial mount or the varied rebuild's first mount is taken down: every
    mount is still taken down and the scratch dir removed (``sigshield.finish``), then
    the command ends 130. Before, the rest were left mounted (their daemons running)
    until the next GC."""
    a, _ = graph.drv("varied-ok", "echo a > $out")
    Builder(store, BwrapExecutor(), BuildOptions(), say=lambda m: None).realise([a])
    env = dict(os.environ, KILN_HOME=str(store.root))
    tmp = store.root / "tmp"
    try:
        r = subprocess.run(
            [sys.executable, "-c", _INTERRUPTED_UNMOUNT, which, "build", "--check", "--vary", a],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert (r.returncode, r.stderr.strip().splitlines()[-1:]) == (130, ["kiln: interrupted"]), r.stderr
        assert mounts_below(tmp) == []
        assert not [e.name for e in tmp.iterdir() if e.name.startswith("vary-")]
    finally:
        for point, _ in mounts_below(tmp):  # never leave a mount behind a failed test
            subprocess.run(["fusermount", "-u", "-z", point], capture_output=True)
