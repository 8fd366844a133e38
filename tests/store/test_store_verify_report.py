"""verify / repair report what they find and go on: an unreadable object is that path's
problem, and a quarantine that breaks referrers' closures is a failure, not a success."""

from __future__ import annotations

import json
import os
import shutil

from clikit import kiln
from storekit import make_tree


def _unreadable_object(store, path):
    """Put a directory where ``path``'s object was: opening it for reading fails with an
    OSError (EISDIR), as a failing disk's EIO would; works as root too."""
    obj = store.object_path(path)
    os.chmod(obj, 0o644)
    obj.unlink()
    obj.mkdir()
    return obj


def _break_tree(store, path):
    real = store.real_path(path)
    os.chmod(real, 0o755)
    shutil.rmtree(real)


def test_an_unreadable_object_is_reported_and_the_run_goes_on(store, tmp_path):
    a = store.add_path(make_tree(tmp_path / "a", {"f": "alpha\n"})).path
    b = store.add_path(make_tree(tmp_path / "b", {"f": "beta\n"})).path
    obj = _unreadable_object(store, a)
    _break_tree(store, b)  # found after a's problem: the run did not stop there
    r = store.verify()
    kinds = sorted((p.path, p.kind) for p in r.problems)
    assert kinds == sorted([(a, "object-unreadable"), (b, "tree-missing")]) and not r.ok
    detail = next(p.detail for p in r.problems if p.kind == "object-unreadable")
    assert str(obj) in detail and "cannot read" in detail and "b'" not in detail
    # repair: a's tree is good, so its object is rebuilt; b's tree re-materialised
    r = store.verify(repair=True)
    assert r.ok and all(p.repaired for p in r.problems) and r.quarantined == ()
    assert obj.is_file() and store.verify().problems == ()


def test_cli_reports_an_unreadable_object_and_exits_1(store, tmp_path):
    a = store.add_path(make_tree(tmp_path / "a", {"f": "alpha\n"})).path
    b = store.add_path(make_tree(tmp_path / "b", {"f": "beta\n"})).path
    _unreadable_object(store, a)
    r = kiln("store", "verify", "--store", str(store.root))
    assert r.returncode == 1 and "Traceback" not in r.stderr
    assert f"{a}: object-unreadable:" in r.stderr and "checked 2 paths: 1 problem(s)" in r.stdout
    assert b not in r.stderr
    r = kiln("store", "verify", "--repair", "--store", str(store.root))
    assert r.returncode == 0 and "checked 2 paths: 0 problem(s), 1 repaired" in r.stdout, r.stderr


def test_a_failed_repair_is_that_paths_problem(store, tmp_path):
    a = store.add_path(make_tree(tmp_path / "a", {"f": "alpha\n"})).path
    b = store.add_path(make_tree(tmp_path / "b", {"f": "beta\n"})).path
    _unreadable_object(store, a)
    _break_tree(store, a)  # both bad: a needs quarantining...
    _break_tree(store, b)
    q = store.root / "quarantine"
    q.rmdir()
    q.write_text("in the way\n")  # ...which cannot happen
    r = store.verify(repair=True)
    assert not r.ok and r.quarantined == () and store.is_valid(a)
    failed = [p for p in r.problems if p.kind == "repair-failed"]
    assert [p.path for p in failed] == [a] and "cannot repair: Not a directory" in failed[0].detail
    assert all(not p.repaired for p in r.problems if p.path == a)
    assert all(p.repaired for p in r.problems if p.path == b) and store.real_path(b).is_dir()


def _quarantine_setup(store, tmp_path):
    lib = store.add_path(make_tree(tmp_path / "lib", {"lib": "library\n"})).path
    app = store.add_text("app.drv", f"uses {lib}\n".encode(), [lib]).path
    other = store.add_path(make_tree(tmp_path / "other", {"x": "1\n"})).path
    obj = store.object_path(lib)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"garbage")
    _break_tree(store, lib)
    return lib, app, other


def test_a_quarantine_that_breaks_referrers_is_a_failure(store, tmp_path):
    lib, app, other = _quarantine_setup(store, tmp_path)
    r = store.verify(repair=True)
    assert r.quarantined == (lib,) and r.incomplete == (app,) and not r.ok
    dangling = [p for p in r.problems if p.kind == "dangling-reference"]
    assert [(p.path, p.repaired) for p in dangling] == [(app, "")]
    assert lib in dangling[0].detail and "quarantined" in dangling[0].detail
    # the next run says the same thing
    assert [(p.path, p.kind) for p in store.verify().problems] == [(app, "dangling-reference")]


def test_cli_quarantine_summary_and_exit_status(store, tmp_path):
    lib, app, _ = _quarantine_setup(store, tmp_path)
    r = kiln("store", "verify", "--repair", "--store", str(store.root))
    assert r.returncode == 1, r.stdout
    assert (
        "checked 3 paths: 1 problem(s), 0 repaired; 1 path(s) quarantined (with their 2 problem(s)), "
        "1 referrer(s) now incomplete" in (r.stdout)
    )
    assert f"{app}: dangling-reference: references {lib}" in r.stderr


def test_cli_quarantine_without_referrers_json(store, tmp_path):
    lib = store.add_path(make_tree(tmp_path / "lib", {"lib": "library\n"})).path
    obj = store.object_path(lib)
    os.chmod(obj, 0o644)
    obj.write_bytes(b"garbage")
    _break_tree(store, lib)
    r = kiln("store", "verify", "--repair", "--json", "--store", str(store.root))
    d = json.loads(r.stdout)
    # nothing else is broken: the path is gone, but the store is consistent
    assert r.returncode == 0 and d["quarantined"] == [lib] and d["incomplete"] == [] and d["ok"]


def test_sigs_needed_must_not_be_negative(store):
    r = kiln("store", "verify", "--sigs-needed", "-1", "--store", str(store.root))
    assert r.returncode == 2 and "expected a whole number >= 0, found -1" in r.stderr
