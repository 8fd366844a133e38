"""Fixtures for rebuilder tests: a real local store with a static busybox as a source, a
derivation maker, the ``kiln`` command, a rebuilder key, and real ``kiln serve``
registries on 127.0.0.1 stopped by pid at teardown (helpers live in rbkit.py).

Everything runs for real: bubblewrap sandboxes, stores, HTTP servers. Nothing is mocked.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for ``import rbkit`` in any import mode
sys.path.insert(0, str(Path(__file__).parents[1] / "build"))  # buildkit's add_busybox

from buildkit import add_busybox  # noqa: E402
from rbkit import APPLETS, Graph, Keys, Kiln, Server  # noqa: E402

from kiln.store.localstore import LocalStore  # noqa: E402


@pytest.fixture
def store(tmp_path: Path) -> Iterator[LocalStore]:
    s = LocalStore.open(tmp_path / "home")
    yield s
    s.close()


@pytest.fixture
def busybox_path(store: LocalStore, tmp_path: Path) -> str:
    return add_busybox(store, tmp_path, APPLETS)


@pytest.fixture
def graph(store: LocalStore, busybox_path: str) -> Graph:
    return Graph(store, busybox_path)


@pytest.fixture
def kiln(store: LocalStore) -> Kiln:
    return Kiln(store.root)


@pytest.fixture
def rebuilder_keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, "rebuilder-a-1")


@pytest.fixture
def serve_store() -> Iterator:
    """``serve_store(root)`` starts ``kiln serve --store root`` on a free local port."""
    started: list[Server] = []

    def start(root: Path) -> Server:
        # port 0: the server picks a free port and says which
        cmd = [sys.executable, "-m", "kiln", "serve", "--store", str(root), "--listen", "127.0.0.1:0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        s = Server(proc, "")
        started.append(s)
        line = proc.stdout.readline()  # type: ignore[union-attr]
        if "listening on http://127.0.0.1:" not in line:
            s.stop()
            raise RuntimeError(f"kiln serve failed: {line} {proc.stderr.read()}")  # type: ignore[union-attr]
        s.url = line.split("listening on ", 1)[1].strip()
        return s

    yield start
    for s in started:
        s.stop()
