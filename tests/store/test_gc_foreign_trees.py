"""GC in a store another user (root) has written into, as ``sudo -E kiln build`` with the
user's ``KILN_HOME`` does: the user's GC deleted the rows of every dead path first, then
stopped at the first tree it could not move (EPERM), leaving trees unregistered and a
``tmp/gc-*`` directory behind, and every later GC failed at the same tree until a
``chown -R``. Now such a tree keeps its row (and its closure), is reported as kept, and
the rest is collected; nothing stays in ``tmp/gc-*``.

The user is real: GC runs in a user namespace (``unshare --map-user``) as an
unprivileged uid, for which the trees chowned to another uid here are another user's
(shown as the overflow uid), exactly as root's are for a user."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from storekit import make_tree

from kiln.store.localstore import LocalStore

pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root (to chown a tree to another uid)"),
    pytest.mark.skipif(shutil.which("unshare") is None, reason="needs util-linux unshare"),
]

GC = """
import json, os, sys
from pathlib import Path
from kiln.store.localstore import LocalStore

with LocalStore.open(Path(sys.argv[1])) as s:
    r = s.gc()
    print(json.dumps({"uid": os.geteuid(), "deleted": r.deleted, "stray": r.stray_trees, "kept": r.kept,
                      "tmp": sorted(os.listdir(s.tmp)), "valid": s.all_paths()}))
"""


def _gc_as_a_user(root: Path) -> dict:
    r = subprocess.run(
        ["unshare", "--user", "--map-user=1234", "--map-group=1234", sys.executable, "-c", GC, str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if r.returncode != 0 and "unshare" in r.stderr and "Operation not permitted" in r.stderr:
        pytest.skip("user namespaces are not available here")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["uid"] == 1234
    return out


def _chown(p: Path, uid: int = 4321) -> None:
    subprocess.run(["chown", "-hR", f"{uid}:{uid}", str(p)], check=True)


def test_gc_keeps_what_it_cannot_remove_and_collects_the_rest(tmp_path):
    root = tmp_path / "home"
    with LocalStore.open(root) as s:
        dep = s.add_path(make_tree(tmp_path / "dep", {"d": "dep"}))  # dead, referenced by `roots`
        drv = s.add_text("root-made.drv", b"derive", [dep.path])  # dead, the deriver of `roots`
        roots = s.register_built(  # dead, root's tree
            f"{s.store_dir}/{'3' * 32}-root-made", make_tree(tmp_path / "b", {"f": "x"}), [dep.path], drv.path
        )
        rootfile = s.add_text("root-file", b"a file root made", [])  # dead, root's, but only a file
        inner = s.add_path(make_tree(tmp_path / "inner", {"sub/f": "x"}))  # dead, a root-owned dir inside
        plain = s.add_path(make_tree(tmp_path / "plain", {"p": "plain"}))  # dead, the user's own
        live = s.add_path(make_tree(tmp_path / "live", {"l": "live"}))
        s.add_root("live", live.path)
        stray = s.real_store / ("0" * 32 + "-stray")  # unregistered, root's
        make_tree(stray, {"s/t": "stray"})
        _chown(s.real_path(roots.path))
        _chown(s.real_path(rootfile.path))  # (unlinked from the user's store dir all the same)
        _chown(s.real_path(inner.path) / "sub")
        _chown(stray)
    # a killed root writer's scratch dir: another user's too
    make_tree(root / "tmp" / "999999-0123456789ab", {"x/y": "scratch"})
    _chown(root / "tmp" / "999999-0123456789ab")

    first = _gc_as_a_user(root)
    assert first["deleted"] == sorted([plain.path, rootfile.path])
    assert sorted(first["valid"]) == sorted([dep.path, drv.path, roots.path, inner.path, live.path])
    kept = "\n".join(first["kept"])
    assert f"{roots.path}: owned by uid 65534" in kept and "its row is kept, with what it references" in kept
    assert f"{inner.path}: " in kept and "/sub in it is owned by uid 65534" in kept
    assert f"/kiln/store/{stray.name}: owned by uid 65534" in kept and "unregistered" in kept
    assert "999999-0123456789ab" in kept
    assert "as root: chown -R 1234 " in kept
    assert not any(t.startswith("gc-") for t in first["tmp"]), first["tmp"]
    assert not (root / "kiln" / "store" / plain.path.rsplit("/", 1)[1]).exists()

    # the next GC works too, and keeps the same; once given back, the paths go
    second = _gc_as_a_user(root)
    assert second["deleted"] == [] and sorted(second["valid"]) == sorted(first["valid"])
    assert sorted(k.split(":")[0] for k in second["kept"]) == sorted(k.split(":")[0] for k in first["kept"])
    _chown(root, 0)
    third = _gc_as_a_user(root)
    assert sorted(third["deleted"]) == sorted([dep.path, drv.path, roots.path, inner.path])
    assert third["kept"] == []
    assert third["stray"] == [f"/kiln/store/{stray.name}"] and third["valid"] == [live.path]
    with LocalStore.open(root) as s:
        assert s.verify().ok


def test_a_dry_run_says_the_same(tmp_path):
    root = tmp_path / "home"
    with LocalStore.open(root) as s:
        p = s.add_path(make_tree(tmp_path / "t", {"f": "x"}))
        q = s.add_path(make_tree(tmp_path / "u", {"f": "y"}))
        _chown(s.real_path(p.path))
    with LocalStore.open(root) as s:
        r = s.gc(dry_run=True)  # as root, which removes anything
        assert sorted(r.deleted) == sorted([p.path, q.path]) and r.kept == ()
    out = subprocess.run(
        ["unshare", "--user", "--map-user=1234", "--map-group=1234", sys.executable, "-c", DRY, str(root)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr
    deleted, kept = json.loads(out.stdout)
    assert deleted == [q.path] and len(kept) == 1 and kept[0].startswith(f"{p.path}: owned by uid 65534")
    with LocalStore.open(root) as s:
        assert sorted(s.all_paths()) == sorted([p.path, q.path])  # (a dry run)


DRY = """
import json, sys
from pathlib import Path
from kiln.store.localstore import LocalStore

with LocalStore.open(Path(sys.argv[1])) as s:
    r = s.gc(dry_run=True)
    print(json.dumps([r.deleted, r.kept]))
"""
