"""Lookups by NAR hash (``POST /narinfo-batch {"nar_hashes": [...]}``, used by
``kiln verify URL#sha256:...``): found for every published path, and a flood of unknown
hashes costs at most one refresh of the map per ``RESCAN_S`` (it used to cost a scan
per hash, on the server's event loop)."""

from __future__ import annotations

import json

from regkit import request

from kiln.registry import narhashmap
from kiln.registry.backends import DirSource
from kiln.registry.storesource import StoreSource
from kiln.store import narinfo as ni


def test_unknown_hashes_cost_one_scan_per_interval(pushed, monkeypatch) -> None:
    store, chain, leaf, reg, tok, srv = pushed
    src = DirSource(reg)
    for i in range(100):
        assert src.narinfo_by_nar_hash(f"{i:064x}") is None
    assert src.by_nar.reads == 6  # one refresh, each narinfo read once
    for p in (*chain, leaf):  # all found from that one refresh
        body = src.narinfo_by_nar_hash(store.query(p).nar_hash.hex)
        assert body is not None and ni.parse(body.decode(), store.store_dir).path == p
    assert src.by_nar.reads == 6
    # (what a later refresh reads, and when it happens at all: test_nar_hash_refresh.py)
    monkeypatch.setattr(narhashmap, "RESCAN_S", 0.0)
    assert src.narinfo_by_nar_hash("f" * 64) is None and src.by_nar.reads <= 12


def test_server_and_store_source_answer_by_nar_hash(pushed, kiln_server) -> None:
    store, chain, leaf, reg, tok, srv = pushed
    want = store.query(leaf).nar_hash.hex
    body = json.dumps({"nar_hashes": [want, "0" * 64, "not-a-hash"]}).encode()
    s, _, out = request(f"{srv.url}/narinfo-batch", "POST", body)
    by_nar = json.loads(out)["by_nar_hash"]
    assert s == 200 and list(by_nar) == [want] and f"StorePath: {leaf}" in by_nar[want]
    src = StoreSource(store.root, None)
    got = src.narinfo_by_nar_hash(want)
    assert got is not None and f"StorePath: {leaf}".encode() in got
    assert src.narinfo_by_nar_hash("0" * 64) is None and src.narinfo_by_nar_hash("zz") is None
    src.store.close()


def test_a_store_backed_server_stops_advertising_a_collected_path(tmp_path, kiln_server) -> None:
    """``kiln serve --store``: a narinfo served once is not served again after GC deleted
    its path (it used to stay cached, and its NAR GET gave 404)."""
    from regkit import add_tree, make_store

    store = make_store(tmp_path / "store")
    p = add_tree(store, tmp_path, "gone", "soon collected\n")
    srv = kiln_server("--store", str(store.root))
    url = f"{srv.url}/{p.rsplit('/', 1)[1][:32]}.narinfo"
    assert request(url)[0] == 200
    store.close()  # (its temp root of the path goes with it)
    from kiln.store.localstore import LocalStore

    with LocalStore.open(tmp_path / "store") as s:
        assert p in s.gc().deleted
    assert request(url)[0] == 404


def test_a_rewritten_narinfo_is_served_as_it_now_is(pushed, keys, tmp_path) -> None:
    """Narinfos are replaced (a signature merge by another worker, a mirror sync): a
    directory source's cache must not keep serving the old bytes; nor may a store-backed
    source once ``kiln store sign`` added a signature in another process."""
    import dataclasses

    from regkit import add_tree, make_store

    from kiln.store.signing import SecretKey, sign_info

    store, chain, _leaf, reg, _tok, _srv = pushed
    h = chain[0].split("/")[-1][:32]
    serving, other_worker = DirSource(reg), DirSource(reg)
    before = serving.narinfo(h)
    assert before is not None and before.count(b"Sig: ") == 1
    info = ni.parse(before.decode(), store.store_dir)
    extra = SecretKey.generate("second-1")
    merged = dataclasses.replace(info, sigs=(*info.sigs, sign_info(info, extra)))
    assert other_worker.publish_narinfo(h, merged, merged.render().encode())[1] == "signatures merged"
    assert serving.narinfo(h).count(b"Sig: ") == 2

    st = make_store(tmp_path / "served")
    p = add_tree(st, tmp_path, "signed-later", "x\n")
    src = StoreSource(st.root, None)
    hp = p.split("/")[-1][:32]
    assert b"Sig: " not in src.narinfo(hp)
    st.add_signatures(p, [sign_info(st.query(p), keys.sk)])  # another connection commits
    assert src.narinfo(hp).count(b"Sig: ") == 1
    src.store.close()


