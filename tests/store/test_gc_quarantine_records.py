"""GC takes quarantine records back (``store/gcquarantine.py``, ``store/gcside.py``) once
they can no longer matter — their path is valid and live again, or nothing keeps it —
and they are ``--keep-quarantine DAYS`` old (default 30); never a record whose edges GC
follows (its path rooted or referenced, with no row), whatever its age. Real stores,
real corruption on disk, the real ``kiln store verify --repair`` and ``kiln store gc``."""

from __future__ import annotations

import os
import re
import shutil
import time
from pathlib import Path

from clikit import kiln
from storekit import corrupt_file, corrupt_object, make_tree

from kiln.store.localstore import LocalStore

DAY = 86400


def cli(root: Path, *args: str) -> tuple[str, str]:
    """``kiln store ARGS --store root`` (it must succeed): (stdout, stderr)."""
    cp = kiln("store", *args, "--store", str(root))
    assert cp.returncode == 0, (args, cp.stdout, cp.stderr)
    return cp.stdout, cp.stderr


def break_and_repair(root: Path, path: str) -> Path:
    """Corrupt ``path``'s object and tree on disk, so ``kiln store verify --repair`` can
    only quarantine it; the record it made."""
    before = set(records(root))
    s = LocalStore.open(root)
    try:
        corrupt_object(s, path)
        corrupt_file(s.real_path(path) / "f")
    finally:
        s.close()
    out, _ = cli(root, "verify", "--repair")
    assert "1 path(s) quarantined" in out, out
    (new,) = set(records(root)) - before
    assert (new / "tree").is_dir() and (new / "info.txt").is_file()
    return new


def records(root: Path) -> list[Path]:
    return sorted((root / "quarantine").iterdir()) if (root / "quarantine").exists() else []


def age(p: Path, days: float) -> None:
    t = time.time() - days * DAY
    os.utime(p, (t, t), follow_symlinks=False)


def counted(stderr: str) -> tuple[int, int]:
    """(quarantine records, apparent bytes) of a ``kiln store gc`` summary."""
    n = re.search(r"(\d+) quarantine records", stderr)
    b = re.search(r"apparent size [^,]+, (\d+) bytes", stderr)
    assert n and b, stderr
    return int(n.group(1)), int(b.group(1))


def file_bytes(d: Path) -> int:
    return sum(os.lstat(Path(dp) / f).st_size for dp, _, fs in os.walk(d) for f in fs)


def test_a_record_of_a_path_valid_again_goes_once_old_enough(tmp_path):
    """The audit's case: quarantined (twice), added again, rooted. Each record goes by
    its own age; a dry run lists it with its bytes and deletes nothing."""
    root = tmp_path / "store"
    src = make_tree(tmp_path / "pkg", {"f": "x" * 3000, "g": "y" * 3000})
    path = cli(root, "add", "--add-root", "pkg", str(src))[0].strip()
    first = break_and_repair(root, path)
    assert cli(root, "add", str(src))[0].strip() == path  # built again: valid again
    second = break_and_repair(root, path)
    cli(root, "add", str(src))
    out, err = cli(root, "gc")
    assert counted(err)[0] == 0 and records(root) == [first, second], (out, err)  # both young

    age(first, 31)
    first_bytes = file_bytes(first)
    assert first_bytes > 3000  # the bad tree (its good file g), the object's copy, info.txt
    out, err = cli(root, "gc", "--dry-run")
    assert out.splitlines() == [f"{first} (quarantine record of {path}: valid again)"], out
    assert "would delete 0 paths" in err and counted(err) == (1, first_bytes), err
    assert records(root) == [first, second]

    out, err = cli(root, "gc")
    assert out.splitlines() == [f"{first} (quarantine record of {path}: valid again)"], out
    assert counted(err) == (1, first_bytes) and records(root) == [second], err
    assert counted(cli(root, "gc")[1])[0] == 0 and records(root) == [second]
    s = LocalStore.open(root)
    try:
        assert s.is_valid(path) and s.verify().ok
    finally:
        s.close()
    # --keep-quarantine 0: any age
    out, _ = cli(root, "gc", "--keep-quarantine", "0")
    assert (
        out.splitlines() == [f"{second} (quarantine record of {path}: valid again)"] and records(root) == []
    )


def test_records_of_a_path_nothing_keeps_go_with_it(tmp_path):
    """Valid again, then its root removed: the path and its record go in one collection;
    never valid again and never rooted: the record goes with what it kept."""
    root = tmp_path / "store"
    src = make_tree(tmp_path / "pkg", {"f": "x" * 3000})
    path = cli(root, "add", "--add-root", "pkg", str(src))[0].strip()
    rec = break_and_repair(root, path)
    cli(root, "add", str(src))
    cli(root, "remove-root", "pkg")
    age(rec, 40)
    out, err = cli(root, "gc")
    assert out.splitlines() == [path, f"{rec} (quarantine record of {path}: nothing keeps it)"], out
    assert records(root) == []

    s = LocalStore.open(root)
    try:
        dep = s.add_path(make_tree(tmp_path / "dep", {"lib": "l" * 3000}))
        drv = s.add_text("built.drv", b"derive", [dep.path])
        out_path = f"{s.store_dir}/{'3' * 32}-built"
        built = s.register_built(out_path, make_tree(tmp_path / "b", {"f": "y" * 3000}), [dep.path], drv.path)
    finally:
        s.close()
    rec = break_and_repair(root, built.path)
    out, _ = cli(root, "gc", "--keep-quarantine", "0")
    assert sorted(out.splitlines()) == sorted(
        [dep.path, drv.path, f"{rec} (quarantine record of {built.path}: nothing keeps it)"]
    ), out
    assert records(root) == []


