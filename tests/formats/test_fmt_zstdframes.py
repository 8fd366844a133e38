"""``zstdframes.FrameTracker``: whole streams are complete, cut ones are not, wherever the
cut falls and however the bytes arrive; differential against the ``zstd -t`` tool."""

from __future__ import annotations

import os
import random
import shutil
import subprocess

import pytest
import zstandard

from kiln.store.errors import FormatError
from kiln.store.zstdframes import FrameTracker


def _stream() -> bytes:
    """Frames of every kind: compressed blocks (text), raw blocks (random bytes), an RLE
    block (a run), a frame with a checksum and one without, a skippable frame, an empty
    frame, and a multi-block frame."""
    rng = random.Random(7)
    text = b"".join(b"line %d of some text\n" % i for i in range(3000))
    with_sum = zstandard.ZstdCompressor(level=1, write_checksum=True)
    no_sum = zstandard.ZstdCompressor(level=1)
    skippable = b"\x5a\x2a\x4d\x18" + (5).to_bytes(4, "little") + b"hello"
    return b"".join(
        [
            with_sum.compress(text),
            no_sum.compress(rng.randbytes(3000)),
            no_sum.compress(b"\0" * 5000),
            skippable,
            no_sum.compress(b""),
            with_sum.compress(text * 8 + rng.randbytes(300_000)),  # several blocks
        ]
    )


def _track(data: bytes, piece: int) -> FrameTracker:
    t = FrameTracker()
    for i in range(0, len(data), piece):
        t.update(data[i : i + piece])
    return t


@pytest.mark.parametrize("piece", [1, 3, 7, 4096, 1 << 20])
def test_whole_stream_is_complete_however_fed(piece: int) -> None:
    data = _stream()
    t = _track(data, piece)
    assert t.complete() and t.frames == 5 and t.offset == len(data)
    t.check_complete()


def test_cut_streams_are_incomplete_except_at_frame_boundaries() -> None:
    data = _stream()
    boundaries = set()
    t = FrameTracker()
    for i in range(len(data)):  # one byte at a time: note where frames end
        t.update(data[i : i + 1])
        if t.complete():
            boundaries.add(i + 1)
    assert len(boundaries) == 6  # 5 zstd frames + the skippable one after the third
    for cut in range(1, len(data), 97):
        t = _track(data[:cut], 4096)
        assert t.complete() == (cut in boundaries), cut
        if cut not in boundaries:
            with pytest.raises(FormatError, match=f"truncated after {cut} bytes"):
                t.check_complete()


def test_cut_inside_the_checksum_is_incomplete() -> None:
    frame = zstandard.ZstdCompressor(level=1, write_checksum=True).compress(b"abc" * 1000)
    for cut in (1, 2, 3, 4):
        t = _track(frame[:-cut], 2)
        assert not t.complete()
        with pytest.raises(FormatError, match="expected a frame checksum"):
            t.check_complete()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty"),
        (b"\x5a\x2a\x4d\x18\0\0\0\0", "no zstd frame"),
        (b"not zstd at all", "not zstd data at byte 0"),
        (zstandard.ZstdCompressor().compress(b"x") + b"garbage!", "not zstd data at byte 10"),
        (b"\x28\xb5\x2f\xfd\x08", "reserved bit"),
        (b"\x28\xb5\x2f\xfd\x20\x00\x07\x00\x00", "reserved block type"),
    ],
)
def test_not_zstd(data: bytes, message: str) -> None:
    with pytest.raises(FormatError, match=message):
        t = _track(data, 3)
        t.check_complete()


@pytest.mark.skipif(shutil.which("zstd") is None, reason="needs the zstd tool")
def test_agrees_with_zstd_tool_on_random_cuts_and_damage(tmp_path) -> None:
    """Differential: for cuts at random places and appended bytes, the tracker calls a
    stream complete exactly when ``zstd -t`` accepts it (damage inside block contents is
    the decompressor's business, so the cases only cut or append)."""
    data = _stream()
    rng = random.Random(1)
    cases = [data[: rng.randrange(1, len(data))] for _ in range(40)]
    cases += [data + os.urandom(rng.randrange(1, 9)) for _ in range(5)]
    cases += [data, data[: len(data) // 2]]
    f = tmp_path / "s.zst"
    for case in cases:
        f.write_bytes(case)
        tool_ok = subprocess.run(["zstd", "-q", "-t", str(f)], capture_output=True).returncode == 0
        try:
            ours = _track(case, 1000).complete()
        except FormatError:
            ours = False
        assert ours == tool_ok, (len(case), len(data))
