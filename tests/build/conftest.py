"""Fixtures for build-loop tests (helpers in buildkit.py): a real local store, a static
busybox added to it as a source, and a ``Graph`` that writes derivations using it."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from buildkit import APPLETS, BUSYBOX, Graph

from kiln.store.localstore import LocalStore


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    s = LocalStore.open(tmp_path / "home")
    yield s
    s.close()


@pytest.fixture
def busybox_path(store: LocalStore, tmp_path: Path) -> str:
    d = tmp_path / "bb"
    (d / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, d / "bin" / "busybox")
    for a in APPLETS:
        os.symlink("busybox", d / "bin" / a)
    return store.add_path(d, "busybox-static").path


@pytest.fixture
def graph(store: LocalStore, busybox_path: str) -> Graph:
    return Graph(store, busybox_path)
