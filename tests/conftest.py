"""Shared by every test directory: ``tests/`` on ``sys.path`` for ``import clikit``, and
a private cache home for the tools the tests run."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))


@pytest.fixture(autouse=True, scope="session")
def _private_cache_home(tmp_path_factory: pytest.TempPathFactory):
    """``nix copy`` keeps a narinfo cache in ``$XDG_CACHE_HOME/nix`` (else
    ``~/.cache/nix``): the tests' runs of it must neither write into the runner's home
    nor find answers an earlier run left there."""
    old = os.environ.get("XDG_CACHE_HOME")
    os.environ["XDG_CACHE_HOME"] = str(tmp_path_factory.mktemp("xdg-cache"))
    yield
    if old is None:
        os.environ.pop("XDG_CACHE_HOME", None)
    else:
        os.environ["XDG_CACHE_HOME"] = old
