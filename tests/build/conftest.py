"""Fixtures for build-loop tests (helpers in buildkit.py): a real local store, a static
busybox added to it as a source, and a ``Graph`` that writes derivations using it."""

from __future__ import annotations

from pathlib import Path

import pytest
from buildkit import Graph, add_busybox

from kiln.store.localstore import LocalStore


@pytest.fixture
def store(tmp_path: Path) -> LocalStore:
    s = LocalStore.open(tmp_path / "home")
    yield s
    s.close()


@pytest.fixture
def busybox_path(store: LocalStore, tmp_path: Path) -> str:
    return add_busybox(store, tmp_path)


@pytest.fixture
def graph(store: LocalStore, busybox_path: str) -> Graph:
    return Graph(store, busybox_path)
