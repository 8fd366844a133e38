"""verify / repair: corrupt trees, corrupt objects, both, metadata, signatures."""

from __future__ import annotations

import os

import pytest
from storekit import corrupt_file, corrupt_object, make_tree

from kiln.store import nar
from kiln.store.signing import SecretKey, sign_info


@pytest.fixture
def two(store, tmp_path):
    a = store.add_path(make_tree(tmp_path / "a", {"f": "alpha\n", "d/g": "gamma" * 100}))
    b = store.add_path(make_tree(tmp_path / "b", {"f": "beta\n"}))
    return a, b


def test_clean_store_verifies(store, two):
    r = store.verify()
    assert r.ok and r.checked == 2 and r.problems == ()


def test_symlink_loops_are_plain_symlinks_to_verify_and_repair(store, tmp_path):
    """A path holding a symlink to itself or a two-link loop is clean (the tree walk
    does not follow links), and a repair of it re-materialises it."""
    src = tmp_path / "loops"
    src.mkdir()
    os.symlink("self", src / "self")
    os.symlink("two", src / "one")
    os.symlink("one", src / "two")
    info = store.add_path(src)
    r = store.verify()
    assert r.ok and r.problems == (), r.problems
    real = store.real_path(info.path)
    os.chmod(real, 0o755)
    os.unlink(real / "one")
    r = store.verify(repair=True)
    assert r.problems and r.ok and not r.quarantined and store.verify().ok
    assert os.readlink(real / "one") == "two"


def test_corrupt_tree_reported_and_rematerialised(store, two):
    a, b = two
    corrupt_file(store.real_path(a.path) / "f")
    r = store.verify()
    assert not r.ok
    [p] = r.problems
    assert p.path == a.path and p.kind == "tree-corrupt"
    assert a.nar_hash.to_nix32() in p.detail and "got:" in p.detail
    r = store.verify(repair=True)
    assert r.ok and r.problems[0].repaired.startswith("re-materialised")
    assert (store.real_path(a.path) / "f").read_text() == "alpha\n"
    assert store.verify().problems == ()


def test_missing_tree_and_bad_metadata(store, two):
    a, b = two
    from kiln.store.trees import remove_tree

    remove_tree(store.real_path(b.path))
    os.chmod(store.real_path(a.path) / "f", 0o666)
    kinds = {p.path: p.kind for p in store.verify().problems}
    assert kinds == {a.path: "tree-metadata", b.path: "tree-missing"}
    assert store.verify(repair=True).ok
    assert store.verify().problems == ()
    assert (store.real_path(b.path) / "f").read_text() == "beta\n"


def test_corrupt_object_rebuilt_from_good_tree(store, two):
    a, _ = two
    old = store.object_path(a.path)
    corrupt_object(store, a.path)
    [p] = store.verify().problems
    assert p.kind == "object-corrupt" and p.path == a.path
    r = store.verify(repair=True)
    assert r.ok and "rebuilt" in r.problems[0].repaired
    assert b"".join(store.nar(a.path)) == nar.dump_bytes(store.real_path(a.path))
    assert store.verify().problems == ()
    assert not old.exists() or store.object_path(a.path) == old


def test_an_object_that_is_a_fifo_is_reported_not_waited_on(store, two):
    """verify (and dump, cat) read the object: a FIFO put there blocked them for ever."""
    a, _ = two
    obj = store.object_path(a.path)
    os.chmod(obj.parent, 0o755)
    os.unlink(obj)
    os.mkfifo(obj)
    [p] = store.verify().problems
    assert p.path == a.path and p.kind.startswith("object"), p
    r = store.verify(repair=True)
    assert r.ok and store.verify().problems == ()


def test_both_bad_quarantines(store, two, tmp_path):
    a, b = two
    top = store.add_text("top.drv", b"x", [a.path])
    corrupt_object(store, a.path)
    corrupt_file(store.real_path(a.path) / "f")
    r = store.verify(repair=True)
    assert r.quarantined == (a.path,)
    assert not store.is_valid(a.path) and not store.real_path(a.path).exists()
    q = list((store.root / "quarantine").iterdir())
    assert len(q) == 1 and (q[0] / "tree" / "f").exists() and (q[0] / "info.txt").exists()
    # the referrer is now incomplete, and verify keeps saying so
    r = store.verify()
    assert not r.ok
    assert [(p.path, p.kind) for p in r.problems] == [(top.path, "dangling-reference")]


