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
