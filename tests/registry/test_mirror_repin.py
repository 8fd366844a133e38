"""``kiln mirror sync --root`` after the first sync: the root given again is checked
against the one the mirror trusts (it was silently ignored), and ``--repin-root`` trusts
a new one for a source whose keys were replaced out of band (which needed deleting
``.kiln/mirror-state.json`` by hand)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from regkit import Keys, add_chain, make_store

from kiln.registry.client import open_client
from kiln.registry.mirror import MirrorUsageError, sync
from kiln.registry.publish import publish_index, rotate_root
from kiln.registry.push import push
from kiln.registry.storage import open_storage


def _source(tmp_path: Path, keys: Keys) -> Path:
    store = make_store(tmp_path / "store")
    paths = add_chain(store, tmp_path, 2)
    reg = tmp_path / "src"
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    return reg


def test_the_root_given_again_is_checked_and_a_new_one_needs_repin(tmp_path: Path, keys, kiln_server) -> None:
    reg = _source(tmp_path, keys)
    url = kiln_server("--dir", str(reg)).url
    dst = tmp_path / "mirror"
    first = tmp_path / "root-v1.json"
    shutil.copy(reg / "index/root.json", first)
    sync(url, dst, root=first.read_bytes())
    sync(url, dst, root=first.read_bytes())  # a cron line passes it every time: fine
    # a signed rotation: the first root, still passed, is older than the trusted one: fine
    new = Keys(tmp_path, "kiln-test-2")
    rotate_root(open_storage(reg), keys.sk, new.sk)
    publish_index(open_storage(reg), new.sk)
    sync(url, dst, root=first.read_bytes())
    second = (reg / "index/2.root.json").read_bytes()
    sync(url, dst, root=second)  # the rotated root itself: fine
    # a root of the older version that is not the source's (DST holds the source's
    # index/1.root.json): refused, as a same-version one is (it was accepted silently)
    foreign_reg = tmp_path / "foreign"
    foreign_reg.mkdir()
    publish_index(open_storage(foreign_reg), Keys(tmp_path, "kiln-test-4").sk)
    with pytest.raises(MirrorUsageError, match=r"trusts another root of version 1 \(sha256 .* given "):
        sync(url, dst, root=(foreign_reg / "index/root.json").read_bytes())
    # the source's own first root, spaced otherwise (what is signed counts): fine
    sync(url, dst, root=first.read_bytes().replace(b'{"', b'{ "', 1))

    # the source's index is made again with other keys, no signed rotation: version 1 again
    shutil.rmtree(reg / "index")
    other = Keys(tmp_path, "kiln-test-3")
    publish_index(open_storage(reg), other.sk)
    replaced = tmp_path / "root-new.json"
    shutil.copy(reg / "index/root.json", replaced)
    rotate_root(open_storage(reg), other.sk, other.sk)  # (its version 2, as DST's)
    publish_index(open_storage(reg), other.sk)
    same_version = (reg / "index/2.root.json").read_bytes()
    with pytest.raises(
        MirrorUsageError, match=r"trusts another root of version 2 \(sha256 .* given .*--repin-root"
    ):
        sync(url, dst, root=same_version)
    state = (dst / ".kiln/mirror-state.json").read_bytes()
    # from the command line: a usage error (2), DST untouched
    cmd = [sys.executable, "-m", "kiln", "mirror", "sync", url, str(dst)]
    tmp_path.joinpath("same.json").write_bytes(same_version)
    proc = subprocess.run([*cmd, "--root", str(tmp_path / "same.json")], capture_output=True, text=True)
    assert proc.returncode == 2 and "--repin-root" in proc.stderr, proc.stderr
    assert (dst / ".kiln/mirror-state.json").read_bytes() == state
    # re-pinned to the new first root: the chain walk reaches version 2 and DST serves it
    proc = subprocess.run([*cmd, "--root", str(replaced), "--repin-root"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert "re-pinned to the given root; versions seen forgotten" in proc.stderr
    assert (dst / "index/root.json").read_bytes() == same_version
    sync(url, dst, root=replaced.read_bytes())  # and passing it again is fine from now on


def test_a_root_newer_than_the_rotations_reach_is_refused(tmp_path: Path, keys, kiln_server) -> None:
    """A --root of a version the source's signed chain does not reach (a root the source
    never published) is not trusted silently."""
    reg = _source(tmp_path, keys)
    url = kiln_server("--dir", str(reg)).url
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes())
    elsewhere = tmp_path / "elsewhere"
    shutil.copytree(reg, elsewhere)
    new = Keys(tmp_path, "kiln-test-2")
    rotate_root(open_storage(elsewhere), keys.sk, new.sk)  # (version 2, never published by SRC)
    with pytest.raises(MirrorUsageError, match="trusts root version 1, the newest the source's signed"):
        sync(url, dst, root=(elsewhere / "index/2.root.json").read_bytes())


def test_repin_needs_a_root() -> None:
    with pytest.raises(MirrorUsageError, match="--repin-root needs the root to trust"):
        sync("http://127.0.0.1:9", Path("/nonexistent"), repin_root=True)


def test_a_first_sync_into_a_registry_with_its_own_index_is_refused(tmp_path: Path, keys) -> None:
    """SRC and DST swapped on a live registry: the sync replaced DST's root (what its
    clients pin) and index with the source's, exit 0. Now a usage error, DST untouched."""
    src = _source(tmp_path, keys)
    other = Keys(tmp_path, "kiln-test-5")
    store = make_store(tmp_path / "store2")
    live = tmp_path / "live"
    push(store, add_chain(store, tmp_path / "x", 1), lambda: open_client(f"file://{live}", store_dir=store.store_dir), sign_key=other.sk)  # fmt: skip
    publish_index(open_storage(live), other.sk)
    before = {p: p.read_bytes() for p in (live / "index").iterdir() if p.is_file()}
    cmd = [sys.executable, "-m", "kiln", "mirror", "sync", f"file://{src}", str(live)]
    proc = subprocess.run([*cmd, "--root", str(src / "index/root.json")], capture_output=True, text=True)
    assert proc.returncode == 2, proc.stderr
    assert "is a registry with its own signed index" in proc.stderr and "swapped" in proc.stderr, proc.stderr
    assert {p: p.read_bytes() for p in (live / "index").iterdir() if p.is_file()} == before
    assert not (live / ".kiln/mirror-state.json").exists()