def test_a_second_repair_of_a_path_another_one_quarantined_does_not_quarantine_it_again(store, two):
    """Two ``verify --repair`` runs found the same broken path; the one that gets the
    path lock second finds it already invalidated and says so."""
    from kiln.store.repair import repair_path
    from kiln.store.verify import Problem

    a, _b = two
    corrupt_object(store, a.path)
    corrupt_file(store.real_path(a.path) / "f")
    found = [Problem(a.path, "tree-corrupt", "x"), Problem(a.path, "object-corrupt", "y")]
    first, q1 = repair_path(store, a, list(found))
    second, q2 = repair_path(store, a, list(found))  # with the findings made before the first
    assert q1 and "quarantined" in first[0].repaired
    assert not q2 and "already invalidated by another process" in second[0].repaired
    assert len(list((store.root / "quarantine").iterdir())) == 1


def test_signatures(store, two):
    a, b = two
    key = SecretKey.generate("test-1")
    other = SecretKey.generate("other-1")
    built = "/kiln/store/" + "6" * 32 + "-built"
    tree = make_tree(store.tmp.parent / "bt", {"f": "x"})
    store.register_built(built, tree, [], None)
    # content-addressed paths need no signature; input-addressed ones do
    r = store.verify(trusted=[key.public()], sigs_needed=1)
    assert [(p.path, p.kind) for p in r.problems] == [(built, "signatures")]
    assert (r.checked, r.ca_proved) == (3, 2)  # (counted, so no summary claims them signed)
    assert store.verify().ca_proved == 0  # (signatures not asked: nothing exempted)
    store.add_signatures(built, [sign_info(store.query(built), other)])
    assert not store.verify(trusted=[key.public()], sigs_needed=1).ok
    store.add_signatures(built, [sign_info(store.query(built), key)])
    assert store.verify(trusted=[key.public()], sigs_needed=1).ok
    assert not store.verify(trusted=[key.public(), other.public()], sigs_needed=3).ok


def test_an_unverifiable_ca_claim_exempts_nothing_from_signatures(store, two):
    # ``ca`` is unsigned (a narinfo's CA:, a database column): only a claim verify can
    # recompute the path from exempts a path from needing signatures.
    key = SecretKey.generate("test-1")
    built = "/kiln/store/" + "7" * 32 + "-built"
    store.register_built(built, make_tree(store.tmp.parent / "bt2", {"f": "x"}), [], None)
    for claim in ("fixed:sha256:" + "0" * 52, "fixed:r:sha512:abc", "fixed:git:sha1:" + "0" * 32, "x"):
        store.conn.execute("UPDATE paths SET ca=? WHERE path=?", (claim, built))
        store.conn.commit()
        r = store.verify(trusted=[key.public()], sigs_needed=1)
        assert (built, "signatures") in [(p.path, p.kind) for p in r.problems], claim


@pytest.mark.parametrize("kind", ["symlink", "executable"])
def test_a_flat_ca_proves_only_a_plain_file(store, tmp_path, kind):
    """A flat ``fixed:sha256:`` claim is a non-executable regular file's hash: a path
    whose tree is a symlink to a file with those bytes elsewhere, or an executable with
    them, is not proved by it (and so still needs its signatures)."""
    from kiln.store.hashes import Hash
    from kiln.store.pathadmit import ContentAddressError
    from kiln.store.pathinfo import PathInfo
    from kiln.store.paths import make_fixed_output_path

    target = tmp_path / "target"
    target.write_bytes(b"hello")
    node = tmp_path / "node"
    if kind == "symlink":
        os.symlink(target, node)
    else:
        node.write_bytes(b"hello")
        node.chmod(0o755)
    data = nar.dump_bytes(node)
    h = Hash.sha256_of(b"hello")
    p = str(make_fixed_output_path("hello", h, False, store.store_dir))
    ca = f"fixed:sha256:{h.nix32}"
    with pytest.raises(ContentAddressError, match=r"\(not a plain file\)"):  # imports refuse it
        store.import_nar(PathInfo(p, Hash.sha256_of(data), len(data), ca=ca), [data])
    assert not store.is_valid(p)
    store.import_nar(PathInfo(p, Hash.sha256_of(data), len(data)), [data])
    with store.conn:  # as a store that imported it before imports checked CAs has it
        store.conn.execute("UPDATE paths SET ca=? WHERE path=?", (ca, p))
    r = store.verify(trusted=[], sigs_needed=1)
    kinds = sorted(q.kind for q in r.problems if q.path == p)
    assert kinds == ["ca-mismatch", "signatures"], r.problems
    assert "(not a plain file)" in next(q.detail for q in r.problems if q.kind == "ca-mismatch")


