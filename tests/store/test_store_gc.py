"""Garbage collection: roots, temp roots (live and dead processes), shared objects,
dry runs, leftovers, and a collector racing a registering process."""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time

import pytest
from storekit import deep_tree, make_tree

from kiln.store.errors import FormatError
from kiln.store.localstore import LocalStore


def _fresh_store(root):
    return LocalStore.open(root)


def test_gc_keeps_roots_and_closures(store, tmp_path):
    dep = store.add_path(make_tree(tmp_path / "dep", {"lib": "l"}))
    top = store.add_text("top.drv", b"top", [dep.path])
    loose = store.add_path(make_tree(tmp_path / "loose", {"junk": "j" * 5000}))
    store.add_root("top", top.path)
    store.close()  # drop this process's temp roots: only gcroots/ count now
    s = _fresh_store(store.root)
    dry = s.gc(dry_run=True)
    assert dry.deleted == (loose.path,) and dry.bytes_freed >= 5000
    assert s.is_valid(loose.path) and s.real_path(loose.path).exists()
    r = s.gc()
    assert r.deleted == (loose.path,) and r.objects_deleted == 1
    assert not s.is_valid(loose.path) and not s.real_path(loose.path).exists()
    assert s.is_valid(top.path) and s.is_valid(dep.path)
    assert s.verify().ok
    # roots as files holding a path, and symlinks to a path inside a store path
    os.unlink(s.root / "gcroots" / "top")
    (s.root / "gcroots" / "file-root").write_text(dep.path + "\n")
    r = s.gc()
    assert r.deleted == (top.path,)
    os.unlink(s.root / "gcroots" / "file-root")
    os.symlink(s.real_path(dep.path) / "lib", s.root / "gcroots" / "inner")
    assert s.gc().deleted == ()
    s.close()


def test_indirect_root_through_result_symlink(store, tmp_path):
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    result = tmp_path / "result"
    os.symlink(store.real_path(a.path), result)
    os.symlink(result, store.root / "gcroots" / "auto-1")
    store.close()
    s = _fresh_store(store.root)
    assert s.gc().deleted == ()
    os.unlink(result)  # dangling indirect root: no longer protects
    assert s.gc().deleted == (a.path,)
    s.close()


def test_temp_roots_in_process_and_shared_objects(store, tmp_path):
    tree = make_tree(tmp_path / "t", {"f": "same content"})
    a = store.add_path(tree, name="one")
    b = store.add_path(tree, name="two")
    assert a.file_hash == b.file_hash  # identical NARs share one object
    store.close()
    s = _fresh_store(store.root)
    with s.temp_root([a.path]):
        r = s.gc()
        assert r.deleted == (b.path,) and r.objects_deleted == 0  # a still uses the object
        assert s.verify().ok
    r = s.gc()
    assert r.deleted == (a.path,) and r.objects_deleted == 1
    assert list((s.root / "objects").rglob("*.nar.zst")) == []
    s.close()


HOLD = """
import sys, time
from pathlib import Path
from kiln.store.localstore import LocalStore
s = LocalStore.open(Path(sys.argv[1]))
with s.temp_root([sys.argv[2]]):
    print("held", flush=True)
    time.sleep(60)
"""


def test_temp_root_of_live_and_dead_process(store, tmp_path):
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    store.close()
    p = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(store.root), a.path], stdout=subprocess.PIPE, text=True
    )
    try:
        assert p.stdout.readline().strip() == "held"
        s = _fresh_store(store.root)
        assert s.gc().deleted == ()
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert (store.root / "temproots" / str(p.pid)).exists()  # left behind by kill -9
    assert s.gc().deleted == (a.path,)
    assert not (store.root / "temproots" / str(p.pid)).exists()
    s.close()