def test_a_record_whose_edges_gc_follows_stays_at_any_age(tmp_path):
    """Rooted with no row, or referenced by a rooted path (a hole): the record keeps the
    way back (dependency and ``.drv``) alive and stays, even with ``--keep-quarantine 0``;
    once the referrer's root goes, the referrer, what the record kept and the record go."""
    root = tmp_path / "store"
    s = LocalStore.open(root)
    try:
        dep = s.add_path(make_tree(tmp_path / "dep", {"lib": "l" * 3000}))
        drv = s.add_text("built.drv", b"derive", [dep.path])
        out_path = f"{s.store_dir}/{'3' * 32}-built"
        built = s.register_built(out_path, make_tree(tmp_path / "b", {"f": "y" * 3000}), [dep.path], drv.path)
        top = s.add_text("top.drv", b"top", [built.path])
        s.add_root("built", built.path)
        s.add_root("top", top.path)
        corrupt_object(s, built.path)
        corrupt_file(s.real_path(built.path) / "f")
    finally:
        s.close()
    cp = kiln("store", "verify", "--repair", "--store", str(root))
    assert "1 path(s) quarantined" in cp.stdout and cp.returncode == 1, cp  # top is incomplete now
    (rec,) = records(root)
    age(rec, 365)
    for drop in ("built", "top"):  # rooted itself, then only referenced by a rooted path
        out, err = cli(root, "gc", "--keep-quarantine", "0")
        assert out == "" and counted(err)[0] == 0 and records(root) == [rec], (out, err)
        cli(root, "remove-root", drop)
    out, _ = cli(root, "gc", "--keep-quarantine", "0")
    assert sorted(out.splitlines()) == sorted(
        [top.path, dep.path, drv.path, f"{rec} (quarantine record of {built.path}: nothing keeps it)"]
    ), out
    assert records(root) == []


def test_only_records_kiln_made_and_can_read_go(tmp_path):
    """An unreadable record, one naming another path, another store dir's, a directory
    that is no record and a symlink named like one all stay (the symlink's target too)."""
    root = tmp_path / "store"
    src = make_tree(tmp_path / "pkg", {"f": "x" * 3000})
    path = cli(root, "add", str(src))[0].strip()
    rec = break_and_repair(root, path)
    q = root / "quarantine"
    base = path.rsplit("/", 1)[1]
    kept = {
        "unreadable": q / f"{base}-1700000000-2",
        "renamed": q / "evidence-for-ticket-42",
        "other-store": q / f"{base}-1700000001",
        "notes": q / "notes",
    }
    shutil.copytree(rec, kept["unreadable"], symlinks=True)
    (kept["unreadable"] / "info.txt").write_text("garbage\n")
    shutil.copytree(rec, kept["renamed"], symlinks=True)
    shutil.copytree(rec, kept["other-store"], symlinks=True)
    info = kept["other-store"] / "info.txt"
    info.write_text(info.read_text().replace(path, f"/elsewhere/store/{base}"))
    kept["notes"].mkdir()
    (kept["notes"] / "ticket.txt").write_text("see the bad object\n")
    outside = shutil.copytree(rec, tmp_path / "outside", symlinks=True)
    (q / f"{base}-1700000002").symlink_to(outside)
    for d in [rec, outside, *kept.values(), q / f"{base}-1700000002"]:
        age(d, 100)
    out, err = cli(root, "gc", "--keep-quarantine", "0")
    assert out.splitlines() == [f"{rec} (quarantine record of {path}: nothing keeps it)"], out
    unread = f"warning: quarantine record unreadable, its references were not kept: {kept['unreadable']}"
    assert unread in err and "(GC leaves it: inspect it and delete it by hand)" in err, err
    assert all(d.exists() for d in kept.values()) and (outside / "info.txt").is_file()
    assert sorted(records(root)) == sorted([*kept.values(), q / f"{base}-1700000002"])


def test_the_stores_config_sets_the_default_age(tmp_path):
    """``config.json``'s ``keep_quarantine_days`` is the default of ``--keep-quarantine``,
    as ``keep_failed_days`` is of ``--keep-failed``."""
    import json

    root = tmp_path / "store"
    src = make_tree(tmp_path / "pkg", {"f": "x" * 3000})
    path = cli(root, "add", "--add-root", "pkg", str(src))[0].strip()
    rec = break_and_repair(root, path)
    cli(root, "add", str(src))  # valid again
    age(rec, 3)
    cli(root, "gc")
    assert records(root) == [rec]  # 3 days: young by the default 30
    cfg = root / "config.json"
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "keep_quarantine_days": 2}))
    out, _ = cli(root, "gc")
    assert records(root) == [] and f"quarantine record of {path}" in out
    cfg.write_text(json.dumps({**json.loads(cfg.read_text()), "keep_quarantine_days": -1}))
    cp = kiln("store", "gc", "--store", str(root))
    assert cp.returncode == 1 and "'keep_quarantine_days' must be a whole number of days" in cp.stderr
