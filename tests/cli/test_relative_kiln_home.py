"""A relative ``KILN_HOME`` names the store under the directory kiln was started in, for
kiln and for what it starts (``kiln.store.home.absolute``, ``common.absolute_kiln_home``).

Before, the value went on as it was: kiln itself opened the right store (it resolves
the root when opening it), but a program run with ``kiln run`` (or in ``kiln shell``)
inherited ``KILN_HOME=rel``, and a ``kiln`` it ran from another directory looked for the
store there: another store, or none ("no kiln store at /rel")."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.store.home import kiln_home_dir


def _kiln(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    base = {k: v for k, v in os.environ.items() if k not in ("KILN_HOME", "XDG_DATA_HOME")}
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=300,
    )


@pytest.mark.bwrap
@pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed")
def test_a_program_kiln_runs_elsewhere_finds_the_same_store(tmp_path: Path):
    cwd = tmp_path / "work"
    pkg = cwd / "pkg" / "bin"
    pkg.mkdir(parents=True)
    (pkg / "hi").write_text("#!/bin/sh\necho hi\n")
    (pkg / "hi").chmod(0o755)
    r = _kiln(cwd, "store", "add", "pkg", "--add-root", "p", KILN_HOME="./rel//home")
    assert r.returncode == 0, r.stderr
    assert (cwd / "rel" / "home" / "gcroots" / "p").is_symlink()
    # the program sees an absolute KILN_HOME; a kiln it runs from / finds the root
    script = f'printf "%s\\n" "$KILN_HOME"; cd / && exec {sys.executable} -m kiln store roots'
    r = _kiln(cwd, "run", "p", "--", "sh", "-c", script, KILN_HOME="./rel//home")
    assert r.returncode == 0, r.stderr
    home, roots = r.stdout.split("\n", 1)
    assert home == str(cwd / "rel" / "home")
    assert roots.startswith("p -> /kiln/store/") and roots.endswith("-pkg\n"), roots


def test_kiln_home_is_taken_against_the_current_directory(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("KILN_HOME", "a/./b/")
    assert kiln_home_dir() == f"{tmp_path}/a/b"
    monkeypatch.setenv("KILN_HOME", ".")
    assert kiln_home_dir() == str(tmp_path)
    monkeypatch.setenv("KILN_HOME", "l/../x")  # (.. kept: l may be a symbolic link)
    assert kiln_home_dir() == f"{tmp_path}/l/../x"
    monkeypatch.setenv("KILN_HOME", "/abs/./as/is")
    assert kiln_home_dir() == "/abs/./as/is"


def test_a_relative_kiln_home_without_a_current_directory_is_an_error(tmp_path: Path):
    gone = tmp_path / "gone"
    gone.mkdir()
    code = (
        "import os, sys; os.chdir(sys.argv[1]); os.rmdir(sys.argv[1]); "
        "from kiln.main import main; sys.exit(main(['store', 'roots']))"
    )
    r = subprocess.run(
        [sys.executable, "-c", code, str(gone)],
        env={**os.environ, "KILN_HOME": "rel"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert r.returncode == 1, r.stderr
    assert "KILN_HOME is a relative path ('rel') and the current directory cannot be determined" in r.stderr
