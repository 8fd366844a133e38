"""``kiln store roots`` (every root, marking those that keep nothing), ``kiln store
remove-root NAME`` (a root only, never anything outside ``gcroots/``) and ``kiln store
why PATH`` (which roots keep it, through which references; temp roots of live
processes by pid; none: GC deletes it, and does)."""

from __future__ import annotations

import os
from pathlib import Path

from clikit import kiln_at, line_within
from storekit import make_tree, run_py

from kiln.store.localstore import ROOT_TEMP_PREFIX, LocalStore


def _chain(tmp_path: Path) -> tuple[str, str, str, str]:
    """``top -> mid -> dep`` (references) rooted as ``top``, and an unrooted ``loose``."""
    with LocalStore.open(tmp_path / "home") as s:
        dep = s.add_path(make_tree(tmp_path / "dep", {"lib": "l\n"})).path
        mid = s.add_text("mid", b"uses " + dep.encode(), [dep]).path
        top = s.add_text("top", b"uses " + mid.encode(), [mid]).path
        loose = s.add_path(make_tree(tmp_path / "loose", {"x": "x\n"})).path
        s.add_root("top", top)
    return top, mid, dep, loose


def test_roots_lists_every_root_and_marks_those_that_keep_nothing(tmp_path: Path) -> None:
    top, mid, _dep, _ = _chain(tmp_path)
    gcroots = tmp_path / "home" / "gcroots"
    gone = "0" * 31 + "a-gone"
    os.symlink(f"../kiln/store/{gone}", gcroots / "gone")
    os.symlink("/nowhere", gcroots / "bad")
    (gcroots / "sub").mkdir()
    (gcroots / "sub" / "pin").write_text(f"{mid}\n")
    os.symlink(f"../kiln/store/{gone}", gcroots / f"{ROOT_TEMP_PREFIX}x.0123abcd")  # (not a root)
    r = kiln_at(tmp_path, "store", "roots")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "bad -> /nowhere (names no store path: keeps nothing)",
        f"gone -> /kiln/store/{gone} (dangling: not valid in the store, collected or quarantined)",
        f"top -> {top}",
        f"sub/pin -> {mid}",
    ]


def test_remove_root_removes_a_root_and_nothing_else(tmp_path: Path) -> None:
    top, mid, dep, _ = _chain(tmp_path)
    home = tmp_path / "home"
    outside = make_tree(tmp_path / "outside", {"victim": "keep me\n"})
    os.symlink(outside, home / "gcroots" / "esc")  # (a link to a directory: itself a root)
    (home / "gcroots" / "sub").mkdir()
    (home / "gcroots" / "sub" / "pin").write_text(f"{mid}\n")
    for bad in ("esc/victim", "../config.json", "sub", "nope", "sub/../top", "/etc/passwd"):
        r = kiln_at(tmp_path, "store", "remove-root", bad)
        assert r.returncode == 1 and "error:" in r.stderr, (bad, r.stderr)
    assert (outside / "victim").exists() and (home / "config.json").exists()
    r = kiln_at(tmp_path, "store", "remove-root", "sub/pin")
    assert r.returncode == 0 and f"removed root sub/pin (-> {mid})" in r.stdout, r.stderr
    r = kiln_at(tmp_path, "store", "remove-root", "esc")
    assert r.returncode == 0 and (outside / "victim").exists(), r.stderr
    r = kiln_at(tmp_path, "store", "remove-root", "top")
    assert r.returncode == 0 and sorted(os.listdir(home / "gcroots")) == ["sub"], r.stderr
    r = kiln_at(tmp_path, "store", "gc")
    assert r.returncode == 0 and all(p in r.stdout for p in (top, mid, dep)), r.stdout


def test_why_names_each_root_and_its_chain_and_agrees_with_gc(tmp_path: Path) -> None:
    top, mid, dep, loose = _chain(tmp_path)
    home = tmp_path / "home"
    (home / "gcroots" / "pin").write_text(f"{mid}\n")
    r = kiln_at(tmp_path, "store", "why", dep)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        f"{dep} is kept alive by 2 root(s):",
        f"  root pin: {mid} -> {dep}",
        f"  root top: {top} -> {mid} -> {dep}",
    ]
    r = kiln_at(tmp_path, "store", "why", "top")  # (a root name names its path)
    assert r.stdout.splitlines()[1:] == [f"  root top: {top}"], r.stdout
    r = kiln_at(tmp_path, "store", "why", loose)
    assert r.returncode == 0 and r.stdout == (
        f"{loose}: no root keeps it alive; the next 'kiln store gc' will delete it\n"
    ), r.stdout
    r = kiln_at(tmp_path, "store", "gc")
    assert r.returncode == 0 and r.stdout.split() == [loose], r.stdout


def test_why_names_the_process_whose_temp_root_keeps_a_path(tmp_path: Path) -> None:
    top, mid, dep, loose = _chain(tmp_path)
    home = tmp_path / "home"
    holder = run_py(
        "import sys; from kiln.store.localstore import LocalStore\n"
        "s = LocalStore.open(sys.argv[1]); s.keep([sys.argv[2]]); print('held', flush=True)\n"
        "sys.stdin.read()\n",
        str(home),
        loose,
        stdin=-1,
        stdout=-1,
        text=True,
    )
    try:
        assert line_within(holder.stdout, 30) == "held\n"
        r = kiln_at(tmp_path, "store", "why", loose)
        assert r.returncode == 0, r.stderr
        lines = r.stdout.splitlines()
        assert lines[0] == f"{loose} is kept alive by 1 root(s):", r.stdout
        assert lines[1].startswith(f"  temp root of process {holder.pid} (") and lines[1].endswith(
            f"): {loose}"
        )
    finally:
        holder.stdin.close()
        holder.wait(30)
    r = kiln_at(tmp_path, "store", "why", loose)
    assert "no root keeps it alive" in r.stdout, r.stdout


def test_a_root_name_too_long_for_its_temporary_link_is_refused_before_the_copy(tmp_path: Path) -> None:
    """A name of 241-255 bytes failed as "File name too long" naming kiln's temporary
    link, after the path was added; it is refused first, with the limit."""
    from kiln.store.localstore import ROOT_NAME_MAX

    (tmp_path / "f").write_text("x\n")
    r = kiln_at(tmp_path, "store", "add", str(tmp_path / "f"), "--add-root", "a" * (ROOT_NAME_MAX + 1))
    assert r.returncode == 1
    assert f"GC root name too long: {ROOT_NAME_MAX + 1} bytes, at most {ROOT_NAME_MAX}" in r.stderr
    with LocalStore.open(tmp_path / "home") as store:
        assert store.all_paths() == []
    r = kiln_at(tmp_path, "store", "add", str(tmp_path / "f"), "--add-root", "a" * ROOT_NAME_MAX)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "home" / "gcroots" / ("a" * ROOT_NAME_MAX)).is_symlink()
