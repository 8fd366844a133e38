"""Staged registration of build outputs (``store.stagedbuild``): usable before valid,
valid only after the group commit, safe against GC, crashes and concurrent writers."""

from __future__ import annotations

import contextlib
import hashlib
import shutil
import signal
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from storekit import make_tree

from kiln.store import nar, nixbase32
from kiln.store.errors import StoreError
from kiln.store.localstore import LocalStore
from kiln.store.stagedbuild import Pending, Placed, StagedOutput, archive, closure, commit, place, stage


def _out(store: LocalStore, name: str) -> str:
    # an input-addressed-looking path: any valid hash part will do
    return f"{store.store_dir}/{nixbase32.encode(hashlib.sha256(name.encode()).digest()[:20])}-{name}"


def _built(tmp_path: Path, name: str, text: str) -> Path:
    work = tmp_path / f"build-{name}"
    work.mkdir()
    return make_tree(work / "out", {"f": text, "bin/x": "x:#!/bin/sh\n"})


def test_staged_output_is_in_place_but_not_valid_until_commit(store, tmp_path):
    tree = _built(tmp_path, "a", "one\n")
    want, _ = nar.hash_path(tree)
    path = _out(store, "a")
    s = stage(store, path, tree, [], "/kiln/store/x-a.drv", tree.parent / "out.object")
    assert isinstance(s, StagedOutput)
    real = store.real_path(path)
    assert (real / "f").read_text() == "one\n" and not tree.exists()
    assert not store.is_valid(path)
    assert not (store.objects / s.info.file_hash.hex[:2]).exists() or not any(
        (store.objects / s.info.file_hash.hex[:2]).iterdir()
    )
    (info,) = commit(store, [s])
    assert store.is_valid(path) and info.nar_hash == want
    assert store.query(path).deriver == "/kiln/store/x-a.drv"
    assert store.verify().ok


def test_gc_keeps_a_staged_tree_of_a_live_process(store, tmp_path):
    """Between stage and commit the tree has no row; GC must not take it for a crashed
    registration's leftover while its process roots it."""
    path = _out(store, "b")
    tree = _built(tmp_path, "b", "two\n")
    s = stage(store, path, tree, [], None, tree.parent / "out.object")
    other = LocalStore.open(store.root)  # GC from another store object (same rules as a process)
    try:
        report = other.gc()
    finally:
        other.close()
    assert not report.stray_trees and store.real_path(path).exists()
    commit(store, [s])
    assert store.is_valid(path)


def test_references_may_be_staged_earlier_in_the_batch(store, tmp_path):
    a, b = _out(store, "c"), _out(store, "d")
    sa = stage(store, a, _built(tmp_path, "c", "c\n"), [], None, tmp_path / "c.object")
    sb = stage(store, b, _built(tmp_path, "d", a + "\n"), [a], None, tmp_path / "d.object")
    pending = Pending()
    pending.add(
        [Placed(x.info.path, x.info.references, None, x.obj, x.identity) for x in (sa, sb)],
        contextlib.ExitStack(),
    )
    assert sorted(closure(store, [b], pending)) == sorted([a, b])
    infos = commit(store, [sa, sb])
    assert [i.path for i in infos] == [a, b]
    assert store.closure([b]) == [a, b]


def test_commit_refuses_a_reference_that_is_not_valid(store, tmp_path):
    a, b = _out(store, "e"), _out(store, "f")
    sa = stage(store, a, _built(tmp_path, "e", "e\n"), [], None, tmp_path / "e.object")
    sb = stage(store, b, _built(tmp_path, "f", "f\n"), [a], None, tmp_path / "f.object")
    with pytest.raises(StoreError, match="references are not valid"):
        commit(store, [sb])  # a was never committed
    assert not store.is_valid(b)
    commit(store, [sa, sb])
    assert store.is_valid(b)


def _replace_tree(store, path: str) -> None:
    """What another writer's crashed registration would leave at the real path."""
    real = store.real_path(path)
    real.chmod(0o755)
    shutil.rmtree(real)
    make_tree(real, {"f": "theirs\n"})


def test_commit_detects_a_tree_replaced_by_another_writer(store, tmp_path):
    path = _out(store, "g")
    s = stage(store, path, _built(tmp_path, "g", "mine\n"), [], None, tmp_path / "g.object")
    _replace_tree(store, path)
    with pytest.raises(StoreError, match="removed or replaced"):
        commit(store, [s])
    assert not store.is_valid(path)


def test_a_path_registered_meanwhile_wins(store, tmp_path):
    path = _out(store, "h")
    s = stage(store, path, _built(tmp_path, "h", "first\n"), [], None, tmp_path / "h.object")
    # someone else's registration: replaces the unregistered tree and commits a row
    other = LocalStore.open(store.root)
    try:
        theirs = other.register_built(path, _built(tmp_path, "h2", "second\n"), [], None)
    finally:
        other.close()
    (info,) = commit(store, [s])
    assert info.nar_hash == theirs.nar_hash
    assert (store.real_path(path) / "f").read_text() == "second\n"
    assert store.verify().ok


