"""What follows the data, and how much of it: trailing bytes after the compressed data.tar
or after tar's end-of-archive marker, streams cut after the tar ended, and the bounds on
what one unpack writes. Each refusal is a FormatError naming the package, with nothing
left behind; what real tools write (padding, several streams or frames) still unpacks."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import zlib
from pathlib import Path

import pytest
import zstandard

from kiln.store import debunpack
from kiln.store.debarchive import MAX_TAR_PADDING
from kiln.store.debunpack import unpack_debs
from kiln.store.errors import FormatError

from .debs import Entry, deb_with_data, make_deb, tar

TAR = tar([Entry("./usr/", "d"), Entry("./usr/f", data=b"hello\n" * 100)])
COMPRESSORS = {
    "xz": ("data.tar.xz", lzma.compress),
    "zst": ("data.tar.zst", lambda b: zstandard.ZstdCompressor(write_checksum=True).compress(b)),
    "bz2": ("data.tar.bz2", bz2.compress),
    "gz": ("data.tar.gz", lambda b: gzip.compress(b, mtime=0)),
}
ZSTD_SKIPPABLE = struct.pack("<II", 0x184D2A50, 4) + b"meta"


def unpack(tmp_path: Path, member: str, data: bytes) -> Path:
    deb = deb_with_data(tmp_path / "t_1_amd64.deb", member, data)
    unpack_debs([deb], tmp_path / "out")
    return tmp_path / "out"


def refused(tmp_path: Path, member: str, data: bytes, match: str) -> None:
    with pytest.raises(FormatError, match=f"^t_1_amd64.deb: .*{match}"):
        unpack(tmp_path, member, data)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("codec", ["xz", "zst", "bz2"])
def test_trailing_garbage_after_the_compressed_stream_is_refused(tmp_path, codec):
    # lzma.LZMAFile and bz2.BZ2File drop bytes after the last stream that do not start a
    # new one; and tarfile stopped reading at the end marker, so nothing looked at them
    member, compress = COMPRESSORS[codec]
    refused(tmp_path, member, compress(TAR) + b"garbage!", f"{member}: unexpected data after the last")


def test_trailing_garbage_after_gzip_is_refused(tmp_path):
    member, compress = COMPRESSORS["gz"]
    refused(tmp_path, member, compress(TAR) + b"garbage!", "corrupt data archive: Not a gzipped file")


@pytest.mark.parametrize(
    ("codec", "tail"),
    [("xz", 12), ("zst", 4)],  # xz's index and footer, zstd's frame checksum
)
def test_a_stream_cut_after_the_tar_ended_is_refused(tmp_path, codec, tail):
    # the tar data (end marker included) decodes completely; only the stream's own
    # trailer is missing, which nobody noticed before the rest was read
    member, compress = COMPRESSORS[codec]
    refused(tmp_path, member, compress(TAR)[:-tail], f"{member}: truncated: the data ends inside")


def test_what_real_tools_write_still_unpacks(tmp_path):
    half = len(TAR) // 2
    xz2, zst2, bz22 = (
        compress(TAR[:half]) + compress(TAR[half:])
        for compress in (lzma.compress, zstandard.ZstdCompressor().compress, bz2.compress)
    )
    cases = [
        ("data.tar.xz", xz2),  # several streams (xz of concatenated parts)
        (
            "data.tar.xz",
            lzma.compress(TAR[:half]) + b"\0" * 8 + lzma.compress(TAR[half:]) + b"\0" * 4,
        ),  # padding
        ("data.tar.zst", zst2),  # zstd -T / several frames
        ("data.tar.zst", ZSTD_SKIPPABLE + zstandard.ZstdCompressor().compress(TAR)),  # pzstd
        ("data.tar.bz2", bz22),  # pbzip2
        ("data.tar.gz", gzip.compress(TAR, mtime=0) + b"\0" * 8),  # gzip's NUL padding
        ("data.tar", TAR + b"\0" * 10240),  # a larger tar record
    ]
    for i, (member, data) in enumerate(cases):
        (tmp_path / str(i)).mkdir()
        out = unpack(tmp_path / str(i), member, data)
        assert (out / "usr" / "f").read_bytes() == b"hello\n" * 100, (i, member)


def test_xz_padding_must_come_in_fours(tmp_path):
    refused(tmp_path, "data.tar.xz", lzma.compress(TAR) + b"\0" * 3, "3 NUL bytes after an xz stream")


def test_data_after_the_end_of_archive_marker_is_refused(tmp_path):
    # a second archive hidden after the first one's end marker ("tar -i" would see it)
    hidden = tar([Entry("./usr/hidden", data=b"x")])
    refused(tmp_path, "data.tar", TAR + hidden, "data after the tar end-of-archive marker")
    (tmp_path / "a").mkdir()
    refused(tmp_path / "a", "data.tar.xz", lzma.compress(TAR + b"\0" * (MAX_TAR_PADDING + 1)), "more than")


def test_an_xz_stream_asking_for_a_huge_dictionary_is_refused(tmp_path):
    # the LZMA2 filter of the block header says "4 GiB dictionary" (code 40): refused by
    # the decoder's memory limit instead of being allocated
    data = bytearray(lzma.compress(TAR))
    size = (data[12] + 1) * 4  # the block header follows the 12-byte stream header
    block = data[12 : 12 + size]
    block[block.index(b"\x21\x01") + 2] = 40  # LZMA2 filter id, 1 byte of properties
    block[-4:] = zlib.crc32(bytes(block[:-4])).to_bytes(4, "little")
    data[12 : 12 + size] = block
    refused(tmp_path, "data.tar.xz", bytes(data), "corrupt data archive: Memory usage limit exceeded")


# --- how much one unpack may write --------------------------------------------------------


def test_total_unpacked_size_is_bounded_across_debs(tmp_path, monkeypatch):
    monkeypatch.setattr(debunpack, "MAX_UNPACKED_BYTES", 10_000)
    a = make_deb(tmp_path / "a_1_amd64.deb", [Entry("./a", data=b"a" * 6000)], name="a")
    b = make_deb(tmp_path / "b_1_amd64.deb", [Entry("./b", data=b"b" * 6000)], name="b")
    unpack_debs([a], tmp_path / "one")  # each alone fits
    with pytest.raises(
        FormatError,
        match=r"^b_1_amd64.deb: './b' \(6000 bytes\) takes the unpacked tree over its limit of 10000 bytes",
    ):
        unpack_debs([a, b], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_hard_link_copies_count_towards_the_size_bound(tmp_path, monkeypatch):
    # hard links become copies: 1 file + 20 links to it would be 21 times its size
    monkeypatch.setattr(debunpack, "MAX_UNPACKED_BYTES", 100_000)
    entries = [Entry("./f", data=b"x" * 10_000)] + [Entry(f"./l{i}", "h", link="./f") for i in range(20)]
    deb = make_deb(tmp_path / "h_1_amd64.deb", entries)
    with pytest.raises(
        FormatError, match=r"^h_1_amd64.deb: './l9' \(10000 bytes\) takes the unpacked tree over"
    ):
        unpack_debs([deb], tmp_path / "out")


def test_a_decompression_bomb_is_refused_before_it_is_written(tmp_path, monkeypatch):
    # 64 MiB of zeros is ~2 KB of zstd; with the bound at 1 MiB nothing big is written
    monkeypatch.setattr(debunpack, "MAX_UNPACKED_BYTES", 1 << 20)
    deb = make_deb(tmp_path / "z_1_amd64.deb", [Entry("./zeros", data=bytes(64 << 20))], ".zst")
    assert deb.stat().st_size < 10_000
    with pytest.raises(FormatError, match="z_1_amd64.deb: './zeros' .* over its limit of 1048576 bytes"):
        unpack_debs([deb], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_member_count_is_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(debunpack, "MAX_UNPACKED_MEMBERS", 5)
    deb = make_deb(tmp_path / "m_1_amd64.deb", [Entry(f"./e{i}") for i in range(6)])
    with pytest.raises(
        FormatError, match="^m_1_amd64.deb: at './e5', the unpacked tree exceeds its limit of 5 members"
    ):
        unpack_debs([deb], tmp_path / "out")
    assert not (tmp_path / "out").exists()
