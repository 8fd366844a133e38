"""Attestations travel in batches (``POST /attestation-batch``, ``POST
/attestation-upload-batch``): push, copy into a store, copy between registries and
(with ``attest_wire.fetch_indexed``) mirror sync make one request per batch, not one per
file, counted in a real ``kiln serve``'s access log; clients fall back to one request
per file where the server lacks the endpoints; local writes take one group sync."""

from __future__ import annotations

import asyncio
import os
from pathlib import Path

import pytest
from attkit import OldServer, Registry, attested_store, hp, kiln
from regkit import make_store

from kiln.registry.attest_fetch import fetch_attestations
from kiln.registry.attest_transfer import push_attestations
from kiln.registry.dirclient import DirClient
from kiln.registry.httpclient import HttpClient
from kiln.registry.push import push
from kiln.store import attestations, objects

N = 50
UP = ("POST", "/attestation-upload-batch")
DOWN = ("POST", "/attestation-batch")


def _push(store, reg_url: str, token: str, keys, paths: list[str]) -> str:  # noqa: ANN001
    r = kiln("push", *paths, "--to", reg_url, "--token", token, "--sign-key", str(keys.sk_file), "--store", str(store.root))  # fmt: skip
    assert r.returncode == 0, r.stderr
    return r.stdout


def _copy_into(url: str, root: Path, keys, paths: list[str]) -> None:  # noqa: ANN001
    r = kiln("copy", "--from", url, "--to", "store", "--store", str(root), "--trusted-key", str(keys.pk_file), *paths)  # fmt: skip
    assert r.returncode == 0, r.stderr


def _same_attestations(store, other, paths: list[str]) -> None:  # noqa: ANN001
    for p in paths:
        assert attestations.read_all(other, p) == attestations.read_all(store, p), p


def _reg_file(reg: Path, path: str) -> Path:
    return reg / f"{hp(path)}.att" / "provenance.dsse.json"


def test_push_copy_and_relay_send_attestations_in_batches(tmp_path, keys, kiln_server) -> None:
    store, paths = attested_store(tmp_path / "store", tmp_path, keys, N)
    reg = Registry(tmp_path, "reg", keys, kiln_server)
    assert f"{N} attestations" in _push(store, reg.url, reg.token, keys, paths)
    c = reg.counts()
    assert c[("PUT", "att")] == 0 and c[UP] == 1, c
    for p in paths:
        local = store.root / "attestations" / hp(p) / "provenance.dsse.json"
        assert _reg_file(reg.dir, p).read_bytes() == local.read_bytes()
    # into a fresh store: one batch request, not N GETs
    _copy_into(reg.url, tmp_path / "other", keys, paths)
    c = reg.counts()
    assert c[("GET", "att")] == 0 and c[DOWN] == 1, c
    _same_attestations(store, make_store(tmp_path / "other"), paths)
    # between two registries: a batch from one, a batch to the other
    reg2 = Registry(tmp_path, "reg2", keys, kiln_server)
    r = kiln("copy", "--from", reg.url, "--to", reg2.url, "--token", reg2.token, "--trusted-key", str(keys.pk_file), *paths)  # fmt: skip
    assert r.returncode == 0, r.stderr
    c, c2 = reg.counts(), reg2.counts()
    assert c[("GET", "att")] == 0 and c[DOWN] == 1, c
    assert c2[("PUT", "att")] == 0 and c2[UP] == 1, c2
    for p in paths:
        assert _reg_file(reg2.dir, p).read_bytes() == _reg_file(reg.dir, p).read_bytes()
    # nothing new: nothing is sent again
    assert "0 attestations" in _push(store, reg.url, reg.token, keys, paths)
    assert reg.counts()[UP] == 0