def test_gc_removes_leftovers(store, tmp_path):
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    # what a crashed writer leaves: an unregistered tree, an unused object, tmp junk
    stray = store.real_store / ("5" * 32 + "-stray")
    stray.mkdir()
    (stray / "f").write_text("f")
    os.chmod(stray, 0o555)
    (store.objects / "ab").mkdir(exist_ok=True)
    (store.objects / "ab" / ("ab" * 32 + ".nar.zst")).write_bytes(b"junk")
    (store.objects / "ab" / "NOTES").write_text("not an object: neither listed nor deleted\n")
    (store.objects / "ab" / "x.nar.zst").write_text("not an object's name either\n")
    (store.objects / "ab" / ("cd" * 32 + ".nar.zst")).write_text("not in its shard\n")
    (store.objects / "mine").mkdir()
    (store.objects / "mine" / ("ef" * 32 + ".nar.zst")).write_text("not in a shard\n")
    (store.tmp / "123-dead").mkdir()
    v = store.verify()
    assert v.ok and v.stray_trees == (f"/kiln/store/{stray.name}",)
    assert v.stray_objects == (str(store.objects / "ab" / ("ab" * 32 + ".nar.zst")),)
    (store.tmp / "123-dead" / "part").write_bytes(b"p" * 100_000)
    store.add_root("a", a.path)
    dry = store.gc(dry_run=True)  # lists (and counts) the tmp leftovers, deletes nothing
    assert str(store.tmp / "123-dead") in dry.tmp_dirs and dry.bytes_freed >= 100_000
    assert (store.tmp / "123-dead" / "part").exists() and stray.exists()
    r = store.gc()
    assert r.tmp_dirs == dry.tmp_dirs and r.bytes_freed == dry.bytes_freed
    assert r.stray_trees == (f"/kiln/store/{stray.name}",) and r.objects_deleted == 1
    assert not stray.exists() and os.listdir(store.tmp) == []
    assert sorted(os.listdir(store.objects / "ab")) == sorted(["NOTES", "x.nar.zst", "cd" * 32 + ".nar.zst"])
    assert os.listdir(store.objects / "mine") == ["ef" * 32 + ".nar.zst"]
    v = store.verify()
    assert v.ok and v.stray_trees == () and v.stray_objects == ()


WRITER = """
import sys
from pathlib import Path
from kiln.store.localstore import LocalStore
root, src, n = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3])
s = LocalStore.open(root)
for i in range(n):
    (src / "counter").write_text(str(i))
    info = s.add_path(src, name=f"p{i}")
    print(info.path, flush=True)
print("done", flush=True)
import time; time.sleep(30)
"""


def test_gc_concurrent_with_registering_process(store, tmp_path):
    """A process keeps registering paths while we collect: every path it has reported
    (its temp roots, it is alive) must stay valid and intact after each collection."""
    src = make_tree(tmp_path / "src", {"big": os.urandom(300_000), "counter": "0"})
    store.close()
    p = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store.root), str(src), "40"], stdout=subprocess.PIPE
    )
    s = _fresh_store(store.root)
    seen: list[str] = []
    collections = 0
    try:
        os.set_blocking(p.stdout.fileno(), False)
        buf = ""
        deadline = time.time() + 60
        while time.time() < deadline:
            with contextlib.suppress(BlockingIOError):
                buf += os.read(p.stdout.fileno(), 65536).decode()
            *lines, buf = buf.split("\n")
            seen += [ln for ln in lines if ln.startswith("/")]
            if "done" in lines:
                break
            s.gc()
            collections += 1
            for path in seen:
                assert s.is_valid(path), path
                assert s.real_path(path).exists(), path
        assert len(seen) == 40 and collections > 3
        assert s.verify().ok
    finally:
        p.send_signal(signal.SIGKILL)
        p.wait()
    assert set(s.gc().deleted) == set(seen)  # writer dead: its temp roots are gone
    s.close()


def test_two_store_objects_in_one_process_share_temp_roots(store, tmp_path):
    other = LocalStore.open(store.root)
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    b = other.add_path(make_tree(tmp_path / "b", {"x": "2"}))
    with other.temp_root([a.path]):
        store.close()  # a stays: other holds it too
        assert other.gc().deleted == ()
    assert other.gc().deleted == (a.path,)  # b is still other's own temp root
    other.close()
    s = LocalStore.open(store.root)
    assert s.gc().deleted == (b.path,)
    s.close()


