"""Fixtures for registry tests (helpers live in regkit.py): keys, and factories for real
servers on 127.0.0.1 that are stopped by pid at teardown."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))  # for ``import regkit`` in any import mode

from regkit import Keys, Server, start_kiln, start_nginx  # noqa: E402


@pytest.fixture
def keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, "kiln-test-1")


@pytest.fixture
def other_keys(tmp_path: Path) -> Keys:
    return Keys(tmp_path, "intruder-1")


@pytest.fixture
def kiln_server() -> Iterator:
    started: list[Server] = []

    def start(*args: str) -> Server:
        s = start_kiln(list(args))
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()


@pytest.fixture
def nginx_server(tmp_path: Path) -> Iterator:
    started: list[Server] = []

    def start(root: Path, workers: int = 1) -> Server:
        s = start_nginx(root, tmp_path / f"nginx{len(started)}", workers)
        started.append(s)
        return s

    yield start
    for s in started:
        s.stop()
