"""GC ages a side entry dated far in the future from now, not from that date
(``store/gcside.py`` ``_mtime``).

A failed build's kept dir, an eval-cache entry and a quarantine record, each dated five
years ahead (``touch -d``, as a clock that was wrong when they were written leaves them),
used to survive every collection until that date. Now a collection counts such an mtime
as now and sets it to now: nothing goes early, and a collection run the keep period later
(a real ``kiln store gc`` under libfaketime) takes them. An mtime less than a day ahead
(ordinary clock skew) is left as it is."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest
from test_gc_quarantine_records import break_and_repair, cli
from test_gc_side_cache import RECIPE, kiln
from test_gc_side_failed import fail_kept
from test_gc_side_logs import busybox_graph

from kiln.store.localstore import LocalStore

pytestmark = [
    pytest.mark.bwrap,
    pytest.mark.skipif(shutil.which("bwrap") is None, reason="bubblewrap not installed"),
    pytest.mark.skipif(shutil.which("busybox") is None, reason="busybox-static not installed"),
    pytest.mark.skipif(shutil.which("faketime") is None, reason="libfaketime (faketime) not installed"),
]


def _touch(p: Path, when: str) -> None:
    subprocess.run(["touch", "-h", "-d", when, str(p)], check=True)


def test_side_entries_dated_years_ahead_go_their_keep_period_after_a_gc_sees_them(tmp_path: Path) -> None:
    home = tmp_path / "home"
    store = LocalStore.open(home)
    try:
        g = busybox_graph(store, tmp_path)
        drv, _ = g.drv("fails", "echo x > /build/left; exit 1")
        failed = fail_kept(store, drv)
    finally:
        store.close()
    proj = tmp_path / "proj"
    proj.mkdir()
    (proj / ".kilnroot").touch()
    (proj / "pa.recipe").write_text(RECIPE.format(name="pa", sha=f"{1:064x}"))
    assert kiln(home, "eval", "pa.recipe", cwd=proj).returncode == 0
    (entry,) = (home / "eval-cache").glob("*.eval")
    src = tmp_path / "pkg"
    src.mkdir()
    (src / "f").write_text("x" * 100)
    path = cli(home, "add", "--add-root", "pkg", str(src))[0].strip()
    record = break_and_repair(home, path)
    cli(home, "add", str(src))  # valid again: the record can no longer matter
    near = home / "eval-cache" / ("0" * 40 + ".eval")  # a skewed clock's entry, hours ahead
    near.write_text("x")

    ahead = [failed, entry, record]
    for p in ahead:
        _touch(p, "+5 years")
    _touch(near, "+12 hours")
    near_mtime = near.stat().st_mtime
    start = time.time()
    out, err = cli(home, "gc")
    assert all(p.exists() for p in ahead), (out, err)  # nothing goes early
    for p in ahead:
        assert start - 5 <= p.stat().st_mtime <= time.time() + 5, (p, p.stat().st_mtime)  # now, not 2031
    assert near.stat().st_mtime == near_mtime  # less than a day ahead: left alone

    # 31 days later (the longest default keep period is 30 days) a collection takes them
    r = subprocess.run(
        ["faketime", "-f", "+31d", sys.executable, "-m", "kiln", "store", "gc", "--store", str(home)],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "KILN_HOME": str(home)},
    )
    assert r.returncode == 0, r.stderr
    assert [p.exists() for p in ahead] == [False, False, False], (r.stdout, r.stderr)