def test_a_malformed_ca_row_is_that_paths_problem(store, tmp_path):
    """A content address that does not parse (stored before narinfos checked CA, or by
    hand) is reported for its path; the other paths are still verified."""
    a = store.add_path(make_tree(tmp_path / "a", {"x": "1"}))
    b = store.add_path(make_tree(tmp_path / "b", {"y": "2"}))
    with store.conn:
        store.conn.execute("UPDATE paths SET ca=? WHERE path=?", ("fixed:r:sha256:" + "0" * 59, a.path))
    r = store.verify()
    assert not r.ok
    assert [(p.path, p.kind) for p in r.problems] == [(a.path, "ca-mismatch")]
    assert "malformed" in r.problems[0].detail
    assert b.path not in {p.path for p in r.problems}


def test_bad_object_with_a_tree_only_off_in_metadata_is_rebuilt_not_quarantined(store, two):
    # The tree's NAR hash still matches the row (only a mode is off): it is good content.
    a, _ = two
    os.chmod(store.real_path(a.path) / "f", 0o644)
    corrupt_object(store, a.path)
    kinds = sorted(p.kind for p in store.verify().problems)
    assert kinds == ["object-corrupt", "tree-metadata"]
    r = store.verify(repair=True)
    assert r.quarantined == () and store.is_valid(a.path)
    assert store.verify().problems == ()
    assert (store.real_path(a.path) / "f").read_text() == "alpha\n"


def test_a_shared_object_repaired_through_one_path_is_good_for_the_other(store, tmp_path):
    # Same NAR under two names: one object. It is corrupt, and the second path's tree is
    # damaged too: repairing the first path fixes the object, so the second is restored
    # from it rather than quarantined on findings made before that repair.
    x = store.add_path(make_tree(tmp_path / "x1", {"f": "same\n"}), name="one")
    y = store.add_path(make_tree(tmp_path / "x2", {"f": "same\n"}), name="two")
    assert store.object_path(x.path) == store.object_path(y.path)
    corrupt_object(store, x.path)
    for damaged in sorted([x, y], key=lambda i: i.path):  # whichever comes first in the scan
        corrupt_object(store, x.path)
        corrupt_file(store.real_path(damaged.path) / "f")
        r = store.verify(repair=True)
        assert r.quarantined == ()
        assert store.verify().problems == ()
        assert (store.real_path(damaged.path) / "f").read_text() == "same\n"


def test_a_content_addressed_path_with_a_bad_object_repairs_clean_under_sigs_needed(store, two):
    # the content-address proof is the tree's: a corrupt object does not take it away
    a, _ = two
    corrupt_object(store, a.path)
    key = SecretKey.generate("test-1")
    r = store.verify(repair=True, trusted=[key.public()], sigs_needed=1)
    assert r.ok, r.problems


def _repair_while_another_registers(store, monkeypatch, register):  # noqa: ANN001, ANN202
    """``store.verify(repair=True)`` while another store object runs ``register`` at the
    moment repair deals with the path's old object (where it used to check that no row
    uses it and then move or delete it). Returns the report and the paths made valid."""
    from kiln.store import repair
    from kiln.store.localstore import LocalStore

    real = repair._set_aside_if_directory
    added: list[str] = []

    def registering_first(obj, dest):  # noqa: ANN001, ANN202
        if not added:
            with LocalStore.open(store.root) as other:
                added.append(register(other).path)
        return real(obj, dest)

    monkeypatch.setattr(repair, "_set_aside_if_directory", registering_first)
    try:
        return store.verify(repair=True), added
    finally:
        monkeypatch.setattr(repair, "_set_aside_if_directory", real)