def test_gc_leaves_live_build_dirs_and_held_locks_and_removes_dead_ones(store, tmp_path):
    """The build loop keeps its working dirs in tmp/ for a whole build, without the GC
    lock, holding a lock on each (``buildtmp``): GC must not touch those, nor a build
    lock someone holds. A build dir nobody holds is a dead build's (kill -9): removed,
    with its read-only trees, like a crashed writer's dir."""
    import subprocess as sp

    from kiln.store.buildtmp import owned_tmpdir, release_tmpdir
    from kiln.store.locks import FileLock

    live, fd = owned_tmpdir(store.tmp, "build-hello-", store.gc_lock_path)
    (live / "src.c").write_text("int main;")
    # a build killed with -9: its process made and locked the dir, then died
    code = (
        "import sys; from pathlib import Path; from kiln.store.buildtmp import owned_tmpdir; "
        "d, _ = owned_tmpdir(Path(sys.argv[1]), 'build-dead-', None); (d / 'out').mkdir(); "
        "(d / 'out' / 'f').write_text('x'); (d / 'out').chmod(0o555); print(d)"
    )
    dead = sp.run([sys.executable, "-c", code, str(store.tmp)], capture_output=True, text=True, check=True)
    assert os.path.isdir(dead.stdout.strip())
    (store.tmp / "kiln-failed-hello-1").mkdir()  # --keep-failed: kept for the user
    (store.tmp / "4242-deadbeef").mkdir()  # a crashed writer's
    held = FileLock(store.root / "locks" / ("8" * 32 + ".build"))  # a running build's lock
    held.acquire()
    (store.root / "locks" / ("8" * 32 + ".lock")).write_text("")
    try:
        store.gc()
    finally:
        held.release()
    assert sorted(os.listdir(store.tmp)) == sorted([live.name, "kiln-failed-hello-1"])
    assert os.listdir(store.root / "locks") == ["8" * 32 + ".build"]
    release_tmpdir(live, fd)
    assert not live.exists()


def test_gc_removes_build_locks_nobody_holds(store):
    """Build-lock files do not pile up: GC deletes the free ones and keeps a held one;
    taking a deleted lock again creates a fresh file."""
    from kiln.store.locks import FileLock, remove_if_free

    locks = store.root / "locks"
    locks.mkdir(exist_ok=True)
    free, held = locks / "aaaa.build", locks / "bbbb.build"
    free.touch()
    lock = FileLock(held)
    lock.acquire()
    try:
        store.gc()
        assert not free.exists() and held.exists()
        assert remove_if_free(held) is False
    finally:
        lock.release()
    assert remove_if_free(held) is True and not held.exists()
    again = FileLock(held)
    assert again.acquire(blocking=False) and held.exists()
    again.release()


