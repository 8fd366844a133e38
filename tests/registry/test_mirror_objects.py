"""The objects of a mirror (``mirrorobjects``): a good object (it hashes to its name) is
never deleted or replaced for what an unsigned narinfo says about it; a bad one is
replaced by a verified download renamed over it; a missing, truncated or (``rehash``)
rotted one is fetched again by the sync that checks it, ``full`` checking every one."""

from __future__ import annotations

import hashlib
import time
from pathlib import Path

import pytest
from regkit import add_chain, add_tree, make_store

from kiln.registry import dirstamps, layout
from kiln.registry.backends import DirSource
from kiln.registry.client import open_client
from kiln.registry.fsck import verify_dir
from kiln.registry.mirror import MirrorError, sync
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.storage import open_storage
from kiln.store import narinfo as ni


@pytest.fixture
def source(tmp_path: Path, keys, kiln_server):
    """A served registry with 4 paths (the last one big) and a published index."""
    store = make_store(tmp_path / "store")
    paths = add_chain(store, tmp_path, 3) + [add_tree(store, tmp_path, "big", "data\n" * 50000)]
    reg = tmp_path / "src"
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    return store, paths, reg, srv.url


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


def _info(d: Path, path: str, store_dir: str = "/kiln/store") -> ni.NarInfo:
    return ni.parse((d / layout.narinfo_key(_hp(path))).read_text(), store_dir)


def _objects(d: Path, info: ni.NarInfo) -> list[Path]:
    return [d / layout.blob_key(info.file_hash), d / layout.nar_key(info.file_hash)]


def _intact(d: Path, info: ni.NarInfo) -> bool:
    return all(
        p.is_file() and hashlib.sha256(p.read_bytes()).digest() == info.file_hash.digest
        for p in _objects(d, info)
    )


def _clean(d: Path, keys, n: int) -> None:
    rep = verify_dir(DirSource(d), trusted=[keys.pk], sigs_needed=1, progress=False)
    assert rep.checked == n and rep.problems == (), rep.problems


def test_a_narinfo_with_another_filesize_fails_its_path_and_the_good_object_stays(
    source, keys, tmp_path
) -> None:
    """FileSize is not signed: an unsigned mirror (no --trusted-key) of a source whose
    narinfo says another size must not delete the object that published narinfos name
    (the sync once did, and nothing ever fetched it again once the source was undone)."""
    _store, paths, reg, url = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes())
    good = _info(dst, paths[-1])
    nfile = reg / layout.narinfo_key(_hp(paths[-1]))
    orig = nfile.read_bytes()
    nfile.write_bytes(
        orig.replace(f"FileSize: {good.file_size}\n".encode(), f"FileSize: {good.file_size + 1}\n".encode())
    )
    publish_index(open_storage(reg), keys.sk)
    with pytest.raises(MirrorError) as e:
        sync(url, dst)
    assert _intact(dst, good)  # the good object is still there, both names
    msg = str(e.value)
    assert "failed for 1 path(s)" in msg and paths[-1] in msg
    assert f"FileSize {good.file_size + 1}" in msg and f"has {good.file_size} bytes" in msg, msg
    assert "the object is kept" in msg
    # the source is undone: the sync goes through, with nothing to fetch
    nfile.write_bytes(orig)
    publish_index(open_storage(reg), keys.sk)
    rep = sync(url, dst)
    assert rep.blobs_fetched == 0 and _intact(dst, good)
    _clean(dst, keys, 4)


def test_a_bad_object_is_replaced_by_a_verified_download_renamed_over_it(
    source, keys, tmp_path, monkeypatch
) -> None:
    """An object whose bytes do not hash to its name is replaced, but only by a verified
    download, and by a rename over it: it is never deleted first (no moment without it)."""
    _store, paths, reg, url = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    info = _info(dst, paths[-1])
    blob, nar = _objects(dst, info)
    with open(blob, "ab") as f:  # (a hard link of nar: both are bad)
        f.write(b"junk")
    (dst / layout.narinfo_key(_hp(paths[-1]))).unlink()  # (as verify --delete-bad would)
    seen = []
    real = DirSource.commit_object

    def commit_object(self, tmp, got, durable=None):  # noqa: ANN001, ANN202
        seen.append((blob.exists(), nar.exists()))  # the bad files, still in place
        return real(self, tmp, got, durable)

    monkeypatch.setattr(DirSource, "commit_object", commit_object)
    rep = sync(url, dst)
    assert seen == [(True, True)]
    assert (rep.narinfos_fetched, rep.blobs_fetched, rep.objects_repaired) == (1, 1, 1)
    assert _intact(dst, info) and blob.stat().st_ino == nar.stat().st_ino
    _clean(dst, keys, 4)


