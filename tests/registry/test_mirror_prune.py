"""``kiln mirror sync --prune`` (``mirrorprune``): paths the source no longer lists leave
the mirror (narinfo first, then attestations, then the objects no narinfo names), never
an object a remaining narinfo names; without it a sync says how many there are."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from regkit import add_chain, add_tree, make_store, request

from kiln.registry import layout, mirrorprune
from kiln.registry.backends import DirSource
from kiln.registry.client import open_client
from kiln.registry.fsck import verify_dir
from kiln.registry.mirror import sync
from kiln.registry.publish import publish_index
from kiln.registry.push import push
from kiln.registry.storage import open_storage
from kiln.store import narinfo as ni
from kiln.store.hashes import Hash


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


@pytest.fixture
def source(tmp_path: Path, keys, kiln_server):
    """A served registry: a chain of 2, two paths of the same content (one object for
    both) and a big one; its index published."""
    store = make_store(tmp_path / "store")
    chain = add_chain(store, tmp_path, 2)
    twin1, twin2 = (add_tree(store, tmp_path, n, "same\n") for n in ("twin1", "twin2"))
    big = add_tree(store, tmp_path, "big", "data\n" * 50000)
    reg = tmp_path / "src"
    paths = [*chain, twin1, twin2, big]
    push(store, paths, lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    publish_index(open_storage(reg), keys.sk)
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    return store, paths, reg, srv.url


def _info(d: Path, path: str) -> ni.NarInfo:
    return ni.parse((d / layout.narinfo_key(_hp(path))).read_text(), "/kiln/store")


def _objects(d: Path, info: ni.NarInfo) -> list[Path]:
    return [d / layout.blob_key(info.file_hash), d / layout.nar_key(info.file_hash)]


def _unlist(reg: Path, keys, *paths: str) -> None:
    """Remove ``paths`` from the source and publish its index."""
    for p in paths:
        (reg / layout.narinfo_key(_hp(p))).unlink()
    publish_index(open_storage(reg), keys.sk)


def _age(d: Path, seconds: float = 2 * mirrorprune.YOUNG) -> None:
    """Make every object file of ``d`` look written ``seconds`` ago (a prune spares
    younger ones: an upload may be about to publish them)."""
    then = time.time() - seconds
    for f in [*d.glob("blobs/*"), *d.glob("nar/*")]:
        os.utime(f, (then, then))


def _cli(url: str, dst: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "kiln", "mirror", "sync", url, str(dst), *extra],
        capture_output=True,
        text=True,
    )


def test_prune_removes_what_the_source_no_longer_lists(source, keys, tmp_path, kiln_server) -> None:
    _store, paths, reg, url = source
    chain, twin1, twin2, big = paths[:2], paths[2], paths[3], paths[4]
    dst = tmp_path / "mirror"
    r = _cli(url, dst, "--root", str(reg / "index/root.json"))
    assert r.returncode == 0 and "note:" not in r.stderr, r.stderr
    twin, big_info = _info(dst, twin1), _info(dst, big)
    assert twin.file_hash == _info(dst, twin2).file_hash  # (one object, two narinfos)
    att = dst / f"{_hp(twin1)}.att"  # (an attestation the mirror holds for it)
    att.mkdir()
    (att / "provenance.dsse.json").write_text("{}")
    (att / "index.json").write_text('{"kinds": {}}')
    _unlist(reg, keys, twin1, big)
    # without --prune: synced, and the sync says what it keeps
    r = _cli(url, dst)
    assert r.returncode == 0, r.stderr
    assert "note: the mirror holds 2 path(s) its source no longer lists" in r.stderr and "--prune" in r.stderr
    assert (dst / layout.narinfo_key(_hp(big))).exists()
    assert sync(url, dst).stale == 2  # (remembered: an unchanged index and mirror read nothing)
    # pruned while a kiln serve serves the mirror: the paths are a miss at once
    srv = kiln_server("--dir", str(dst))
    assert request(f"{srv.url}/{_hp(twin1)}.narinfo")[0] == 200
    size = big_info.file_size
    _age(dst)
    r = _cli(url, dst, "--prune")
    assert r.returncode == 0, r.stderr
    assert f"pruned {twin1}\n" in r.stdout and f"pruned {big}\n" in r.stdout, r.stdout
    assert "pruned 2 path(s)" in r.stdout and "2 object file(s)" in r.stdout
    assert f"({size} bytes freed)" in r.stdout, r.stdout
    for p in (twin1, big):
        assert not (dst / layout.narinfo_key(_hp(p))).exists()
        assert request(f"{srv.url}/{_hp(p)}.narinfo")[0] == 404
    assert not att.exists()
    assert not any(p.exists() for p in _objects(dst, big_info))
    assert all(p.is_file() for p in _objects(dst, twin))  # twin2 still names it
    assert request(f"{srv.url}/{_hp(twin2)}.narinfo")[0] == 200
    assert request(f"{srv.url}/{layout.nar_key(twin.file_hash)}")[0] == 200
    rep = verify_dir(DirSource(dst), trusted=[keys.pk], sigs_needed=1, progress=False)
    assert rep.checked == 3 and rep.problems == ()
    assert {q.name for q in dst.glob("*.narinfo")} == {layout.narinfo_key(_hp(p)) for p in [*chain, twin2]}
    r = _cli(url, dst, "--prune")
    assert r.returncode == 0 and "pruned 0 path(s)" in r.stdout and "0 object file(s)" in r.stdout
    assert "note:" not in _cli(url, dst).stderr


def test_a_prune_cut_short_is_finished_by_the_next(source, keys, tmp_path, monkeypatch) -> None:
    """A narinfo goes before anything it names; what a prune cut short left (unpublished
    attestations and objects) is found by the next one, from DST as it is."""
    _store, paths, reg, url = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes())
    big = _info(dst, paths[4])
    att = dst / f"{_hp(paths[4])}.att"
    att.mkdir()
    (att / "index.json").write_text('{"kinds": {}}')
    _unlist(reg, keys, paths[4])

    def cut(storage):  # noqa: ANN001, ANN202
        raise KeyboardInterrupt  # (the process killed after the narinfos went)

    monkeypatch.setattr(mirrorprune, "_att_dirs", cut)
    with pytest.raises(KeyboardInterrupt):
        sync(url, dst, prune=True)
    assert not (dst / layout.narinfo_key(_hp(paths[4]))).exists()
    assert att.exists() and all(p.exists() for p in _objects(dst, big))
    monkeypatch.undo()
    _age(dst)
    rep = sync(url, dst, prune=True)
    assert rep.pruned is not None and rep.pruned.paths == () and rep.pruned.objects == 2
    assert not att.exists() and not any(p.exists() for p in _objects(dst, big))
    assert len(list(dst.glob("*.narinfo"))) == 4


def test_a_prune_spares_an_object_an_upload_may_be_about_to_publish(source, tmp_path) -> None:
    """A push uploads an object before the narinfo that names it: an unnamed object file
    written in the last hour is not pruned (a narinfo published after the prune would
    name a deleted object), and is counted; once older, a prune takes it."""
    _store, paths, reg, url = source
    dst = tmp_path / "mirror"
    sync(url, dst, root=(reg / "index/root.json").read_bytes())
    _age(dst)  # the mirror's objects are old; a push to it has just uploaded one more
    body = os.urandom(1000)
    uploaded = dst / layout.blob_key(Hash("sha256", hashlib.sha256(body).digest()))
    uploaded.write_bytes(body)
    rep = sync(url, dst, prune=True)
    assert rep.pruned is not None and rep.pruned.objects == 0 and rep.pruned.objects_young == 1
    assert uploaded.exists()
    _age(dst)  # an hour on, and still no narinfo names it: it goes
    rep = sync(url, dst, prune=True)
    assert rep.pruned is not None and rep.pruned.objects == 1 and rep.pruned.objects_young == 0
    assert not uploaded.exists() and len(list(dst.glob("*.narinfo"))) == 5
