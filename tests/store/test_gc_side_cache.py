"""GC deletes evaluation-cache entries nobody used for ``eval_cache_days`` (a hit
refreshes an entry: ``lang/cache.py``), reports the blocks it frees on disk beside the
apparent size, and a GC killed while deleting leaves nothing a later command trips on.
Real ``kiln`` processes evaluate and collect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from storekit import make_tree, run_py

from kiln.store.gc import collect
from kiln.store.localstore import LocalStore

DAY = 86400
RECIPE = """package {name} {{
  version = "1.0"
  src = fetchurl {{ url = "https://example.org/{name}.tgz", sha256 = "{sha}" }}
  build = "echo hi > $out"
}}
"""


def kiln(home: Path, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln", *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env={**os.environ, "KILN_HOME": str(home)},
    )


def age(p: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(p, (t, t), follow_symlinks=False)


def test_gc_deletes_eval_cache_entries_unused_for_days(tmp_path):
    """Two recipes evaluated 40 days ago; one evaluated again today (a cache hit, which
    refreshes its entry): the default 30 days takes the other's entry only, and
    ``--eval-cache-days 0`` takes both. A writer's temp file of a live process and a
    file kiln does not name so are never touched, however old."""
    home, proj = tmp_path / "home", tmp_path / "proj"
    assert kiln(home, "store", "init").returncode == 0
    proj.mkdir()
    (proj / ".kilnroot").touch()
    for i, name in enumerate(("pa", "pb")):
        (proj / f"{name}.recipe").write_text(RECIPE.format(name=name, sha=f"{i + 1:064x}"))
        r = kiln(home, "eval", f"{name}.recipe", cwd=proj)
        assert r.returncode == 0, r.stderr
    cache = home / "eval-cache"
    entries = sorted(cache.glob("*.eval"))
    assert len(entries) == 2
    for e in entries:
        age(e, 40)
    age(proj / "pa.recipe", 50)
    recipe_time = (proj / "pa.recipe").stat().st_mtime
    r = kiln(home, "eval", "pa.recipe", cwd=proj)  # a hit
    assert r.returncode == 0 and len(list(cache.glob("*.eval"))) == 2  # (no new entry: a hit)
    assert (proj / "pa.recipe").stat().st_mtime == recipe_time  # (only the entry is touched)
    used = [e for e in entries if time.time() - e.stat().st_mtime < 3600]
    assert len(used) == 1, "a cache hit did not mark its entry used"
    unused = [e for e in entries if e not in used]
    writing = cache / f".tmp-{os.getpid()}-abcd1234"  # (a live writer's)
    other = cache / "README"
    for f in (writing, other):
        f.write_text("x")
        age(f, 400)
    r = kiln(home, "store", "gc", "--dry-run")
    assert "1 eval-cache entries" in r.stderr and all(e.exists() for e in entries), r.stderr
    r = kiln(home, "store", "gc")
    assert r.returncode == 0 and "1 eval-cache entries" in r.stderr, r.stderr
    assert [e.exists() for e in (*used, *unused)] == [True, False]
    r = kiln(home, "store", "gc", "--eval-cache-days", "0")
    assert "1 eval-cache entries" in r.stderr and not used[0].exists()
    assert writing.exists() and other.exists()
    # still a working cache: evaluated again, and hit
    assert kiln(home, "eval", "pb.recipe", cwd=proj).returncode == 0 and len(list(cache.glob("*.eval"))) == 1
    # config.json's eval_cache_days decides when no option does
    cfg = home / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "eval_cache_days": 2}))
    (entry,) = cache.glob("*.eval")
    age(entry, 1)
    assert "0 eval-cache entries" in kiln(home, "store", "gc").stderr and entry.exists()
    age(entry, 3)
    assert "1 eval-cache entries" in kiln(home, "store", "gc").stderr and not entry.exists()


def _du(paths: list[Path]) -> int:
    """Bytes on disk under ``paths`` as ``du`` counts them (each inode once)."""
    out = subprocess.run(
        ["du", "-s", "-B1", "-c", *map(str, paths)], capture_output=True, text=True, check=True
    )
    return int(out.stdout.splitlines()[-1].split()[0])


def test_gc_reports_the_blocks_it_frees_beside_the_apparent_size(store, tmp_path):
    """A sparse file of 64 MiB frees almost nothing; a thousand one-byte files free a
    block each. The disk figure is what ``du`` counts for the same entries (a file
    hard-linked twice inside one counts once); the apparent size stays the second
    figure. A dry run reports the same."""
    dead = store.tmp / "4242-deadbeef"  # (a crashed writer's leftover)
    dead.mkdir()
    with open(dead / "sparse", "wb") as f:
        f.truncate(64 << 20)
        f.write(b"x")
    tiny = make_tree(dead / "tiny", {f"f{i}": "y" for i in range(1000)})
    os.link(tiny / "f0", dead / "f0-again")
    loose = store.add_path(make_tree(tmp_path / "loose", {f"g{i}": "z" for i in range(50)})).path
    store.close()
    s = LocalStore.open(store.root)
    on_disk = _du([dead, s.real_path(loose), s.object_path(loose)])
    dry = collect(s, dry_run=True)
    r = collect(s)
    assert dry.disk_bytes_freed == r.disk_bytes_freed == on_disk, (r.disk_bytes_freed, on_disk)
    assert r.bytes_freed == dry.bytes_freed >= (64 << 20) + 1000
    assert r.disk_bytes_freed < r.bytes_freed  # (the sparse file)
    assert r.disk_bytes_freed >= 1000 * 512  # (a block for each tiny file)
    assert r.deleted == (loose,) and str(dead) in r.tmp_dirs and not dead.exists()
    s.close()


def test_a_gc_killed_while_deleting_leaves_nothing_half_done(tmp_path):
    """A GC killed (kill -9) after its first removal: every log, cache entry and failed
    dir is either whole where it was or gone into the GC's trash; ``kiln log`` of a kept
    derivation and the next GC work, and that GC finishes the job."""
    root = tmp_path / "store"
    s = LocalStore.open(root)
    drv = s.add_text("kept.drv", b"Derive()", []).path
    s.add_root("kept", drv)
    logs, cache = root / "logs", root / "eval-cache"
    logs.mkdir()
    cache.mkdir()
    src = make_tree(tmp_path / "src", {"log": "kept log\n"}) / "log"
    from kiln.store.buildlogs import LogStore

    LogStore(logs).save(drv, src)
    for i in range(20):
        LogStore(logs).save(f"{s.store_dir}/{i:032d}-gone{i}.drv", src)
        (cache / f"{i:040x}.eval").write_bytes(b"e" * 100)
        failed = make_tree(root / "tmp" / f"kiln-failed-x{i}-abcd{i:04d}", {"build/f": "f", "build/d/g": "g"})
        os.chmod(failed / "build" / "d", 0o555)
    s.close()
    code = (
        "import os, sys; from pathlib import Path; from kiln.store.gc import collect; "
        "from kiln.store.localstore import LocalStore; s = LocalStore.open(Path(sys.argv[1])); "
        "collect(s, keep_failed_days=0, eval_cache_days=0, progress=lambda d, t: os.kill(os.getpid(), 9))"
    )
    p = run_py(code, str(root))
    assert p.wait() == -9
    trash = [e for e in os.listdir(root / "tmp") if e.startswith("gc-")]
    assert len(trash) == 1 and os.listdir(root / "tmp" / trash[0])  # (killed mid-way)
    for f in logs.iterdir():  # what is still in place is whole
        assert LogStore(logs).open(f"{s.store_dir}/{f.name[:-4]}").read() == b"kept log\n"
    r = subprocess.run(
        [sys.executable, "-m", "kiln", "log", drv, "--store", str(root)], capture_output=True, check=True
    )
    assert r.stdout == b"kept log\n"
    s = LocalStore.open(root)
    r = collect(s, keep_failed_days=0, eval_cache_days=0)
    s.close()
    assert sorted(os.listdir(logs)) == [Path(drv).name + ".zst"] and os.listdir(cache) == []
    assert [e for e in os.listdir(root / "tmp") if not e[0].isdigit()] == []
