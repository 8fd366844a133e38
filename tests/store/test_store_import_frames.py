"""Importing a compressed object that is not whole zstd frames: refused even when every
digest agrees (the FileHash taken over the cut file, the NAR inside complete), because
Nix and ``zstd -t`` refuse such a file and a registry would pass it on; nothing is left."""

from __future__ import annotations

import dataclasses
import io
from pathlib import Path

import pytest
import zstandard

from kiln.store.errors import HashMismatch
from kiln.store.hashes import Hash
from kiln.store.localstore import LocalStore


def _cut_object(store: LocalStore, path: str) -> bytes:
    nar = b"".join(store.nar(path))
    return zstandard.ZstdCompressor(write_checksum=True).compress(nar)[:-4]  # no checksum


def test_import_object_refuses_a_cut_stream(store: LocalStore, sample: Path, tmp_path: Path) -> None:
    a = store.add_path(sample)
    cut = _cut_object(store, a.path)
    info = dataclasses.replace(a, file_hash=Hash.sha256_of(cut), file_size=len(cut))
    other = LocalStore.open(tmp_path / "other")
    try:
        with pytest.raises(HashMismatch, match=r"truncated after \d+ bytes.*frame checksum"):
            other.import_object(info, io.BytesIO(cut))
        with pytest.raises(HashMismatch, match="truncated"):
            other.import_objects([(info, io.BytesIO(cut))])
        assert not other.is_valid(a.path) and not other.real_path(a.path).exists()
        whole = cut + zstandard.ZstdCompressor(write_checksum=True).compress(b"".join(store.nar(a.path)))[-4:]
        ok = dataclasses.replace(a, file_hash=Hash.sha256_of(whole), file_size=len(whole))
        assert other.import_object(ok, io.BytesIO(whole)).path == a.path  # the same bytes, whole
    finally:
        other.close()


def test_a_damaged_object_is_reported_against_its_recorded_digest(store: LocalStore, sample: Path) -> None:
    """Corrupt zstd in a stored object: the message names the recorded digest and size
    and what was found, not only the decompressor's complaint."""
    a = store.add_path(sample)
    obj = store.object_path(a.path)
    data = bytearray(obj.read_bytes())
    data[4] ^= 0xFF  # the frame header: the decompressor fails
    obj.chmod(0o644)
    obj.write_bytes(bytes(data))
    with pytest.raises(HashMismatch) as e:
        b"".join(store.nar(a.path))
    assert a.file_hash is not None and a.file_hash.to_nix32() in str(e.value) and "bytes" in str(e.value)
