"""Where the store is when no ``--store`` is given (``kiln.store.home``), and that
evaluating a recipe never creates it (``cmd_eval._cache_dir``).

``XDG_DATA_HOME`` that is relative is ignored, as the XDG Base Directory spec says;
``HOME`` that is empty or relative is an error naming it, not a store under the current
directory. ``kiln path``/``eval`` use the evaluation cache of an existing store only:
before, ``HOME=/nonexistent kiln path`` made ``/nonexistent/.local/share/kiln/eval-cache``
(and ``HOME= kiln path`` ``./.local/share/kiln/eval-cache``) where ``kiln store roots``
then said there was no store."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from kiln.store.errors import KilnError
from kiln.store.home import kiln_home_dir

RECIPE = 'package p {\n  version = "1.0"\n  build = "echo > $out"\n}\n'


def _kiln(tmp_path: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    """``kiln ARGS`` in ``tmp_path/cwd`` with no KILN_HOME/XDG_DATA_HOME/HOME but ``env``."""
    base = {k: v for k, v in os.environ.items() if k not in ("KILN_HOME", "XDG_DATA_HOME", "HOME")}
    cwd = tmp_path / "cwd"
    cwd.mkdir(exist_ok=True)
    (cwd / "r.recipe").write_text(RECIPE)
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


def _made(tmp_path: Path) -> list[str]:
    """Everything under ``tmp_path`` but the recipe the test wrote."""
    return sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if p.name != "r.recipe")


def test_evaluating_never_creates_the_store(tmp_path: Path):
    gone = tmp_path / "nonexistent"
    r = _kiln(tmp_path, "path", "r.recipe", "p", HOME=str(gone))
    assert r.returncode == 0 and r.stdout.startswith("/kiln/store/"), r.stderr
    r2 = _kiln(tmp_path, "eval", "r.recipe", HOME=str(gone))
    assert r2.returncode == 0 and r.stdout.strip() in r2.stdout, r2.stderr
    assert _made(tmp_path) == ["cwd"]  # no store, no eval-cache
    # in an existing store the evaluation cache is used (and made)
    store = gone / ".local" / "share" / "kiln"
    assert _kiln(tmp_path, "store", "init", HOME=str(gone)).returncode == 0
    assert not (store / "eval-cache").exists()
    again = _kiln(tmp_path, "path", "r.recipe", "p", HOME=str(gone))
    assert again.returncode == 0 and again.stdout == r.stdout, again.stderr
    assert list((store / "eval-cache").glob("*.eval"))


@pytest.mark.parametrize("home", ["", "rel/home"])
def test_an_empty_or_relative_home_is_an_error(tmp_path: Path, home: str):
    r = _kiln(tmp_path, "path", "r.recipe", "p", HOME=home)
    assert r.returncode == 1 and r.stdout == "", r.stderr
    why = "HOME is empty" if not home else "HOME is not an absolute path ('rel/home')"
    assert why in r.stderr and "set KILN_HOME" in r.stderr, r.stderr
    r = _kiln(tmp_path, "store", "init", HOME=home)
    assert r.returncode == 1 and why in r.stderr, r.stderr
    assert _made(tmp_path) == ["cwd"]


def test_a_relative_xdg_data_home_is_ignored(tmp_path: Path):
    home = tmp_path / "home"
    r = _kiln(tmp_path, "store", "init", HOME=str(home), XDG_DATA_HOME="rel")
    assert r.returncode == 0, r.stderr
    assert (home / ".local" / "share" / "kiln" / "config.json").is_file()
    assert not (tmp_path / "cwd" / "rel").exists()
    r = _kiln(tmp_path, "store", "init", HOME=str(home), XDG_DATA_HOME=str(tmp_path / "xdg"))
    assert r.returncode == 0 and (tmp_path / "xdg" / "kiln" / "config.json").is_file(), r.stderr


def test_kiln_home_dir(monkeypatch: pytest.MonkeyPatch, tmp_path: Path):
    for k in ("KILN_HOME", "XDG_DATA_HOME", "HOME"):
        monkeypatch.delenv(k, raising=False)
    monkeypatch.setenv("HOME", "/h")
    assert kiln_home_dir() == "/h/.local/share/kiln"
    monkeypatch.setenv("XDG_DATA_HOME", "")
    assert kiln_home_dir() == "/h/.local/share/kiln"
    monkeypatch.setenv("XDG_DATA_HOME", "./data")
    assert kiln_home_dir() == "/h/.local/share/kiln"
    monkeypatch.setenv("XDG_DATA_HOME", "/data")
    assert kiln_home_dir() == "/data/kiln"
    monkeypatch.setenv("KILN_HOME", str(tmp_path))
    assert kiln_home_dir() == str(tmp_path)
    monkeypatch.delenv("KILN_HOME")
    monkeypatch.delenv("XDG_DATA_HOME")
    monkeypatch.setenv("HOME", "")
    with pytest.raises(KilnError, match="HOME is empty"):
        kiln_home_dir()
    monkeypatch.delenv("HOME")  # unset: the passwd entry's, as a shell's ~
    assert kiln_home_dir() == os.path.join(os.path.expanduser("~"), ".local", "share", "kiln")


def test_a_new_default_store_s_config_is_known_without_json(tmp_path: Path):
    """``cmd_eval`` reads a default store's config without importing json (a cached
    ``kiln eval`` uses the cache of an existing store only): the bytes must be what a
    new store gets, or that fast path silently stops being taken."""
    from kiln.cmd_eval import _DEFAULT_CONFIG
    from kiln.store.localstore import LocalStore

    LocalStore.open(tmp_path / "s").close()
    assert (tmp_path / "s" / "config.json").read_bytes() == _DEFAULT_CONFIG
