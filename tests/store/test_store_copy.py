"""``registry.copy.to_store`` end to end into a local store: a closure from a ``file://``
registry goes through ``LocalStore.import_objects`` and brings the path's attestations."""

from __future__ import annotations

from attestkit import signed_provenance
from storekit import make_tree

from kiln.registry.client import open_client
from kiln.registry.copy import to_store
from kiln.registry.push import push
from kiln.store import attestations
from kiln.store.hashes import Hash
from kiln.store.localstore import LocalStore
from kiln.store.paths import make_output_path
from kiln.store.signing import SecretKey


def test_copy_a_closure_with_attestations(tmp_path):
    sk = SecretKey.generate("copy-test-1")
    src = LocalStore.open(tmp_path / "src")
    dst = LocalStore.open(tmp_path / "dst")
    try:
        dep = src.add_path(make_tree(tmp_path / "dep", {"lib/x": "dependency\n", "l": "->lib/x"}))
        app_path = str(make_output_path(Hash.sha256_of(b"app"), "out", "app", src.store_dir))
        tree = make_tree(tmp_path / "build" / "app", {"bin/app": f"x:#!/bin/sh\n# {dep.path}\n"})
        app = src.register_built(app_path, tree, [dep.path], None).path
        attestations.write(src, app, "provenance", signed_provenance(src, app, sk))
        url = f"file://{tmp_path / 'reg'}"
        push(src, [app], lambda: open_client(url, store_dir=src.store_dir), sign_key=sk)

        assert to_store(url, dst, [app], [sk.public()], progress=False) == 2
        for p in (dep.path, app):
            assert dst.query(p).nar_hash == src.query(p).nar_hash
        assert dst.query(app).references == (dep.path,)
        assert attestations.list(dst, app) == ["provenance"]
        rep = dst.verify()
        assert rep.ok and rep.stray_objects == ()
        assert to_store(url, dst, [app], [sk.public()], progress=False) == 0  # nothing left to do
    finally:
        src.close()
        dst.close()
