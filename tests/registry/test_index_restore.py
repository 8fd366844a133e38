"""A registry restored from a backup publishes index versions its mirrors and clients
already saw, which they refuse as a rollback; ``publish_index(min_version=N)`` (``kiln
registry publish-index --min-version N``) publishes above them, and they follow again."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from regkit import add_tree, kiln, make_store

from kiln.registry.client import open_client
from kiln.registry.mirror import sync
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.storage import open_storage
from kiln.store.errors import KilnError


def test_a_restored_registry_publishes_above_the_versions_seen(tmp_path: Path, keys, kiln_server) -> None:
    store = make_store(tmp_path / "store")
    reg, backup, mirror = tmp_path / "reg", tmp_path / "backup", tmp_path / "mirror"

    def add(name: str) -> None:
        p = add_tree(store, tmp_path, name, f"{name}\n")
        push(store, [p], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
        publish_index(open_storage(reg), keys.sk)

    add("one")  # index v1, backed up
    shutil.copytree(reg, backup, symlinks=True)
    add("two")
    add("three")  # v3, which the mirror sees
    root = (reg / "index/root.json").read_bytes()
    srv = kiln_server("--dir", str(reg))
    assert sync(srv.url, mirror, root=root).index_version == 3
    srv.stop()

    shutil.rmtree(reg)  # the primary's disk is lost; the backup is restored
    shutil.copytree(backup, reg, symlinks=True)
    srv = kiln_server("--dir", str(reg))
    assert publish_index(open_storage(reg), keys.sk).timestamp_version == 2  # (a push would do this)
    with pytest.raises(KilnError, match="rollback|lower than|older"):
        sync(srv.url, mirror)

    r = kiln("registry", "publish-index", "--dir", str(reg), "--key", str(keys.sk_file), "--min-version", "4")
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("index version 4, timestamp version 4 "), r.stdout
    rep = sync(srv.url, mirror)
    assert rep.index_version == 4 and rep.paths == 1  # the mirror follows the restored registry
    # later publications go on from there
    assert publish_index(open_storage(reg), keys.sk).timestamp_version == 5
