"""``kiln mirror sync --trusted-key`` holds the narinfos a mirror already has to the keys
trusted now, not to those trusted when they were fetched.

Before, a narinfo the mirror held as the index lists it was checked with no key at all
("checked with its signatures when it was fetched"), and only when it was a candidate:
a mirror synced while the publisher's old key was trusted went on serving paths signed
by that key alone after a sync with ``--trusted-key NEW`` (``--full`` too), exit 0,
while a fresh mirror with the same flags refused them. Now a sync whose trusted keys
drop one the last sync had (``mirrorplan.must_recheck``) checks every held narinfo's
signatures (no download); one that fails is refused as a fetched one is (exit 1, the
mirror keeps its previous index), stays published unless ``--prune`` unpublishes it,
and the sync after the publisher re-signs and republishes its index goes through."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from regkit import add_chain, add_tree, make_store

from kiln.registry import layout, mirrorplan
from kiln.registry.client import open_client
from kiln.registry.mirror import MirrorError, sync
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.storage import open_storage
from kiln.store import narinfo as ni
from kiln.store.signing import valid_signers


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


@pytest.fixture
def source(tmp_path: Path, keys, kiln_server):
    """A served registry of 3 paths signed by ``keys`` (the publisher's old key) only."""
    store = make_store(tmp_path / "store")
    paths = add_chain(store, tmp_path, 2) + [add_tree(store, tmp_path, "big", "data\n" * 50000)]
    reg = tmp_path / "src"
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    return store, paths, reg, srv.url


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln", "mirror", "sync", *args], capture_output=True, text=True, timeout=120
    )


def test_held_narinfos_are_checked_against_the_keys_trusted_now(source, keys, other_keys, tmp_path) -> None:
    store, paths, reg, url = source
    old, new = keys, other_keys
    root = (reg / "index/root.json").read_bytes()
    dst = tmp_path / "mirror"
    rep = sync(url, dst, root=root, trusted=[old.pk])
    assert rep.narinfos_fetched == 3
    good_ts = (dst / "index/timestamp.json").read_bytes()
    held = {p: (dst / layout.narinfo_key(_hp(p))).read_bytes() for p in paths}
    # a fresh mirror with the new key refuses every path
    with pytest.raises(MirrorError, match="0 valid signature"):
        sync(url, tmp_path / "fresh", root=root, trusted=[new.pk])
    # so does the old mirror, incremental or full, and by the same exit status (1)
    with pytest.raises(MirrorError) as e:
        sync(url, dst, trusted=[new.pk])
    assert "failed for 3 path(s)" in str(e.value) and not e.value.transient
    assert "still published" in str(e.value) and "--prune" in str(e.value)
    r = _cli(url, str(dst), "--trusted-key", str(new.pk_file), "--full")
    assert r.returncode == 1 and all(p in r.stderr for p in paths), r.stderr
    assert "intruder-1" in r.stderr and "signatures by: kiln-test-1" in r.stderr, r.stderr
    assert not any(f"{p}: {p}:" in r.stderr for p in paths), r.stderr  # (each path named once a line)
    # the mirror keeps its previous state (no --prune: the paths stay published)
    assert (dst / "index/timestamp.json").read_bytes() == good_ts
    assert {p: (dst / layout.narinfo_key(_hp(p))).read_bytes() for p in paths} == held
    # trusting both keys passes (nothing dropped from what was checked), and a sync that
    # trusts a superset of the last sync's keys does not re-read the held narinfos
    rep = sync(url, dst, trusted=[old.pk, new.pk], full=True)
    assert rep.narinfos_fetched == 0
    assert mirrorplan.must_recheck(mirrorplan.load_record(open_storage(dst)), [old.pk, new.pk]) is False
    # --prune unpublishes the held paths that fail (narinfo only: objects stay, as for
    # a sync that failed) and the sync still fails
    with pytest.raises(MirrorError, match="unpublished"):
        sync(url, dst, trusted=[new.pk], prune=True)
    assert not any((dst / layout.narinfo_key(_hp(p))).exists() for p in paths)
    assert (dst / "index/timestamp.json").read_bytes() == good_ts
    # the publisher re-signs with the new key and republishes: the next sync goes through,
    # fetching the narinfos again (their objects are still there)
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=new.sk)
    publish_index(open_storage(reg), old.sk)
    r = _cli(url, str(dst), "--trusted-key", str(new.pk_file))
    assert r.returncode == 0, r.stderr
    assert "3 narinfos and 0 blobs" in r.stdout, r.stdout
    for p in paths:
        info = ni.parse((dst / layout.narinfo_key(_hp(p))).read_text(), store.store_dir)
        assert valid_signers(info, [new.pk]) == {"intruder-1"}


def test_a_held_narinfo_signed_by_the_new_key_is_kept(source, keys, other_keys, tmp_path) -> None:
    """Only the paths that fail are refused: one the publisher re-signed before the key
    change passes, and once the rest are re-signed the mirror needs no --prune."""
    store, paths, reg, url = source
    old, new = keys, other_keys
    push(store, paths[:1], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=new.sk)
    publish_index(open_storage(reg), old.sk)
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes(), trusted=[old.pk])
    with pytest.raises(MirrorError) as e:
        sync(url, dst, trusted=[new.pk])
    assert "failed for 2 path(s)" in str(e.value)
    assert paths[0] not in str(e.value) and all(p in str(e.value) for p in paths[1:])
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=new.sk)
    publish_index(open_storage(reg), old.sk)
    rep = sync(url, dst, trusted=[new.pk])
    assert rep.narinfos_fetched == 2 and rep.blobs_fetched == 0
    rep = sync(url, dst, trusted=[new.pk])  # checked under the new key: nothing to do
    assert (rep.narinfos_fetched, rep.blobs_fetched) == (0, 0)


def test_a_sync_that_lost_its_trusted_keys_says_so(source, keys, tmp_path) -> None:
    """A cron line that lost ``--trusted-key`` published unsigned paths with not a word."""
    _store, _paths, reg, url = source
    dst = tmp_path / "mirror"
    root = str(reg / "index/root.json")
    r = _cli(url, str(dst), "--root", root, "--trusted-key", str(keys.pk_file))
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    r = _cli(url, str(dst), "--root", root)
    assert r.returncode == 0, r.stderr
    assert (
        f"this sync requires no signature (no --trusted-key), where the last one required one by {keys.sk.name}"
        in r.stderr
    )
    r = _cli(url, str(dst), "--root", root)  # said once: the last sync required none
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
