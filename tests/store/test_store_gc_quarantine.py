"""GC after ``verify --repair`` quarantined a path: the quarantined path is still wanted
while rooted or referenced, so what its record (``quarantine/*/info.txt``) says it
references and was built by stays alive — the closure needed to build or fetch it
again. Unrooted and unreferenced, it holds nothing."""

from __future__ import annotations

import os

from clikit import kiln
from storekit import corrupt_file, corrupt_object, make_tree

from kiln.store.localstore import LocalStore
from kiln.store.quarantine import parse_info


def _break_both(store, path):  # noqa: ANN001, ANN202
    """Corrupt ``path``'s object and tree, so a repair can only quarantine it."""
    corrupt_object(store, path)
    corrupt_file(store.real_path(path) / "f")


def _quarantined(store, tmp_path, before=lambda built: None):
    """(dep, drv, built) where ``built`` references ``dep``, has deriver ``drv``, and has
    just been quarantined; ``before(built)`` runs while it is still valid."""
    dep = store.add_path(make_tree(tmp_path / "dep", {"lib": "l" * 3000}))
    drv = store.add_text("built.drv", b"derive", [dep.path])
    out = f"{store.store_dir}/{'3' * 32}-built"
    built = store.register_built(out, make_tree(tmp_path / "build", {"f": "x" * 3000}), [dep.path], drv.path)
    before(built)
    _break_both(store, built.path)
    r = store.verify(repair=True)
    assert r.quarantined == (built.path,)
    return dep, drv, built


def test_a_rooted_quarantined_path_keeps_its_references_and_deriver(store, tmp_path):
    dep, drv, built = _quarantined(store, tmp_path, lambda b: store.add_root("built", b.path))
    store.close()  # only gcroots/ count now
    s = LocalStore.open(store.root)
    try:
        r = s.gc()
        assert dep.path not in r.deleted and drv.path not in r.deleted, r.deleted
        assert s.is_valid(dep.path) and s.is_valid(drv.path)
        assert s.gc(dry_run=True).deleted == ()  # and again
    finally:
        s.close()


def test_a_referenced_quarantined_path_keeps_its_references(store, tmp_path):
    tops = []
    dep, drv, built = _quarantined(
        store, tmp_path, lambda b: tops.append(store.add_text("top.drv", b"top", [b.path]))
    )
    store.add_root("top", tops[0].path)
    store.close()
    s = LocalStore.open(store.root)
    try:
        r = s.gc()
        assert r.deleted == (), r.deleted
        assert s.is_valid(dep.path) and s.is_valid(drv.path)
    finally:
        s.close()


def test_an_unwanted_quarantined_path_holds_nothing(store, tmp_path):
    dep, drv, built = _quarantined(store, tmp_path)
    store.close()
    s = LocalStore.open(store.root)
    try:
        r = s.gc()
        assert set(r.deleted) == {dep.path, drv.path}
        assert r.unread_quarantine == ()
    finally:
        s.close()


def test_an_unreadable_quarantine_record_is_reported_not_fatal(store, tmp_path):
    dep, drv, built = _quarantined(store, tmp_path, lambda b: store.add_root("built", b.path))
    (q,) = (store.root / "quarantine").iterdir()
    (q / "info.txt").write_text("garbage\n")
    for other in ("fifo", "zero"):  # neither waited on nor read endlessly
        (store.root / "quarantine" / other).mkdir()
    os.mkfifo(store.root / "quarantine" / "fifo" / "info.txt")
    os.symlink("/dev/zero", store.root / "quarantine" / "zero" / "info.txt")
    store.close()
    s = LocalStore.open(store.root)
    try:
        r = s.gc(dry_run=True)
        assert set(r.deleted) == {dep.path, drv.path}
        assert len(r.unread_quarantine) == 3 and any(u.startswith(f"{q}:") for u in r.unread_quarantine)
    finally:
        s.close()
    cp = kiln("store", "gc", "--dry-run", "--store", str(store.root))
    assert cp.returncode == 0, cp.stderr
    assert f"warning: quarantine record unreadable, its references were not kept: {q}" in cp.stderr


def test_info_record_round_trip_and_older_records():
    old = "path: /kiln/store/a-x\nnar_hash: h\nnar_size: 1\nfile_hash: \nreferences: /kiln/store/b-y /kiln/store/a-x\n"
    assert parse_info(old) == ("/kiln/store/a-x", ("/kiln/store/b-y",))
    assert parse_info(old + "deriver: \nobject copy: failed (No space left on device)\n") == (
        "/kiln/store/a-x",
        ("/kiln/store/b-y",),
    )
    assert parse_info("references: \nderiver: /kiln/store/d-z.drv\n") is None
    assert parse_info("path: /kiln/store/a-x\nreferences: \nderiver: /kiln/store/d-z.drv\n") == (
        "/kiln/store/a-x",
        ("/kiln/store/d-z.drv",),
    )