def test_temp_roots_held_one_after_another_all_protect(store, tmp_path):
    """Dropping a temp root rewrites the file; a root added after that must still be
    readable by the collector (it was written after a hole of NULs once)."""
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    b = store.add_path(make_tree(tmp_path / "b", {"y": "2"}))
    store.close()
    s = _fresh_store(store.root)
    with s.temp_root([a.path]):
        pass
    with s.temp_root([b.path]):
        data = (s.root / "temproots" / str(os.getpid())).read_bytes()
        assert data == (b.path + "\n").encode()
        out = subprocess.run(
            [sys.executable, "-c", GC_IN_ANOTHER_PROCESS, str(s.root)],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        assert b.path not in out and a.path in out
        assert s.is_valid(b.path)
    s.close()


GC_IN_ANOTHER_PROCESS = """
import sys
from pathlib import Path
from kiln.store.localstore import LocalStore
s = LocalStore.open(Path(sys.argv[1]))
print("\\n".join(s.gc().deleted))
"""


def test_a_fifo_among_the_roots_does_not_hang_gc(store, tmp_path):
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    store.add_root("a", a.path)
    os.mkfifo(store.root / "gcroots" / "oops")
    r = subprocess.run(
        [sys.executable, "-c", GC_IN_ANOTHER_PROCESS, str(store.root)],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert r.returncode == 0, r.stderr
    assert store.is_valid(a.path)


def test_an_unreadable_roots_directory_stops_gc(store, tmp_path):
    """A roots directory GC cannot list could hide a root: GC stops rather than collect.
    As root (CI), the collector runs without the capabilities that read any directory."""
    import shutil

    prefix = []
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            import pytest

            pytest.skip("root reads any directory, and setpriv is missing to stop that")
        prefix = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search", "--inh-caps", "-all", "--"]
    (store.root / "gcroots" / "sub").mkdir()
    os.chmod(store.root / "gcroots" / "sub", 0)
    try:
        r = subprocess.run(
            [*prefix, sys.executable, "-c", GC_IN_ANOTHER_PROCESS, str(store.root)],
            capture_output=True,
            text=True,
        )
        assert r.returncode != 0 and "cannot read GC roots" in r.stderr
    finally:
        os.chmod(store.root / "gcroots" / "sub", 0o755)


def test_trees_deeper_than_the_recursion_limit_verify_and_collect(store, tmp_path):
    """A NAR may be deeper than Python's recursion limit (the format tests round-trip a
    1,100-deep tree with Nix); verifying, sizing and deleting such a path must work, or
    one hostile path makes every later GC fail."""
    from kiln.store.hashes import Hash
    from kiln.store.nar import dump_bytes
    from kiln.store.nar_restore import rmtree_iter
    from kiln.store.pathinfo import PathInfo
    from kiln.store.paths import make_source_path

    nar = dump_bytes(deep_tree(tmp_path / "deep", 1100))
    rmtree_iter(os.fsencode(tmp_path / "deep"))
    h = Hash.sha256_of(nar)
    path = str(make_source_path("deep", h, store_dir=store.store_dir))
    deep = store.import_nar(PathInfo(path, h, len(nar)), [nar])  # as substitution would
    assert store.verify().ok
    store.close()
    s = _fresh_store(store.root)
    r = s.gc()
    assert r.deleted == (deep.path,) and r.bytes_freed >= 7
    assert not s.real_path(deep.path).exists()
    assert s.gc().deleted == ()
    s.close()


def test_roots_survive_another_spelling_of_the_root_and_a_move(store, tmp_path):
    # A root made through one spelling of the store root still protects its path when GC
    # runs through another (a symlink to the root), and after the store directory moved.
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    store.add_root("a", a.path)
    root = store.root
    store.close()
    alias = tmp_path / "alias"
    os.symlink(root, alias)
    s = _fresh_store(alias)
    assert s.gc().deleted == () and s.is_valid(a.path)
    s.close()
    moved = tmp_path / "moved"
    os.rename(root, moved)
    s = _fresh_store(moved)
    assert s.gc().deleted == () and s.is_valid(a.path)
    s.close()


def test_an_interrupted_add_root_leaves_no_permanent_root(store, tmp_path):
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    # what a kill -9 between add_root's symlink and its rename leaves behind
    from kiln.store.localstore import ROOT_TEMP_PREFIX

    leftover = store.root / "gcroots" / f"{ROOT_TEMP_PREFIX}keep.0123abcd"
    os.symlink(store.real_path(a.path), leftover)
    store.close()
    s = _fresh_store(store.root)
    assert s.gc(dry_run=True).deleted == (a.path,) and os.path.lexists(leftover)
    assert s.gc().deleted == (a.path,)
    assert not os.path.lexists(leftover)
    s.close()


def test_a_hand_made_hidden_root_is_a_root(store, tmp_path):
    """``gcroots/.pin.20261130`` (a date ends in 8 hex digits) is the user's root: GC took
    it for a killed ``add_root``'s temp link, deleted it and collected the path, silently
    (older kilns honoured it)."""
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    b = store.add_path(make_tree(tmp_path / "b", {"x": "2"}))
    pin = store.root / "gcroots" / ".pin.20261130"
    os.symlink(store.real_path(a.path), pin)
    old_style = store.root / "gcroots" / ".keep.0123abcd"  # (an older kiln's temp link: kept too)
    os.symlink(store.real_path(b.path), old_style)
    store.close()
    s = _fresh_store(store.root)
    report = s.gc()
    assert report.deleted == () and set(report.roots) == {a.path, b.path}
    assert os.path.islink(pin) and os.path.islink(old_style)
    s.close()


def test_a_root_naming_no_store_path_protects_nothing_and_stops_nothing(store, tmp_path):
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    (store.root / "gcroots" / "odd").write_text(f"{store.store_dir}/notahash\n")
    store.close()
    s = _fresh_store(store.root)
    assert s.gc().deleted == (a.path,)
    s.close()


def test_a_name_ending_in_a_newline_is_refused(store, tmp_path):
    # a line-based temp-roots file would record another path than the one held
    f = tmp_path / "f"
    f.write_text("x")
    with pytest.raises(FormatError, match="invalid characters"):
        store.add_path(f, name="bad\n")


def test_a_moved_root_into_a_path_holding_store_like_subpaths_protects_that_path(store, tmp_path):
    # The rooted path A has a subpath that itself looks like kiln/store/<B> (an image's
    # rootfs): after a move, the root must protect A, not B.
    b = store.add_path(make_tree(tmp_path / "b", {"x": "b"}), name="dep-b")
    inner = "kiln/store/" + b.path.rsplit("/", 1)[1]
    a = store.add_path(make_tree(tmp_path / "a", {inner + "/x": "copy"}), name="image-a")
    os.symlink(str(store.real_path(a.path) / inner / "x"), store.root / "gcroots" / "img")
    root = store.root
    store.close()
    moved = tmp_path / "moved"
    os.rename(root, moved)
    s = _fresh_store(moved)
    r = s.gc()
    assert a.path in r.roots and s.is_valid(a.path) and r.deleted == (b.path,)
    s.close()


def test_a_live_output_keeps_the_derivation_that_built_it(store, tmp_path):
    """As Nix's keep-derivations (on by default): a rooted output keeps its deriver's
    ``.drv`` (and that ``.drv``'s own closure of sources), so ``kiln build --check`` and
    rebuilders can still find it after a GC; an output nothing roots does not."""
    from kiln.store import nar
    from kiln.store.hashes import Hash
    from kiln.store.pathinfo import PathInfo
    from kiln.store.paths import make_output_path

    src = store.add_path(make_tree(tmp_path / "src", {"main.c": "int main;"}))
    outs = []
    for name in ("kept", "dropped"):
        drv = store.add_text(f"{name}.drv", f"Derive({name})".encode(), [src.path])
        data = nar.file_nar(f"{name}\n".encode())
        path = str(make_output_path(Hash.sha256_of(name.encode()), "out", name, store.store_dir))
        info = PathInfo(path, Hash.sha256_of(data), len(data), deriver=drv.path)
        outs.append((store.import_nar(info, [data]), drv))
    (kept, kept_drv), (dropped, dropped_drv) = outs
    store.add_root("kept", kept.path)
    store.close()
    s = _fresh_store(store.root)
    s.gc()
    assert s.is_valid(kept.path) and s.is_valid(kept_drv.path) and s.is_valid(src.path)
    assert not s.is_valid(dropped.path) and not s.is_valid(dropped_drv.path)
    s.close()


def test_gc_removes_a_killed_attestation_writers_temp_files(store, tmp_path):
    """``attestations.write`` stages ``.<kind>-<pid>-<8>.tmp`` beside the file; one left
    by a writer that died goes with the next GC even though the path is live; a live
    writer's stays."""
    p = store.add_path(make_tree(tmp_path / "t", {"f": "x"})).path
    store.add_root("t", p)
    d = store.root / "attestations" / p.split("/")[-1][:32]
    d.mkdir(parents=True)
    gone = subprocess.Popen(["true"])
    gone.wait()
    dead = d / f".vsa-1234567890abcdef-{gone.pid}-abcd_123.tmp"
    live = d / f".sbom-{os.getpid()}-zzzz0000.tmp"
    fresh = d / f".vsa-x-{gone.pid}-fresh000.tmp"  # dead writer, but just written: kept for now
    for f in (dead, live, fresh):
        f.write_text("{}")
    for f in (dead, live):
        os.utime(f, (time.time() - 7200, time.time() - 7200))
    store.close()
    s = _fresh_store(store.root)
    s.gc()
    assert not dead.exists() and live.exists() and fresh.exists() and s.is_valid(p)
    s.close()


def test_gc_removes_small_temp_files_of_killed_writers(store, tmp_path):
    """A ``kiln store init``, a build-log save or an eval-cache write killed mid-write
    leaves a small temp file (``.config.json.<pid>.<hex>``, ``logs/.<name>.<pid>.tmp``,
    ``eval-cache/.tmp-<pid>-<rand>``); GC removes those whose writer is gone once they are
    an hour old (a writer in another pid namespace looks dead), and keeps a live
    writer's."""
    from kiln.lang import cache

    gone = subprocess.Popen(["true"])
    gone.wait()
    (store.root / "logs").mkdir(exist_ok=True)
    (store.root / "eval-cache").mkdir(exist_ok=True)
    dead = [
        store.root / f".config.json.{gone.pid}.0badf00d",
        store.root / "logs" / f".x.drv.zst.{gone.pid}.tmp",
        store.root / "eval-cache" / f".tmp-{gone.pid}-k2j4h5g6",
        store.root / "eval-cache" / ".tmp-abcd1234",  # named before the pid was in it
    ]
    cache.save(store.root / "eval-cache", "e.recipe", "/kiln/store", {}, {}, {}, {}, {})
    entries = sorted((store.root / "eval-cache").iterdir())
    live = store.root / "logs" / f".y.drv.zst.{os.getpid()}.tmp"
    fresh = store.root / f".config.json.{gone.pid}.00000000"  # just written: kept for now
    for f in (*dead, live, fresh):
        f.write_text("x")
    for f in (*dead, live):
        os.utime(f, (time.time() - 7200, time.time() - 7200))
    store.gc()
    assert not any(f.exists() for f in dead) and live.exists() and fresh.exists()
    assert sorted((store.root / "eval-cache").iterdir()) == [e for e in entries if e not in dead]


def test_store_add_with_add_root_leaves_no_window_for_gc(tmp_path, monkeypatch, capsys):
    """``kiln store add --add-root NAME``: the root is made while the new path is still
    held by the command's temp root, so a GC between the add and the root (which took
    paths printed by a plain ``store add`` before they could be rooted) keeps it."""
    from kiln import cmd_store
    from kiln.store.localstore import LocalStore

    root = tmp_path / "st"
    src = make_tree(tmp_path / "src", {"f": "x\n"})
    real_add_root = LocalStore.add_root
    collected: list[int] = []

    def gc_first(self, name, path):  # noqa: ANN001, ANN202 - another process's GC, just before
        with LocalStore.open(root) as other:
            collected.append(len(other.gc().deleted))
        return real_add_root(self, name, path)

    monkeypatch.setattr(LocalStore, "add_root", gc_first)
    assert cmd_store.main(["store", "add", "--store", str(root), "--add-root", "mine", str(src)]) == 0
    path = capsys.readouterr().out.strip()
    monkeypatch.setattr(LocalStore, "add_root", real_add_root)
    assert collected == [0]
    with LocalStore.open(root) as s:
        s.gc()
        assert s.is_valid(path) and os.path.realpath(root / "gcroots" / "mine") == str(s.real_path(path))


def test_at_exit_only_our_own_temp_roots_file_goes(tmp_path):
    """A process that never closes its store leaves no ``temproots/<pid>``; one that
    closed it, after which another pid namespace's process with the same pid number made
    a file of that name, leaves that file alone at exit (its paths stay rooted)."""
    root = tmp_path / "st"
    LocalStore.open(root).close()
    unclosed = (
        f"from kiln.store.localstore import LocalStore; s = LocalStore.open({str(root)!r}); s.keep(['x'])"
    )
    subprocess.run([sys.executable, "-c", unclosed], check=True)
    assert os.listdir(root / "temproots") == []
    reused = (
        "import os; from kiln.store.localstore import LocalStore\n"
        f"s = LocalStore.open({str(root)!r}); s.keep(['x']); s.close()\n"
        f"open(os.path.join({str(root / 'temproots')!r}, str(os.getpid())), 'w').write('theirs')\n"
        "print(os.getpid())\n"
    )
    pid = subprocess.run(
        [sys.executable, "-c", reused], check=True, capture_output=True, text=True
    ).stdout.strip()
    assert (root / "temproots" / pid).read_text() == "theirs"


def test_gc_removes_a_directory_or_a_dangling_link_at_an_object_name(store, tmp_path):
    """Such an entry (corruption) made every GC fail (unlink of a directory, stat of a
    dangling link) after it had already deleted rows: GC removes it like any unused
    object, and a dry run sizes it without failing."""
    shard = store.objects / "0f"
    d = shard / ("0f" + "0" * 62 + ".nar.zst")
    (d / "inside").mkdir(parents=True)
    os.chmod(d, 0o555)
    link = shard / ("0f" + "1" * 62 + ".nar.zst")
    os.symlink("nowhere", link)
    assert store.gc(dry_run=True).objects_deleted == 2
    assert store.gc().objects_deleted == 2
    assert not os.path.lexists(d) and not os.path.lexists(link)
    assert store.verify().ok