def test_mirror_with_fetch_indexed_batches(tmp_path, keys, kiln_server, monkeypatch) -> None:
    """``attest_wire.fetch_indexed`` is a drop-in for ``mirror._fetch_attestations`` (the
    call-site change the mirror needs): one batch request instead of N GETs."""
    from kiln.registry import attest_wire, mirror

    store, paths = attested_store(tmp_path / "store", tmp_path, keys, N)
    reg = Registry(tmp_path, "reg", keys, kiln_server, "--index-key", str(keys.sk_file))
    _push(store, reg.url, reg.token, keys, paths)
    reg.counts()
    # (until mirror.py calls it itself)
    monkeypatch.setattr(mirror, "_fetch_attestations", attest_wire.fetch_indexed, raising=False)
    root = (reg.dir / "index" / "root.json").read_bytes()
    rep = asyncio.run(mirror.sync_async(reg.url, tmp_path / "m", root=root, progress=False))
    assert rep.attestations_fetched == N
    c = reg.counts()
    assert c[("GET", "att")] == 0 and c[DOWN] == 1, c
    for p in paths:
        assert _reg_file(tmp_path / "m", p).read_bytes() == _reg_file(reg.dir, p).read_bytes()
    # a file that no longer matches the signed index fails the sync, as before
    bad = _reg_file(reg.dir, paths[3])
    bad.write_bytes(bad.read_bytes().replace(b'"payload":"', b'"payload":"ey', 1))
    with pytest.raises(mirror.MirrorError, match="signed index"):
        asyncio.run(mirror.sync_async(reg.url, tmp_path / "m2", root=root, progress=False))


def test_clients_fall_back_where_the_server_lacks_the_endpoints(
    tmp_path, keys, kiln_server, nginx_server
) -> None:
    store, paths = attested_store(tmp_path / "store", tmp_path, keys, 12)
    reg = Registry(tmp_path, "reg", keys, kiln_server)
    old = OldServer(reg.url)
    try:
        assert "12 attestations" in _push(store, old.url, reg.token, keys, paths)
        assert old.seen[UP] == 1 and old.seen[("PUT", "att")] == 12, old.seen  # one try, then one each
        for p in paths:
            assert _reg_file(reg.dir, p).is_file()
        _copy_into(old.url, tmp_path / "other", keys, paths)
        assert old.seen[DOWN] == 1 and old.seen[("GET", "att")] == 12, old.seen
        _same_attestations(store, make_store(tmp_path / "other"), paths)
    finally:
        old.stop()
    # a static server (nginx: POST is 404/405 there)
    ng = nginx_server(reg.dir)
    _copy_into(ng.url, tmp_path / "other2", keys, paths)
    _same_attestations(store, make_store(tmp_path / "other2"), paths)


def test_fetching_into_a_store_takes_one_group_sync(tmp_path, keys, kiln_server, monkeypatch) -> None:
    """N attestations fetched into a store: two file-system barriers in all, not two
    fsyncs each (``store.attestgroup``)."""
    store, paths = attested_store(tmp_path / "store", tmp_path, keys, N)
    reg = Registry(tmp_path, "reg", keys, kiln_server)
    _push(store, reg.url, reg.token, keys, paths)
    other = make_store(tmp_path / "other")
    for p in paths:
        with open(store.object_path(p), "rb") as f:
            other.import_object(store.query(p), f)
    fsyncs, syncfs = [], []
    real_fsync, real_syncfs = os.fsync, objects.sync_filesystem
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(objects, "sync_filesystem", lambda d: (syncfs.append(d), real_syncfs(d))[1])
    if Path(objects.__file__).with_name("attestgroup.py").exists():
        monkeypatch.setattr("kiln.store.attestgroup.sync_filesystem", objects.sync_filesystem)

    async def run() -> int:
        async with HttpClient(reg.url) as c:
            return await fetch_attestations(c, other, paths, trusted=[keys.pk])

    assert asyncio.run(run()) == N
    assert len(fsyncs) == 0 and len(syncfs) == 2, (len(fsyncs), len(syncfs))
    _same_attestations(store, other, paths)
    assert not list((other.root / "attestations").rglob("*.tmp"))
    assert asyncio.run(run()) == 0  # already there


