"""Fixtures for the local-store tests: a fresh store per test and small sample trees."""

from __future__ import annotations

from pathlib import Path

import pytest
from storekit import make_tree

from kiln.store.localstore import LocalStore


@pytest.fixture
def store(tmp_path: Path):
    s = LocalStore.open(tmp_path / "store")
    yield s
    s.close()


@pytest.fixture
def sample(tmp_path: Path) -> Path:
    return make_tree(
        tmp_path / "sample",
        {
            "a.txt": "hello\n",
            "bin/run": "x:#!/bin/sh\necho hi\n",
            "link": "->a.txt",
            "sub/deep/z": b"\0" * 100,
        },
    )
