"""``kiln --version`` and the builder version in provenance name the code that runs:
``<release>+src.<16 hex>``, the hex a digest of every source file (the release number
alone stayed 0.1.0 across every change)."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).parents[2]


def _version(env: dict[str, str] | None = None) -> str:
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "--version"],
        capture_output=True,
        text=True,
        env=env,
        cwd="/",
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


def test_the_version_names_the_source(tmp_path: Path) -> None:
    from kiln import __version__
    from kiln.version import full_version

    shown = _version()
    assert re.fullmatch(rf"kiln {re.escape(__version__)}\+src\.[0-9a-f]{{16}}", shown), shown
    assert shown == f"kiln {full_version()}"
    # the same code elsewhere gives the same version; one edit gives another
    site = tmp_path / "site"
    pkg = site / "kiln"
    shutil.copytree(REPO / "cli", pkg, ignore=shutil.ignore_patterns("__pycache__"))
    for sub in ("lang", "store", "sandbox", "registry"):
        shutil.copytree(REPO / sub, pkg / sub, ignore=shutil.ignore_patterns("__pycache__"))
    env = dict(os.environ, PYTHONPATH=str(site))
    assert _version(env) == shown
    hashes = pkg / "store" / "hashes.py"
    hashes.write_text(hashes.read_text() + "\n# an edit\n")
    assert _version(env) != shown
