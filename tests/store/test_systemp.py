"""``store.systemp``: scratch directories in ``$TMPDIR`` owned by a live process are never
removed, and those a killed process (``kill -9``) left are removed by the next one.
Real processes, killed for real."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

from kiln.store import systemp

#: a process that makes an owned scratch dir in argv[1], fills it, says where, and waits
OWNER = textwrap.dedent(
    """
    import sys, time
    from pathlib import Path
    from kiln.store.systemp import owned_tmpdir

    with owned_tmpdir("test", Path(sys.argv[1])) as d:
        (d / "big.part").write_bytes(b"x" * 100000)
        print(d, flush=True)
        time.sleep(300)
    """
)


def _owner(parent: Path) -> tuple[subprocess.Popen, Path]:
    p = subprocess.Popen([sys.executable, "-c", OWNER, str(parent)], stdout=subprocess.PIPE, text=True)
    line = p.stdout.readline().strip()  # type: ignore[union-attr]
    assert line, "the owner died before making its directory"
    return p, Path(line)


def test_a_killed_owners_dir_is_swept_and_a_live_ones_is_not(tmp_path: Path) -> None:
    alive, kept = _owner(tmp_path)
    dead, left = _owner(tmp_path)
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait()
    older = tmp_path / "kiln-copy-abc"  # an older kiln's unlocked dir: not ours to judge
    older.mkdir()
    (tmp_path / "kiln-owned-link").symlink_to(older)  # never followed
    try:
        assert left.exists() and kept.exists()
        with systemp.owned_tmpdir("other", tmp_path) as mine:  # (sweeps first)
            assert mine.name.startswith("kiln-owned-other-") and mine.is_dir()
            assert not left.exists()
            assert (kept / "big.part").exists()
        assert not mine.exists()  # (removed after the block)
        assert older.is_dir() and (tmp_path / "kiln-owned-link").is_symlink()
    finally:
        alive.kill()
        alive.wait()
    assert systemp.sweep(tmp_path) == 1 and not kept.exists()  # its owner is gone now


def test_prefetch_sweeps_what_a_killed_prefetch_left(tmp_path: Path) -> None:
    """``kiln prefetch`` scratch goes through it: a leftover of a killed one is removed by
    the next (here a local file: no network)."""
    dead, left = _owner(tmp_path)
    os.kill(dead.pid, signal.SIGKILL)
    dead.wait()
    src = tmp_path / "src.txt"
    src.write_text("hello\n")
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "prefetch", f"file://{src}"],
        capture_output=True,
        text=True,
        env={**os.environ, "TMPDIR": str(tmp_path), "KILN_HOME": str(tmp_path / "home")},
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert not left.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith("kiln-owned-")]
