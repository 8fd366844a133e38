"""``nar_read.single_file``: the fast path for one-regular-file NARs agrees with the
general parser (differential), and declines every other shape instead of guessing."""

from __future__ import annotations

import io
import os
from pathlib import Path

import pytest

from kiln.store import nar
from kiln.store.errors import FormatError
from kiln.store.nar_read import entries, single_file


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 100, 4096, 65537])
@pytest.mark.parametrize("executable", [False, True])
def test_agrees_with_the_parser(tmp_path: Path, size: int, executable: bool) -> None:
    f = tmp_path / "f"
    data = os.urandom(size)
    f.write_bytes(data)
    f.chmod(0o755 if executable else 0o644)
    archive = b"".join(nar.dump(f))
    got = single_file(archive)
    assert got is not None and got[0] == executable and bytes(got[1]) == data
    # any one-bit change: either declined, or exactly what the general parser reads
    for pos in [*range(min(len(archive), 160)), len(archive) - 9, len(archive) - 1]:
        bad = bytearray(archive)
        bad[pos] ^= 0x01
        r = single_file(bytes(bad))
        if r is None:
            continue
        (e,) = entries(io.BytesIO(bytes(bad)))
        assert e.type == ("executable" if r[0] else "regular") and e.size == len(r[1])


@pytest.mark.parametrize("size", [0, 1, 7, 8, 9, 100, 65537])
@pytest.mark.parametrize("executable", [False, True])
def test_file_nar_is_dump_of_the_file(tmp_path: Path, size: int, executable: bool) -> None:
    """``nar.file_nar`` (a NAR made from bytes, no file) is byte-identical to dumping a
    file with those contents."""
    f = tmp_path / "f"
    data = os.urandom(size)
    f.write_bytes(data)
    f.chmod(0o755 if executable else 0o644)
    assert nar.file_nar(data, executable) == b"".join(nar.dump(f))


def test_declines_other_shapes(tmp_path: Path) -> None:
    f = tmp_path / "f"
    f.write_bytes(b"hello")
    archive = b"".join(nar.dump(f))
    assert single_file(archive + b"\0" * 8) is None  # trailing data
    assert single_file(archive[:-1]) is None  # truncated
    bad_pad = bytearray(archive)
    bad_pad[-9] = 1  # a padding byte after the 5-byte contents
    assert single_file(bytes(bad_pad)) is None
    with pytest.raises(FormatError):
        list(entries(io.BytesIO(bytes(bad_pad))))
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "x").write_text("x")
    os.symlink("x", tmp_path / "l")
    for p in (tmp_path / "d", tmp_path / "l"):
        assert single_file(b"".join(nar.dump(p))) is None
    assert single_file(b"") is None and single_file(b"garbage") is None
