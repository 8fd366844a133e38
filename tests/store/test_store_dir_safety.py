"""A store dir must never map the materialised trees onto the store root, a parent of it
or one of its own entries: GC deletes whatever sits in the store dir that is not
registered, so ``/kiln/..`` would delete the store and ``/objects`` every object."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from clikit import kiln
from storekit import make_tree

from kiln.store.errors import FormatError, KilnError, StoreError
from kiln.store.localstore import _SUBDIRS, LocalStore
from kiln.store.paths import STORE_ROOT_ENTRIES, check_store_dir

BAD = ["/", "/..", "/kiln/..", "/kiln/./store", "/kiln//store", "/kiln/store/", "kiln/store", ""]
# written one per line into narinfos, nix-cache-info and build environments: a newline
# would inject a field (``StorePath: /ki`` + ``StorePath: /evil``)
ODD = ["/ki\nStorePath: /evil", "/kiln\t/store", "/x\udcff", "/kiln/\x00", "/kiln/\u00a0"]
CLASHING = ["/objects", "/tmp/store", "/gcroots", "/locks", "/config.json", "/db.sqlite", "/gc.lock"]


@pytest.mark.parametrize("store_dir", BAD + CLASHING + ODD)
def test_bad_store_dirs_are_refused_with_the_reason(store_dir):
    with pytest.raises(FormatError) as e:
        check_store_dir(store_dir, local=True)
    msg = str(e.value)
    assert f"invalid store dir {store_dir!r}" in msg and "expected an absolute path like /kiln/store" in msg


def test_good_store_dirs_pass_and_the_layout_is_reserved():
    for d in ("/kiln/store", "/nix/store", "/a", "/opt/x.y/store", "/opt/jürgen/store", "/my store"):
        assert check_store_dir(d) == d
    assert set(_SUBDIRS) <= STORE_ROOT_ENTRIES
    assert "clashes with the store root's own entries" in _message("/objects")
    # only a local store's layout is at stake: another store's dir (a registry's) may
    assert check_store_dir("/tmp/store") == "/tmp/store"
    assert "'..' component" in _message("/kiln/..")


def _message(store_dir: str) -> str:
    with pytest.raises(FormatError) as e:
        check_store_dir(store_dir, local=True)
    return str(e.value)


@pytest.mark.parametrize("store_dir", ["/kiln/..", "/..", "/objects", "/ki\nStorePath: /evil"])
def test_init_refuses_and_creates_nothing(tmp_path, store_dir):
    root = tmp_path / "st"
    r = kiln("store", "init", "--store", str(root), "--store-dir", store_dir)
    assert r.returncode == 1 and r.stderr.startswith("error: invalid store dir"), r.stderr
    assert "Traceback" not in r.stderr
    assert not root.exists()


@pytest.mark.parametrize("store_dir", ["/kiln/..", "/..", "/objects", "relative", "/kiln/../etc"])
def test_a_hand_edited_config_is_validated_and_gc_deletes_nothing(tmp_path, store_dir):
    root = tmp_path / "st"
    with LocalStore.open(root) as s:
        p = s.add_path(make_tree(tmp_path / "src", {"f": "data\n"})).path
        s.add_root("keep", p)
    (root / "config.json").write_text(json.dumps({"store_dir": store_dir, "version": 1}))
    before = sorted(os.listdir(root))
    with pytest.raises(KilnError, match="invalid store dir"):
        LocalStore.open(root)
    r = kiln("store", "gc", "--store", str(root))
    assert r.returncode == 1 and f"store config {root / 'config.json'}: invalid store dir" in r.stderr
    assert sorted(os.listdir(root)) == before and (root / "db.sqlite").exists()
    assert len([o for sub in (root / "objects").iterdir() for o in sub.iterdir()]) == 1


def test_gc_deletes_only_entries_named_like_store_paths(store, tmp_path):
    p = store.add_path(make_tree(tmp_path / "a", {"x": "1"})).path
    store.add_root("a", p)
    stray = store.real_store / ("5" * 32 + "-stray")
    stray.mkdir()
    # not store path bases: whoever put them there, GC has no business deleting them
    others = [store.real_store / "notes.txt", store.real_store / "some-dir", store.real_store / ("5" * 32)]
    others[0].write_text("mine\n")
    others[1].mkdir()
    others[2].write_text("short\n")
    v = store.verify()
    assert v.ok and v.stray_trees == (f"/kiln/store/{stray.name}",)
    r = store.gc()
    assert r.stray_trees == (f"/kiln/store/{stray.name}",) and not stray.exists()
    assert all(o.exists() for o in others) and store.is_valid(p)


def test_a_malformed_config_is_a_clear_error(tmp_path: Path):
    root = tmp_path / "st"
    LocalStore.open(root).close()
    for text, found in (("[]", "found a JSON list"), ('"x"', "found a JSON str"), ("{}", "found None")):
        (root / "config.json").write_text(text)
        r = kiln("store", "verify", "--store", str(root))
        assert r.returncode == 1 and "Traceback" not in r.stderr and "internal error" not in r.stderr
        assert str(root / "config.json") in r.stderr and found in r.stderr, r.stderr


@pytest.mark.parametrize("store_dir", ["/a b/store", "/k:s/store"])
def test_a_new_store_refuses_a_store_dir_builds_cannot_pass(tmp_path, store_dir):
    """Builds pass store paths in whitespace-separated lists and in PATH: a store made
    with a space or a ':' in its store dir could not build its toolchain."""
    with pytest.raises(StoreError, match="cannot make a store with store dir"):
        LocalStore.open(tmp_path / "s", store_dir=store_dir)
    assert not (tmp_path / "s" / "config.json").exists()


def test_a_later_kilns_config_version_is_refused_before_anything_is_touched(tmp_path: Path):
    """``config.json``'s ``version`` was written and never read: a store a later kiln
    laid out otherwise (objects named by NAR hash, say) was verified, repaired and
    collected as this kiln knows stores."""
    root = tmp_path / "st"
    with LocalStore.open(root) as s:
        s.add_path(make_tree(tmp_path / "src", {"f": "data\n"}))
    (root / "config.json").write_text(json.dumps({"store_dir": "/kiln/store", "version": 99}))
    before = sorted(os.listdir(root))
    for args in (("store", "gc"), ("store", "verify", "--repair")):
        r = kiln(*args, "--store", str(root))
        assert r.returncode == 1 and "has version 99" in r.stderr and "upgrade kiln" in r.stderr, r.stderr
    assert sorted(os.listdir(root)) == before
    (root / "config.json").write_text(json.dumps({"store_dir": "/kiln/store", "version": 1}))
    assert kiln("store", "verify", "--store", str(root)).returncode == 0
