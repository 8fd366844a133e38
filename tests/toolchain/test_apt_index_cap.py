"""How much of an apt index is read (``aptfile.read_index_bytes``): every codec stops at
its limit, so a small file in a ``--lists`` directory that decompresses to gigabytes (a
compression bomb) is refused after ``limit + 1`` bytes instead of filling the memory;
an index exactly at the limit is read whole; a FIFO where an index belongs is refused
instead of waited on."""

from __future__ import annotations

import os
import shutil
import subprocess
import tracemalloc
from pathlib import Path

import pytest
import zstandard

from kiln.store import aptfile
from kiln.store.apt import AptError, AptIndex, read_index_bytes

from .test_lock_index_input import CODECS, INDEX, PACKAGES, lists

TEXT = ("\n\n".join(PACKAGES) + "\n").encode()


SUFFIXES = [*sorted(CODECS), "", ".lz4"]


def _index(tmp_path: Path, suffix: str) -> Path:
    if suffix == ".lz4":
        if shutil.which("lz4") is None:
            pytest.skip("needs lz4")
        plain = lists(tmp_path, *PACKAGES) / INDEX
        subprocess.run(["lz4", "-z", "-q", "--rm", str(plain), f"{plain}.lz4"], check=True)
        return Path(f"{plain}.lz4")
    return lists(tmp_path, *PACKAGES, suffix=suffix, compress=CODECS.get(suffix, lambda b: b)) / (
        INDEX + suffix
    )


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_an_index_over_the_limit_is_refused_naming_file_and_limit(tmp_path, suffix):
    path = _index(tmp_path, suffix)
    limit = len(TEXT) - 1
    with pytest.raises(AptError, match=f"^apt index {path} decompresses to more than {limit} bytes"):
        read_index_bytes(path, limit)


@pytest.mark.parametrize("suffix", SUFFIXES)
def test_an_index_at_the_limit_is_read_whole(tmp_path, suffix):
    assert read_index_bytes(_index(tmp_path, suffix), len(TEXT)) == TEXT


def test_a_bomb_is_refused_without_decompressing_it_into_memory(tmp_path, monkeypatch):
    """1 GiB of zeros in a 33 KB ``.zst`` index, against a 64 MiB cap (the default one,
    lowered): refused, having held little more than the cap."""
    d = tmp_path / "lists"
    d.mkdir()
    with open(d / (INDEX + ".zst"), "wb") as f, zstandard.ZstdCompressor().stream_writer(f) as w:
        chunk = b"\0" * (1 << 20)
        for _ in range(1024):
            w.write(chunk)
    assert (d / (INDEX + ".zst")).stat().st_size < 1 << 20
    monkeypatch.setattr(aptfile, "MAX_INDEX_BYTES", 64 << 20)
    tracemalloc.start()
    try:
        with pytest.raises(AptError, match=f"decompresses to more than {64 << 20} bytes"):
            AptIndex.load(d)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 200 << 20, peak


def test_a_fifo_where_an_index_belongs_is_refused_not_waited_on(tmp_path):
    d = tmp_path / "lists"
    d.mkdir()
    fifo = d / (INDEX + ".gz")
    os.mkfifo(fifo)
    assert "no package indexes" in str(pytest.raises(AptError, AptIndex.load, d).value)  # (not listed)
    with pytest.raises(AptError, match=f"^cannot read apt index {fifo}: not a regular file"):
        read_index_bytes(fifo)