def test_a_torn_digests_record_is_recomputed_not_an_error(tmp_path, keys) -> None:
    """``.kiln/nars/<hex>`` is a cache that is never fsynced. A crash can leave it empty
    or torn, and a later upload of the object answers "already present" without writing
    it again, so admitting the narinfo must recompute it rather than fail (it raised a
    JSON error: a 500 from a server, a crash of ``kiln push`` to a directory)."""
    import os

    from regkit import kiln, make_store

    from kiln.registry import layout

    store = make_store(tmp_path / "store")
    src = tmp_path / "big"
    src.write_bytes(os.urandom(3 << 20))  # over RECORD_MIN: its digests get a record
    path = store.add_path(src).path
    info = store.query(path)
    reg = tmp_path / "reg"
    push = [
        "push",
        "--store",
        str(store.root),
        path,
        "--to",
        f"file://{reg}",
        "--sign-key",
        str(keys.sk_file),
    ]
    assert kiln(*push).returncode == 0
    record = reg / ".kiln" / "nars" / info.file_hash.hex
    assert record.exists()
    want = DirSource(reg).object_digests(info.file_hash)
    assert want is not None and want.nar_hash.digest == info.nar_hash.digest
    narinfo = reg / layout.narinfo_key(path.split("/")[-1][:32])
    damaged = (
        b"",
        b'{"file_hash": "sha256:',
        b"[1, 2]",
        b'{"file_hash": "' + b"0" * 64 + b'"}',
        b"[" * 100_000,
    )
    for torn in (*damaged, b'{"file_hash": 5, "file_size": 1, "nar_hash": null, "nar_size": 1}'):
        record.write_bytes(torn)
        assert DirSource(reg).object_digests(info.file_hash) == want, torn
        record.write_bytes(torn)
        narinfo.unlink()  # the crash came before the narinfo was published
        r = kiln(*push)
        assert r.returncode == 0, (torn, r.stderr)
        assert narinfo.exists()


def test_a_record_of_a_deleted_object_admits_nothing(tmp_path, keys) -> None:
    """``registry verify --delete-bad`` deletes a bad object and leaves its digests record:
    the record must not speak for the object any more."""
    import os

    from regkit import make_store

    from kiln.registry import layout

    store = make_store(tmp_path / "store")
    src = tmp_path / "big"
    src.write_bytes(os.urandom(3 << 20))
    info = store.query(store.add_path(src).path)
    reg = tmp_path / "reg"
    from regkit import kiln

    push = [
        "push",
        "--store",
        str(store.root),
        info.path,
        "--to",
        f"file://{reg}",
        "--sign-key",
        str(keys.sk_file),
    ]
    assert kiln(*push).returncode == 0
    source = DirSource(reg)
    assert source.object_digests(info.file_hash) is not None  # (now in its memory too)
    assert (reg / ".kiln" / "nars" / info.file_hash.hex).exists()
    for key in (layout.nar_key(info.file_hash), layout.blob_key(info.file_hash)):
        (reg / key).unlink()
    assert source.object_digests(info.file_hash) is None
    assert DirSource(reg).object_digests(info.file_hash) is None
