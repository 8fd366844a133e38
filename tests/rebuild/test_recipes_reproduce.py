"""Every package of recipes/ reproduces: built from source on the hermetic toolchain,
rebuilt once in a fresh sandbox, bit-for-bit identical (the slow group: minutes; sources
and .debs come from KILN_SOURCE_MIRRORS when set, else the machine's Debian archive)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from rbkit import Kiln, needs_bwrap

pytestmark = [pytest.mark.slow, *needs_bwrap]

RECIPES = Path(__file__).resolve().parents[2] / "recipes"


def test_all_recipes_reproduce(tmp_path: Path) -> None:
    kiln = Kiln(tmp_path / "home")
    files = sorted(str(p) for p in RECIPES.glob("*.recipe"))
    r = kiln("report", "reproducibility", *files, "--json", expect=None)
    doc = json.loads(r.stdout)
    status = {p["attribute"]: p["status"] for p in doc["packages"]}
    assert r.returncode == 0 and doc["ok"], f"{status}\n{r.stderr[-3000:]}"
    assert {"hello", "zlib", "pigz", "lua", "toolchain_rootfs", "glibc", "cc"} <= set(status)
    n = len(status)
    assert doc["summary"] == f"{n}/{n} packages reproducible (100%)"
