"""POSIX ACLs and the store (``perms.strip_store_acls``, ``trees.metadata_problems``): a
store made under a directory with a default ACL inherits nothing from it (its trees
carry no ACL, which their NAR would not record; a mask granting write does not make
the store refuse itself), and ``verify`` reports an ACL found on a tree and repairs it.
Real ``setfacl``/``getfacl`` on the test's temporary directory."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from attestkit import signed_provenance
from storekit import make_tree

from kiln.registry.client import open_client
from kiln.registry.copy import to_store
from kiln.registry.push import push
from kiln.store import attestations
from kiln.store.localstore import LocalStore
from kiln.store.signing import SecretKey

#: the POSIX ACLs, as extended attributes
ACL_XATTRS = ("system.posix_acl_default", "system.posix_acl_access")

pytestmark = pytest.mark.skipif(
    shutil.which("setfacl") is None, reason="setfacl (the acl package) not installed"
)


def acl_parent(tmp_path: Path, spec: str) -> Path:
    """A directory with the default ACL ``spec``, or a skip where the file system has none."""
    d = tmp_path / "acl"
    d.mkdir()
    r = subprocess.run(["setfacl", "-d", "-m", spec, str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no POSIX ACLs on {tmp_path}: {r.stderr.strip()}")
    assert "system.posix_acl_default" in os.listxattr(d)
    return d


def with_acls(*tops: Path) -> list[str]:
    """Each entry under ``tops`` (the tops included) that carries a POSIX ACL."""
    out = []
    for top in tops:
        for p in [top, *top.rglob("*")]:
            if not p.is_symlink() and any(n in ACL_XATTRS for n in os.listxattr(p)):
                out.append(str(p))
    return out


def test_a_store_under_a_default_acl_stores_paths_and_copies_without_acls(tmp_path):
    parent = acl_parent(tmp_path, "u:nobody:r-x")
    sample = make_tree(tmp_path / "src", {"a.txt": "hello\n", "bin/run": "x:#!/bin/sh\n", "l": "->a.txt"})
    url = f"file://{tmp_path / 'reg'}"
    sk = SecretKey.generate("acl-test-1")
    with LocalStore.open(parent / "home") as s:
        p = s.add_path(sample, "src").path
        drv = s.add_text("x.drv", b"Derive()", []).path
        push(s, [p], lambda: open_client(url, store_dir=s.store_dir), sign_key=sk)
        # the store's own directories, and the trees and the text made in them
        assert with_acls(s.root) == []
        assert s.verify().ok
    with LocalStore.open(parent / "dst") as d:
        assert to_store(url, d, [p], [sk.public()], progress=False) == 1
        assert d.query(p) is not None
        assert with_acls(d.root) == []
        assert d.verify().ok
    assert drv.endswith(".drv")


def test_a_store_made_by_an_older_kiln_loses_its_acls_when_opened(tmp_path):
    LocalStore.open(tmp_path / "home").close()
    real_store = tmp_path / "home" / "kiln" / "store"
    for d in (tmp_path / "home", real_store):
        subprocess.run(["setfacl", "-m", "u:nobody:r-x", "-d", "-m", "u:nobody:r-x", str(d)], check=True)
    with LocalStore.open(tmp_path / "home") as s:
        p = s.add_path(make_tree(tmp_path / "src", {"f": "x\n"}), "src").path
        assert with_acls(s.root) == []
        assert s.is_valid(p)


def test_a_default_acl_granting_write_does_not_make_the_store_refuse_itself(tmp_path):
    # the mask rwx replaced the umask: attestations/ (made by a plain mkdir) came out 0775
    # and the next open refused "writable by group"
    parent = acl_parent(tmp_path, "u:nobody:rwx,m::rwx")
    sk = SecretKey.generate("acl-test-1")
    with LocalStore.open(parent / "home") as s:
        p = s.add_path(make_tree(tmp_path / "src", {"f": "x\n"}), "src").path
        attestations.write(s, p, "provenance", signed_provenance(s, p, sk))
        (s.root / "logs" / "aa").mkdir(parents=True)  # (as the build log writer does)
    with LocalStore.open(parent / "home") as s:  # refused before
        assert attestations.list(s, p) == ["provenance"]
        for d in (s.root, s.root / "attestations", s.root / "logs", s.root / "logs" / "aa"):
            assert not stat.S_IMODE(d.stat().st_mode) & 0o022, d
        assert with_acls(s.root) == []


def test_verify_reports_an_acl_on_a_tree_entry_and_repair_removes_it(store, tmp_path):
    p = store.add_path(make_tree(tmp_path / "src", {"sub/f": "x\n", "g": "y\n"}), "src").path
    f = store.real_path(p) / "sub" / "f"
    r = subprocess.run(["setfacl", "-m", "u:nobody:r--", str(f)], capture_output=True, text=True)
    if r.returncode != 0:
        pytest.skip(f"no POSIX ACLs here: {r.stderr.strip()}")
    # the NAR does not record it: only the metadata check can see it
    [prob] = store.verify().problems
    assert (
        prob.kind == "tree-metadata" and "sub/f" in prob.detail and "system.posix_acl_access" in prob.detail
    )
    assert store.verify(repair=True).ok
    assert store.verify().problems == ()
    assert with_acls(store.real_path(p)) == []
    assert f.read_text() == "x\n"
