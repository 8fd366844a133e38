"""A ^C while ``kiln build`` waits for its bookkeeping thread (archiving, committing,
removing a finished build's temp dir) waits for that work before the command ends: its
``tmp/build-*`` dir is removed, not left half removed. An interrupt soak found it left
(4 runs in 90: exit 130 or 143, the dir whole or cut half-way, until the next GC): the
wait after the builds was outside the ``try`` that cleans up. The moment is made exact:
the bookkeeping thread sends SIGINT as it starts removing the build's dir, and takes
its time. Real bubblewrap."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pytest

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
]

RUNNER = """
import os, signal, sys, threading, time
from kiln.store import buildtmp
real, sent = buildtmp.release_tmpdir, []
def release_tmpdir(d, fd):
    if not sent and threading.current_thread() is not threading.main_thread() and d.name.startswith("build-"):
        sent.append(d)
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.5)
    real(d, fd)
buildtmp.release_tmpdir = release_tmpdir
sys.argv = ["kiln", *sys.argv[1:]]
from kiln.main import cli
cli()
"""


def test_a_signal_while_the_bookkeeping_thread_removes_a_build_dir_waits_for_it(store, graph):
    a, _ = graph.drv("quick", "echo a > $out")
    env = dict(os.environ, KILN_HOME=str(store.root))
    r = subprocess.run(
        [sys.executable, "-c", RUNNER, "build", a], env=env, capture_output=True, text=True, timeout=120
    )
    assert (r.returncode, r.stderr.strip().splitlines()[-1:]) == (130, ["kiln: interrupted"]), r.stderr
    left = [e.name for e in (store.root / "tmp").iterdir() if e.name.startswith("build-")]
    assert left == []
