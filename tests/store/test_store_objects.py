"""Reading compressed objects from outside (``objread.decompress_verified``): a hostile
object is refused as soon as it outgrows its recorded sizes (a tiny signed NarSize
bounds a decompression bomb), and concatenated zstd frames read as one stream, as the
``zstd`` tool and the registry's own verifier read them."""

from __future__ import annotations

import hashlib
import io

import pytest
import zstandard

from kiln.store.errors import HashMismatch
from kiln.store.hashes import Hash
from kiln.store.objread import decompress_verified


def _sha(b: bytes) -> Hash:
    return Hash("sha256", hashlib.sha256(b).digest())


class _Counting(io.BytesIO):
    def __init__(self, data: bytes) -> None:
        super().__init__(data)
        self.taken = 0

    def read(self, n: int = -1) -> bytes:
        b = super().read(n)
        self.taken += len(b)
        return b


def test_a_bomb_stops_at_the_recorded_nar_size() -> None:
    bomb = zstandard.ZstdCompressor(level=19).compress(b"\0" * (256 << 20))  # 256 MiB of zeros, ~8 KiB
    nar = b"x" * 120
    out = 0
    with pytest.raises(HashMismatch, match="more than 120 bytes"):
        for chunk in decompress_verified(io.BytesIO(bomb), "/kiln/store/x", None, (_sha(nar), 120)):
            out += len(chunk)
    assert out == 0  # nothing past the limit was handed out


def test_a_compressed_file_longer_than_recorded_stops_early() -> None:
    nar = b"n" * 1000
    zst = zstandard.ZstdCompressor().compress(nar) + b"\0" * (64 << 20)  # trailing junk
    src = _Counting(zst)
    with pytest.raises(HashMismatch, match="compressed file"):
        for _ in decompress_verified(src, "/kiln/store/x", (_sha(zst[:20]), 20), (_sha(nar), len(nar))):
            pass
    assert src.taken < 4 << 20


def test_concatenated_frames_are_one_stream() -> None:
    a, b = b"hello " * 1000, b"world" * 100000
    zst = zstandard.ZstdCompressor().compress(a) + zstandard.ZstdCompressor().compress(b)
    got = b"".join(
        decompress_verified(
            io.BytesIO(zst), "/kiln/store/x", (_sha(zst), len(zst)), (_sha(a + b), len(a + b))
        )
    )
    assert got == a + b


def test_trailing_bytes_count_against_the_file_digest() -> None:
    nar = b"n" * 1000
    zst = zstandard.ZstdCompressor().compress(nar)
    with pytest.raises(HashMismatch):
        for _ in decompress_verified(io.BytesIO(zst + b"junk"), "/kiln/store/x", (_sha(zst), len(zst)), None):
            pass


def _frames(obj: bytes) -> int:
    """Number of zstd frames in ``obj`` (each one's size from its header)."""
    n = 0
    while obj:
        size = zstandard.frame_content_size(obj)
        one = zstandard.ZstdDecompressor().decompressobj()
        one.decompress(obj)
        assert size >= 0
        obj = one.unused_data
        n += 1
    return n


def test_an_objects_frames_are_read_whole_by_every_reader(tmp_path) -> None:
    """``add_path`` writes one zstd frame per ~1 MiB chunk (``narsink``): the local
    reader, batch import's in-memory path, the registry's verifier and the ``zstd`` tool
    must all read every frame, not stop after the first. The object is the same on a
    second add (frames follow the tree, not timing or the file system)."""
    import os
    import random
    import shutil
    import subprocess

    from storekit import make_tree

    from kiln.registry.verify import NarVerifier
    from kiln.store import nar
    from kiln.store.localstore import LocalStore

    rng = random.Random(9)
    src = make_tree(tmp_path / "src", {"a": rng.randbytes(900 << 10), "b": b"text\n" * 300_000})
    want = nar.dump_bytes(src)
    store, other = LocalStore.open(tmp_path / "s"), LocalStore.open(tmp_path / "o")
    try:
        info = store.add_path(src)
        obj = store.object_path(info.path).read_bytes()
        assert _frames(obj) >= 3
        assert info.file_size <= 1 << 20  # small enough for batch import's in-memory path
        assert b"".join(store.nar(info.path)) == want
        (got,) = other.import_objects([(info, io.BytesIO(obj))])
        assert got.nar_hash == info.nar_hash and b"".join(other.nar(info.path)) == want
        h = NarVerifier()
        h.update(obj)
        d = h.finish()
        assert (d.nar_hash, d.nar_size, d.file_hash) == (info.nar_hash, info.nar_size, info.file_hash)
        if shutil.which("zstd"):
            out = subprocess.run(["zstd", "-dc"], input=obj, capture_output=True, check=True).stdout
            assert out == want
        again = LocalStore.open(tmp_path / "again")
        try:
            assert again.object_path(again.add_path(src).path).read_bytes() == obj
        finally:
            again.close()
        assert os.path.getsize(store.object_path(info.path)) == info.file_size
    finally:
        store.close()
        other.close()


def test_a_streams_object_does_not_depend_on_its_read_sizes(tmp_path) -> None:
    """``NarSink.write`` cuts frames at every 1 MiB of the NAR however the bytes arrive,
    so importing the same NAR read in different pieces gives the same object file."""
    import os
    import random

    from kiln.store.narsink import NarSink
    from kiln.store.objects import CHUNK

    rng = random.Random(11)
    nar = rng.randbytes(3 * CHUNK + 4321) + b"text " * 200_000
    objects = []
    for k, sizes in enumerate([[CHUNK], [64 << 10], [3 * CHUNK + 17], [1, 4095, 700_001, CHUNK - 1]]):
        sink = NarSink(os.open(tmp_path / f"o{k}", os.O_WRONLY | os.O_CREAT, 0o644))
        pos, i = 0, 0
        while pos < len(nar):
            n = sizes[i % len(sizes)]
            sink.write(nar[pos : pos + n])
            pos, i = pos + n, i + 1
        info = sink.finish()
        assert info.nar_hash == _sha(nar) and info.nar_size == len(nar)
        objects.append((tmp_path / f"o{k}").read_bytes())
    assert all(o == objects[0] for o in objects[1:])
    assert _frames(objects[0]) == -(-len(nar) // CHUNK)
