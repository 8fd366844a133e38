"""A bad object met by substitution names which object it is, the recorded digest and
size and what came: a download (one request, from a ``file://`` registry: changed bytes,
and bytes past FileSize), a batched one (``blob_batch`` from a real ``kiln serve``), and
``LocalStore.import_object`` of a compressed object that does not match its info. And the
``Substituter.views`` hook: a client put there is what the substituter reads that
registry through (``copy.to_store`` puts the signed index's view there).
"""

from __future__ import annotations

import io
from pathlib import Path

import pytest
from regkit import add_tree, kiln, make_store

from kiln.registry import layout
from kiln.registry.indexcheck import IndexedClient
from kiln.registry.push import push
from kiln.registry.substitute import Substituter
from kiln.store.errors import HashMismatch
from kiln.store.hashes import Hash


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


@pytest.fixture
def published(tmp_path: Path, keys):
    """A store path pushed (signed) to a ``file://`` registry: (store, path, registry dir)."""
    from kiln.registry.client import open_client

    store = make_store(tmp_path / "store")
    p = add_tree(store, tmp_path, "thing", "thing\n" * 500)
    reg = tmp_path / "reg"
    push(store, [p], lambda: open_client(f"file://{reg}", store_dir=store.store_dir), sign_key=keys.sk)
    yield store, p, reg
    store.close()


def _fetch_error(url: str, keys, path: str, dest: Path) -> str:
    other = make_store(dest)
    try:
        with Substituter([(url, 0)], [keys.pk]) as sub:
            info = sub.query_many([path])[path]
            with pytest.raises(HashMismatch) as e:
                sub.fetch(other, info)
        assert not other.is_valid(path)
        return str(e.value)
    finally:
        other.close()


@pytest.mark.parametrize("how", ["changed", "longer"])
def test_a_bad_download_names_the_object(published, keys, tmp_path, how) -> None:
    store, p, reg = published
    info = store.query(p)
    key = layout.nar_key(info.file_hash)
    data = bytearray((reg / key).read_bytes())
    if how == "changed":
        data[len(data) // 2] ^= 0x55
    else:
        data += b"\0" * 10
    (reg / key).chmod(0o644)
    (reg / key).write_bytes(bytes(data))
    msg = _fetch_error(f"file://{reg}", keys, p, tmp_path / "dest")
    assert f"hash mismatch for download of {p} (object {key}) from file://{reg}:" in msg, msg
    assert f"expected: {info.file_hash.to_nix32()} ({info.file_size} bytes)" in msg, msg
    got = (
        f"{Hash.sha256_of(bytes(data)).to_nix32()} ({len(data)} bytes)"
        if how == "changed"
        else f"more than {info.file_size} bytes"
    )
    assert f"got:      {got}" in msg, msg


def test_a_bad_object_in_a_batch_names_the_object(published, keys, tmp_path, kiln_server) -> None:
    store, p, reg = published
    info = store.query(p)
    assert info.file_size < 1 << 20  # (small: fetched with blob_batch)
    key = layout.nar_key(info.file_hash)
    seen: set[int] = set()
    for k in (key, layout.blob_key(info.file_hash)):  # (each file once: they may be one inode)
        f = reg / k
        if f.exists() and f.stat().st_ino not in seen:
            seen.add(f.stat().st_ino)
            data = bytearray(f.read_bytes())
            data[len(data) // 2] ^= 0x55
            f.chmod(0o644)
            f.write_bytes(bytes(data))
    srv = kiln_server("--dir", str(reg), "--trusted-key", str(keys.pk_file))
    msg = _fetch_error(srv.url, keys, p, tmp_path / "dest")
    assert f"hash mismatch for download of {p} (object {key}) from {srv.url}:" in msg, msg
    assert f"expected: {info.file_hash.to_nix32()} ({info.file_size} bytes)" in msg, msg
    assert f"got:      {Hash.sha256_of(bytes(data)).to_nix32()} ({len(data)} bytes)" in msg, msg


def test_import_object_names_the_object(published, tmp_path) -> None:
    store, p, _reg = published
    info = store.query(p)
    data = bytearray(store.object_path(p).read_bytes())
    data[len(data) // 2] ^= 0x55
    other = make_store(tmp_path / "other")
    try:
        with pytest.raises(HashMismatch) as e:
            other.import_object(info, io.BytesIO(bytes(data)))
        assert not other.is_valid(p)
    finally:
        other.close()
    msg = str(e.value)
    assert f"compressed file of {p} (object {layout.nar_key(info.file_hash)}):" in msg, msg
    assert f"expected: {info.file_hash.to_nix32()} ({info.file_size} bytes)" in msg, msg
    assert f"{Hash.sha256_of(bytes(data)).to_nix32()} ({len(data)} bytes)" in msg, msg


def test_a_substituter_reads_a_registry_through_its_view(published, keys) -> None:
    """``views`` is public: an ``IndexedClient`` put there (here over an index listing
    nothing) answers the queries, and the substituter hands it out as that registry's
    client; the client it wraps is ``opened``."""
    _store, p, reg = published
    url = f"file://{reg}"
    with Substituter([(url, 0)], [keys.pk]) as sub:
        view = IndexedClient(sub.opened(url), {}, 7)
        sub.views[url] = view
        assert sub.client(url) is view
        assert sub.query_many([p]) == {}
        assert "not listed in the source's signed index (version 7)" in view.refused[_hp(p)]
        del sub.views[url]
        assert p in sub.query_many([p])  # (the registry itself has it)


def test_kiln_copy_of_a_bad_object_names_it(published, keys, tmp_path) -> None:
    """Through the CLI: ``kiln copy --to store`` reports the object too."""
    store, p, reg = published
    info = store.query(p)
    key = layout.nar_key(info.file_hash)
    data = bytearray((reg / key).read_bytes())
    data[len(data) // 2] ^= 0x55
    (reg / key).chmod(0o644)
    (reg / key).write_bytes(bytes(data))
    r = kiln(
        "copy", "--from", f"file://{reg}", "--to", "store", "--store", str(tmp_path / "dest"),
        "--trusted-key", str(keys.pk_file), p,
    )  # fmt: skip
    assert r.returncode == 1, r.stderr
    assert f"(object {key})" in r.stderr and info.file_hash.to_nix32() in r.stderr, r.stderr
