"""O_DIRECT writing (``store/directio.py``): every byte lands once and in order, whether
the kernel takes the direct writes, refuses them, or the device is too slow for them."""

from __future__ import annotations

import fcntl
import mmap
import os
import random
from pathlib import Path

import pytest

from kiln.store import directio
from kiln.store.directio import ALIGN, DirectRate, DirectWriter, set_direct, write_blocks

SIZES = [
    0,
    1,
    ALIGN - 1,
    ALIGN,
    ALIGN + 1,
    (64 << 10) + 3,
    (4 << 20) - 1,
    4 << 20,
    (4 << 20) + 1,
    (9 << 20) + 77,
]


def _write_in_pieces(w: DirectWriter, data: bytes, rng: random.Random) -> None:
    i = 0
    while i < len(data):
        n = rng.choice([1, 7, 4096, 65536, 1 << 20, 5 << 20])
        w.write(data[i : i + n])
        i += n


@pytest.mark.parametrize("size", SIZES)
def test_direct_writer_writes_exactly_the_bytes(tmp_path: Path, size: int) -> None:
    rng = random.Random(size)
    data = rng.randbytes(size)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        w = DirectWriter(fd)  # direct where this file system takes O_DIRECT, else buffered
        _write_in_pieces(w, data, rng)
        w.close()
        w.close()  # idempotent
        assert not fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT  # left buffered for the caller
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data


def test_direct_writer_falls_back_where_o_direct_is_refused() -> None:
    # /dev/null refuses O_DIRECT at fcntl (EINVAL): the writer writes buffered instead
    fd = os.open("/dev/null", os.O_WRONLY)
    try:
        assert set_direct(fd, True) is False
        w = DirectWriter(fd)
        assert not w.direct and w.map is None
        w.write(b"x" * (5 << 20))
        w.close()
    finally:
        os.close(fd)


def test_write_blocks_finishes_buffered_when_a_direct_write_is_refused(tmp_path: Path) -> None:
    # memory that is not page-aligned makes the kernel refuse the direct write (EINVAL):
    # the same bytes must then be written buffered, from the same position
    data = random.Random(1).randbytes(3 * ALIGN)
    m = mmap.mmap(-1, 4 * ALIGN)
    m[1 : 1 + len(data)] = data
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"h" * ALIGN)  # something before, so the position matters
        if not set_direct(fd, True):
            pytest.skip("the file system under tmp_path does not take O_DIRECT")
        view = memoryview(m)[1 : 1 + len(data)]
        still_direct = write_blocks(fd, view)  # ext4 refuses: False, and O_DIRECT is off
        assert still_direct == bool(fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_DIRECT)
        view.release()
    finally:
        os.close(fd)
        m.close()
    assert (tmp_path / "f").read_bytes() == b"h" * ALIGN + data


def test_slow_device_turns_direct_writes_off(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    rate = DirectRate()
    assert rate.fast_enough(1 << 20, 1.0)  # too little seen to judge
    assert not rate.fast_enough(directio.RATE_SAMPLE, 1.0)  # 32 MiB/s on average
    fast = DirectRate()
    assert fast.fast_enough(directio.RATE_SAMPLE, 0.01)
    # a writer that finds the device slow carries on buffered, losing nothing
    monkeypatch.setattr(directio, "MIN_DIRECT_RATE", 1e15)
    monkeypatch.setattr(directio, "RATE_SAMPLE", 1)
    data = random.Random(2).randbytes((9 << 20) + 5)
    fd = os.open(tmp_path / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        w = DirectWriter(fd, size=1 << 20)
        w.write(data[: 3 << 20])
        assert not w.direct
        w.write(data[3 << 20 :])
        w.close()
    finally:
        os.close(fd)
    assert (tmp_path / "f").read_bytes() == data


def test_object_written_buffered_is_handed_to_writeback(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Once O_DIRECT is dropped (here: the device seems slow), the sink writes the
    object buffered and starts writeback every WRITEBACK_STEP, as without O_DIRECT."""
    from kiln.store import narsink

    monkeypatch.setattr(directio, "MIN_DIRECT_RATE", 1e15)
    monkeypatch.setattr(directio, "RATE_SAMPLE", 1)
    calls: list[int] = []
    real = narsink.start_writeback
    monkeypatch.setattr(narsink, "start_writeback", lambda fd, off, n: (calls.append(n), real(fd, off, n)))
    data = random.Random(3).randbytes(48 << 20)  # incompressible: ~48 MiB of object
    sink = narsink.NarSink(os.open(tmp_path / "obj", os.O_WRONLY | os.O_CREAT, 0o644))
    for i in range(0, len(data), 1 << 20):
        sink.write(data[i : i + (1 << 20)])
    info = sink.finish()
    assert sink.writer is not None and not sink.writer.direct
    assert len(calls) >= 2
    assert info.file_size == (tmp_path / "obj").stat().st_size
