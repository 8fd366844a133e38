"""A directory registry's narinfo cache is bounded in bytes, not only in entries: a
narinfo may be 4 MiB (``narinfo.MAX_SIZE``), so 200,000 cached entries could hold far
more memory than a server has. Real files in a real registry directory."""

from __future__ import annotations

from pathlib import Path

from kiln.registry import backends, layout
from kiln.registry.backends import DirSource


def test_the_narinfo_cache_stays_within_its_byte_bound(tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setattr(backends, "CACHE_BYTES", 1 << 20)
    monkeypatch.setattr(backends, "CACHE_ONE_MAX", 300 << 10)
    src = DirSource(tmp_path / "reg", store_dir="/kiln/store")
    parts = [f"{i:032d}".replace("0", "a") for i in range(40)]
    for i, h in enumerate(parts):
        size = (400 << 10) if i % 10 == 0 else (100 << 10)  # every tenth: too big to cache
        (tmp_path / "reg" / layout.narinfo_key(h)).write_bytes(b"x" * size)
    for _ in range(2):
        for i, h in enumerate(parts):
            body = src.narinfo(h)
            assert body is not None and len(body) == ((400 << 10) if i % 10 == 0 else (100 << 10))
            held = sum(len(b) for _, b in src._cache.values())
            assert held == src._cache.bytes <= backends.CACHE_BYTES
    assert all(len(b) <= backends.CACHE_ONE_MAX for _, b in src._cache.values())
    assert src._cache  # (it still caches)
