"""Fixtures for the recipe-language tests.

``hash_sources`` is an ``add_source`` callback that computes a local source's store
path the way ``LocalStore.add_path`` does (NAR hash of the filtered tree, via
``kiln.store.nar.hash_path`` on a filtered copy) without writing any store.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from lang_helpers import DATA, source_hasher


@pytest.fixture
def hash_sources():
    return source_hasher()


@pytest.fixture
def features(tmp_path: Path) -> Path:
    """A copy of tests/data/lang/features with a ``.git`` dir in the local source
    (git cannot store one, and it must be left out of the source path)."""
    dest = tmp_path / "features"
    shutil.copytree(DATA / "features", dest)
    (dest / "srcdir" / ".git").mkdir()
    (dest / "srcdir" / ".git" / "HEAD").write_text("ref: refs/heads/main\n")
    return dest