def test_a_sync_fetches_again_the_object_of_a_narinfo_it_holds(source, keys, tmp_path) -> None:
    """A candidate path whose narinfo DST holds as the index lists it still has its
    object checked: a lost one is fetched again (the paths the first sync wrote are
    candidates of the next one)."""
    _store, paths, reg, url = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    info = _info(dst, paths[0])
    for p in _objects(dst, info):
        p.unlink()
    rep = sync(url, dst)
    assert (rep.narinfos_fetched, rep.blobs_fetched, rep.objects_repaired) == (0, 1, 1)
    assert _intact(dst, info)
    _clean(dst, keys, 4)


def test_a_full_sync_checks_every_object_and_rehash_reads_them(source, keys, tmp_path, monkeypatch) -> None:
    """``full``: every published narinfo's object is checked, present and at its size;
    ``rehash`` also reads each one, which finds rot that kept the size."""
    _store, paths, reg, url = source
    monkeypatch.setattr(dirstamps, "MARGIN_NS", 30_000_000)
    dst = tmp_path / "mirror"
    root = (reg / "index/root.json").read_bytes()
    sync(url, dst, root=root, trusted=[keys.pk])
    time.sleep(0.08)
    sync(url, dst)  # (stamps what the first sync wrote, settled: no candidate after this)
    time.sleep(0.08)
    lost, cut, rot = (_info(dst, p) for p in (paths[0], paths[1], paths[-1]))
    for p in _objects(dst, lost):
        p.unlink()
    data = _objects(dst, cut)[0].read_bytes()
    _objects(dst, cut)[0].write_bytes(data[:-3])  # (in place: both names)
    with open(_objects(dst, rot)[0], "r+b") as f:
        f.seek(100)
        byte = f.read(1)
        f.seek(100)
        f.write(bytes([byte[0] ^ 1]))
    assert sync(url, dst).blobs_fetched == 0  # an unchanged index checks nothing: that is what makes it cheap
    rep = sync(url, dst, full=True)
    assert (rep.narinfos_fetched, rep.blobs_fetched, rep.objects_repaired) == (0, 2, 2)
    assert _intact(dst, lost) and _intact(dst, cut) and not _intact(dst, rot)
    rep = sync(url, dst, rehash=True)
    assert (rep.blobs_fetched, rep.objects_repaired) == (1, 1)
    assert _intact(dst, rot)
    _clean(dst, keys, 4)
    assert sync(url, dst, rehash=True).blobs_fetched == 0


def test_a_narinfo_rewritten_after_the_index_says_what_to_do(source, keys, other_keys, tmp_path) -> None:
    """A narinfo the source rewrote after its last index publish (a signature merge by
    ``kiln push``) does not hash as the index says: the error names that cause and its
    cure, not only tampering."""
    store, paths, reg, url = source
    push(
        store,
        paths[:1],
        lambda: open_client(f"file://{reg}", store_dir=store.store_dir),
        sign_key=other_keys.sk,
    )
    with pytest.raises(MirrorError) as e:
        sync(url, tmp_path / "m", root=(reg / "index/root.json").read_bytes(), trusted=[keys.pk])
    msg = str(e.value)
    assert paths[0] in msg and "failed for 1 path(s)" in msg
    assert "rewrote it after its last index publish" in msg and "kiln registry publish-index" in msg, msg
    assert "tampered with" in msg
    publish_index(open_storage(reg), keys.sk)
    assert sync(url, tmp_path / "m", root=(reg / "index/root.json").read_bytes()).narinfos_fetched == 4
