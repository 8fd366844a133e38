"""An interrupt (Ctrl-C, or SIGTERM, which kiln turns into the same) that lands while a
substitution's download task is *running*, not waiting, ends that task with the
interrupt; ``Substituter.fetch_many`` used to run the loop again for it and wait for
ever (the loop never stops for a task that ended in KeyboardInterrupt: bpo-22429), so
a cancelled CI job hung until SIGKILL. Found by the concurrency soak.

The interrupt is made to land at a point where the task runs (its first read of the
store), in a child process with a hang watchdog; a real ``kiln serve``."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from faultkit import Served, serve_registry

CHILD = """
import faulthandler, sys
from pathlib import Path
from kiln.registry.substitute import Substituter
from kiln.store.localstore import LocalStore
from kiln.store.keyfiles import load_public_key

url, pub, path, dest = sys.argv[1:5]


class InterruptedStore:
    # the store, but the interrupt arrives when the download task first reads its root
    def __init__(self, store):
        self._store = store

    @property
    def root(self):
        raise KeyboardInterrupt()

    def __getattr__(self, name):
        return getattr(self._store, name)


store = LocalStore.open(Path(dest))
faulthandler.dump_traceback_later(30, exit=True)  # a hang: exit 1 with the stack
with Substituter([(url, 40)], [load_public_key(pub)]) as s:
    infos = s.query_many([path])
    assert infos, "path not offered"
    try:
        s.fetch_many(InterruptedStore(store), list(infos.values()))
    except KeyboardInterrupt:
        print("interrupted, not hung")
"""


@pytest.fixture
def served(tmp_path: Path, keys, kiln_server) -> Served:
    return serve_registry(tmp_path, keys, kiln_server)


def test_an_interrupt_while_the_download_task_runs_does_not_hang(served: Served, tmp_path: Path) -> None:
    r = subprocess.run(
        [sys.executable, "-c", CHILD, served.url, str(served.pk_file), served.small[0], str(tmp_path / "B")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 0 and "interrupted, not hung" in r.stdout, r.stdout + r.stderr[-3000:]
