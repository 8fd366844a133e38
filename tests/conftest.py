"""Shared by every test directory: ``tests/`` on ``sys.path`` for ``import clikit``, a
terminal environment of known kind, a private cache home for the tools the tests run,
and (in CI) no skipped tests."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))

# The tests that put kiln on a pseudo-terminal expect its progress meters; a runner's
# TERM=dumb (common in CI) or KILN_PROGRESS=0 would silence them. Tests of those settings
# set them themselves.
os.environ["TERM"] = "xterm"
os.environ.pop("KILN_PROGRESS", None)


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


def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """In CI (``CI=true``) a skipped test fails the run: CI installs everything the
    tests need (``scripts/setup-debian.sh``), so a skip there is a check that did not
    run, not a missing optional tool. ``-rs`` lists each with its reason."""
    if os.environ.get("CI") != "true" or exitstatus != 0:
        return
    reporter = session.config.pluginmanager.get_plugin("terminalreporter")
    if reporter is not None and reporter.stats.get("skipped"):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED
        session.config.stash[_SKIPPED_IN_CI] = len(reporter.stats["skipped"])


_SKIPPED_IN_CI = pytest.StashKey[int]()


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    n = terminalreporter.config.stash.get(_SKIPPED_IN_CI, 0)
    if n:
        terminalreporter.write_sep("=", f"CI: {n} test(s) skipped; in CI every test must run", red=True)