def test_a_quarantine_never_takes_the_object_another_path_just_registered(store, tmp_path, monkeypatch):
    """Path A (bad tree, bad object) is quarantined while ``store add`` registers B, with
    the same content under another name and so the same object: B publishes its good
    copy and commits its row between repair's "no row uses the object" and the move.
    The move used to take B's good object into quarantine (B valid, object missing)."""

    src = make_tree(tmp_path / "src", {"f": "alpha\n" * 1000})
    a = store.add_path(src, name="qa")
    corrupt_file(store.real_path(a.path) / "f")
    corrupt_object(store, a.path)
    r, added = _repair_while_another_registers(
        store, monkeypatch, lambda other: other.add_path(src, name="qb")
    )
    assert r.quarantined == (a.path,) and added
    assert store.verify().ok, store.verify().problems  # B has its object
    assert store.is_valid(added[0]) and b"".join(store.nar(added[0]))


def test_a_quarantine_of_a_path_whose_object_is_a_directory_says_quarantined(store, tmp_path):
    """An "object" that is a directory cannot be hashed: it is bad, moved aside with the
    rest, and the path is reported quarantined (not a repair that failed after the path
    was already invalidated)."""
    src = make_tree(tmp_path / "src", {"f": "alpha\n" * 100})
    a = store.add_path(src, name="qa")
    corrupt_file(store.real_path(a.path) / "f")
    obj = store.object_path(a.path)
    obj.unlink()
    obj.mkdir()
    r = store.verify(repair=True)
    assert r.quarantined == (a.path,) and all(p.kind != "repair-failed" for p in r.problems), r.problems
    assert not obj.exists() and not store.is_valid(a.path)


def test_an_object_rebuild_never_deletes_the_old_name_another_path_just_registered(
    store, tmp_path, monkeypatch
):
    """Path A came as a foreign object (zstd level 3: another name than kiln's own for
    the same NAR); it is corrupted, the tree is good, so repair re-archives A under kiln's
    name and leaves the old one for later. B, the same NAR under another name, imported from the same
    foreign object, publishes that good copy and registers between repair's check and the
    drop: the old code deleted it (B valid, object missing)."""
    import io

    import zstandard

    from kiln.store.hashes import Hash
    from kiln.store.pathinfo import PathInfo
    from kiln.store.paths import make_source_path

    src = make_tree(tmp_path / "src", {"f": "alpha\n" * 1000})
    nar_bytes = nar.dump_bytes(src)
    foreign = zstandard.ZstdCompressor(level=3).compress(nar_bytes)
    nar_hash = Hash.sha256_of(nar_bytes)

    def info(name: str) -> PathInfo:
        sp = make_source_path(name, nar_hash, store_dir=store.store_dir)
        return PathInfo(
            str(sp), nar_hash, len(nar_bytes), file_hash=Hash.sha256_of(foreign), file_size=len(foreign),
            ca=f"fixed:r:sha256:{nar_hash.nix32}",
        )  # fmt: skip

    a = store.import_object(info("qa"), io.BytesIO(foreign))
    corrupt_object(store, a.path)
    r, added = _repair_while_another_registers(
        store, monkeypatch, lambda other: other.import_object(info("qb"), io.BytesIO(foreign))
    )
    assert r.ok and not r.quarantined and added and "rebuilt" in r.problems[0].repaired
    assert store.verify().ok, store.verify().problems  # B still has its object


def test_a_quarantined_object_is_copied_and_deleted_only_with_the_gc_lock_free(store, tmp_path):
    """The quarantine holds a copy of the bad object. The object itself is deleted after
    the repair only if the GC lock can be had exclusively (no writer at work); otherwise
    it stays, unused, for GC."""
    from kiln.store.locks import FileLock

    for held in (False, True):
        src = make_tree(tmp_path / f"src{held}", {"f": f"alpha {held}\n" * 100})
        a = store.add_path(src, name=f"q{int(held)}")
        corrupt_file(store.real_path(a.path) / "f")
        obj = store.object_path(a.path)
        corrupt_object(store, a.path)
        bad = obj.read_bytes()
        writer = FileLock(store.gc_lock_path, shared=True)  # another process's registration
        if held:
            writer.acquire()
        try:
            r = store.verify(repair=True)
        finally:
            if held:
                writer.release()
        assert r.quarantined == (a.path,)
        [q] = [d for d in (store.root / "quarantine").iterdir() if d.name.startswith(a.path.split("/")[-1])]
        assert (q / obj.name).read_bytes() == bad
        assert obj.exists() == held and (str(obj) in r.stray_objects) == held
    store.gc()
    assert not obj.exists()