STAGE_AND_DIE = """
import os, sys
from pathlib import Path
from kiln.store.localstore import LocalStore
from kiln.store.stagedbuild import stage
s = LocalStore.open(Path(sys.argv[1]))
stage(s, sys.argv[2], Path(sys.argv[3]), [], None, Path(sys.argv[4]))
print("staged", flush=True)
sys.stdin.read()
"""


def test_kill_9_between_stage_and_commit(tmp_path):
    root = tmp_path / "store"
    LocalStore.open(root).close()
    tree = _built(tmp_path, "k", "killed\n")
    path = f"/kiln/store/{nixbase32.encode(bytes(20))}-k"
    p = subprocess.Popen(
        [sys.executable, "-c", STAGE_AND_DIE, str(root), path, str(tree), str(tmp_path / "k.object")],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert p.stdout.readline().strip() == "staged"
    p.send_signal(signal.SIGKILL)
    p.wait()
    s = LocalStore.open(root)
    try:
        assert not s.is_valid(path)
        assert s.verify().ok
        report = s.gc()  # the dead process no longer roots it: a crashed registration's tree
        assert report.stray_trees == (path,)
        assert not s.real_path(path).exists()
    finally:
        s.close()


def test_concurrent_stage_and_commit_threads(store, tmp_path):
    """The builder's shape: one thread stages (under the shared lock), another commits."""
    lock = threading.RLock()
    paths = [_out(store, f"m{i}") for i in range(20)]
    staged: list[StagedOutput] = []
    for i, p in enumerate(paths):
        tree = _built(tmp_path, f"m{i}", f"{i}\n")
        with lock:
            staged.append(stage(store, p, tree, [paths[i - 1]] if i else [], None, tmp_path / f"m{i}.object"))
    errors: list[BaseException] = []

    def committer() -> None:
        mine = LocalStore.open(store.root)  # the store is used from one thread each here
        try:
            commit(mine, staged)
        except BaseException as e:  # noqa: BLE001
            errors.append(e)
        finally:
            mine.close()

    t = threading.Thread(target=committer)
    t.start()
    t.join()
    assert not errors
    assert all(store.is_valid(p) for p in paths)
    assert store.closure([paths[-1]]) == paths


def test_place_canonicalises_and_refuses_what_a_store_path_may_not_hold(store, tmp_path):
    """``place`` makes the output canonical before anyone can mount it, and refuses
    setuid files and fifos with the offending path; ``archive`` then reads it as is."""
    import os
    import stat

    tree = _built(tmp_path, "p", "x\n")
    (tree / "deep" / "er").mkdir(parents=True)
    (tree / "deep" / "er" / "f").write_text("f")
    (tree / "deep").chmod(0o700)
    pl = place(store, _out(store, "p"), tree, [], None, tmp_path / "p.object")
    assert isinstance(pl, Placed)
    real = store.real_path(pl.path)
    for p in [real, *real.rglob("*")]:
        st = p.lstat()
        assert st.st_mtime == 1, p
        if p.is_dir() and p != real:
            assert stat.S_IMODE(st.st_mode) == 0o555
        elif p.is_file():
            assert stat.S_IMODE(st.st_mode) in (0o444, 0o555)
    s = archive(store, pl)
    assert s.info.nar_hash == nar.hash_path(real)[0]
    commit(store, [s])
    assert store.verify().ok

    bad = _built(tmp_path, "q", "y\n")
    (bad / "bin" / "x").chmod(0o4755)
    with pytest.raises(StoreError, match="setuid"):
        place(store, _out(store, "q"), bad, [], None, tmp_path / "q.object")
    fifo = _built(tmp_path, "r", "z\n")
    os.mkfifo(fifo / "pipe")
    with pytest.raises(StoreError, match="fifo"):
        place(store, _out(store, "r"), fifo, [], None, tmp_path / "r.object")
    assert not store.real_path(_out(store, "q")).exists() and not store.real_path(_out(store, "r")).exists()


def test_archive_notices_a_tree_replaced_after_placing(store, tmp_path):
    path = _out(store, "s")
    pl = place(store, path, _built(tmp_path, "s", "mine\n"), [], None, tmp_path / "s.object")
    _replace_tree(store, path)
    with pytest.raises(StoreError, match="removed or replaced"):
        archive(store, pl)


def test_canonicalise_output_strips_extended_attributes(tmp_path):
    # The NAR does not record xattrs (or ACLs, which are xattrs): a materialised tree
    # must not keep metadata no other copy of the path has.
    import os

    import pytest

    from kiln.store.outputcanon import canonicalise_output

    out = tmp_path / "out"
    (out / "d").mkdir(parents=True)
    (out / "d" / "f").write_text("x")
    try:
        os.setxattr(out / "d" / "f", "user.kiln", b"v")
        os.setxattr(out / "d", "user.kiln", b"v")
    except OSError:
        pytest.skip("this file system has no user xattrs")
    canonicalise_output(out)
    assert os.listxattr(out / "d" / "f") == [] and os.listxattr(out / "d") == []