def test_push_to_a_directory_admits_in_one_barrier(tmp_path, keys, monkeypatch) -> None:
    """``file://`` pushes admit with ``attest_batch.admit_many`` too: one barrier, no
    fsync per file and per listing."""
    from kiln.registry.storage import FileStorage

    store, paths = attested_store(tmp_path / "store", tmp_path, keys, N)
    reg = tmp_path / "reg"
    atts = store.root / "attestations"
    atts.rename(tmp_path / "aside")  # the narinfos first, without their attestations
    push(store, paths, lambda: DirClient(f"file://{reg}"), sign_key=keys.sk, progress=False)
    (tmp_path / "aside").rename(atts)
    fsyncs, barriers = [], []
    real_fsync, real_barrier = os.fsync, FileStorage.barrier
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    monkeypatch.setattr(FileStorage, "barrier", lambda self: (barriers.append(1), real_barrier(self))[1])

    async def run() -> tuple[int, list[str]]:
        return await push_attestations(DirClient(f"file://{reg}"), store, paths)

    assert asyncio.run(run()) == (N, [])
    assert len(fsyncs) == 0 and len(barriers) == 1, (len(fsyncs), len(barriers))
    for p in paths:
        assert _reg_file(reg, p).is_file()
    assert not list((reg / ".kiln" / "tmp").iterdir())


def test_a_store_backed_server_answers_attestation_batches(tmp_path, keys, kiln_server) -> None:
    from attkit import log_counts

    store, paths = attested_store(tmp_path / "store", tmp_path, keys, 12)
    log = tmp_path / "access.log"
    srv = kiln_server("--store", str(store.root), "--sign-key", str(keys.sk_file), "--access-log", str(log))
    _copy_into(srv.url, tmp_path / "other", keys, paths)
    c = log_counts(log)
    assert c[("GET", "att")] == 0 and c[DOWN] == 1, c
    _same_attestations(store, make_store(tmp_path / "other"), paths)


def test_place_many_for_the_mirror(tmp_path, keys, monkeypatch) -> None:
    """``attest_batch.place_many`` (the mirror's publishing of verified files): over what
    is stored, with rebuilt listings, one barrier and no fsync per file or listing."""
    import json
    import time

    from attkit import provenance

    from kiln.registry.attest_batch import place_many, staged_many
    from kiln.registry.storage import FileStorage

    store, paths = attested_store(tmp_path / "store", tmp_path, keys, 8)
    reg = tmp_path / "reg"
    push(store, paths, lambda: DirClient(f"file://{reg}"), sign_key=keys.sk, progress=False)
    new = {p: provenance(store, p, keys.sk, time.time() + 60).dumps().encode() for p in paths}
    fsyncs, barriers = [], []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (fsyncs.append(fd), real_fsync(fd))[1])
    storage = FileStorage(reg)
    files = [(hp(p), "provenance", new[p]) for p in paths] + [(hp(paths[0]), "sbom-x", b"{}")]
    place_many(storage, files, barrier=lambda: barriers.append(1))
    assert len(fsyncs) == 0 and len(barriers) == 1
    for p in paths:
        assert _reg_file(reg, p).read_bytes() == new[p]
        kinds = json.loads((reg / f"{hp(p)}.att" / "index.json").read_bytes())["kinds"]
        assert set(kinds) == ({"provenance", "sbom-x"} if p == paths[0] else {"provenance"})
    assert not list((reg / ".kiln" / "tmp").iterdir())
    # in two halves (the mirror's own barrier between): nothing visible before place()
    newer = {p: provenance(store, p, keys.sk, time.time() + 120).dumps().encode() for p in paths}
    with staged_many(storage, [(hp(p), "provenance", newer[p]) for p in paths]) as place:
        assert len(list((reg / ".kiln" / "tmp").iterdir())) == len(paths) * 2  # files and listings
        assert all(_reg_file(reg, p).read_bytes() == new[p] for p in paths)
        storage.barrier()
        place()
    assert all(_reg_file(reg, p).read_bytes() == newer[p] for p in paths)
    with staged_many(storage, [(hp(paths[0]), "provenance", new[paths[0]])]):
        pass  # never placed: dropped
    assert _reg_file(reg, paths[0]).read_bytes() == newer[paths[0]]
    assert not list((reg / ".kiln" / "tmp").iterdir())
