"""``DirClient`` (``kiln push/copy --to file:///dir``) admits narinfos by the server's
rules except the signer: its own hash part, the NAR present first, and the NAR's real
digests; an unsigned narinfo is fine (the caller owns the directory)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from regkit import add_tree, make_store

from kiln.registry import layout
from kiln.registry.client import RegistryError
from kiln.registry.dirclient import DirClient
from kiln.store import narinfo as ni
from kiln.store.hashes import Hash


def test_narinfos_are_admitted_against_the_nar(tmp_path) -> None:
    store = make_store(tmp_path / "store")
    path = add_tree(store, tmp_path, "p", "content\n" * 50)
    info = store.query(path)
    hp = path.rsplit("/", 1)[1][:32]
    c = DirClient(str(tmp_path / "reg"), store.store_dir)
    text = ni.NarInfo.from_pathinfo(info, layout.nar_key(info.file_hash), "zstd").render().encode()

    def put(key: str, data: bytes) -> int:
        return asyncio.run(c.put_bytes(key, data))

    with pytest.raises(RegistryError, match="upload the NAR"):
        put(layout.narinfo_key(hp), text)
    c.put_object_sync(layout.nar_key(info.file_hash), store.object_path(path))
    lie = dataclasses.replace(info, nar_hash=Hash.sha256_of(b"evil"))
    bad = ni.NarInfo.from_pathinfo(lie, layout.nar_key(info.file_hash), "zstd").render().encode()
    with pytest.raises(RegistryError, match="NAR of"):
        put(layout.narinfo_key(hp), bad)
    with pytest.raises(RegistryError, match="describes another path"):
        put(layout.narinfo_key("0" * 32), text)
    assert put(layout.narinfo_key(hp), text) == 201  # unsigned: the caller owns the directory
    assert (tmp_path / "reg" / layout.narinfo_key(hp)).read_bytes() == text
