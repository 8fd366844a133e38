"""Hostile tar headers in a .deb's data.tar: whatever tarfile's header parser would do with
them (recurse, raise ValueError/IndexError, read sparse maps whole, spin on a huge skip),
unpack_debs must fail with a FormatError naming the package and leave nothing behind.
Finishes with a small fuzzer that allows no other exception."""

from __future__ import annotations

import io
import random
import shutil
import tarfile
from pathlib import Path

import pytest

from kiln.store.debarchive import MAX_HEADER_CHAIN, MAX_TAR_HEADER
from kiln.store.debunpack import unpack_debs
from kiln.store.errors import FormatError

from .debs import COMPRESS, END, Entry, deb_with_data, extended, header, padded, pax_records, tar


def refused(tmp_path: Path, data: bytes, match: str, comp: str = ".xz") -> None:
    """Unpacking a .deb with this (uncompressed) data.tar fails naming it, leaving nothing."""
    deb = deb_with_data(tmp_path / "evil_1_amd64.deb", f"data.tar{comp}", COMPRESS[comp](data))
    with pytest.raises(FormatError, match=f"^evil_1_amd64.deb: .*{match}"):
        unpack_debs([deb], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def accepted(tmp_path: Path, data: bytes) -> Path:
    deb = deb_with_data(tmp_path / "ok_1_amd64.deb", "data.tar", data)
    unpack_debs([deb], tmp_path / "ok")
    return tmp_path / "ok"


def pax_tar(member: tarfile.TarInfo, pax: dict[str, str]) -> bytes:
    member.pax_headers = pax
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as t:
        t.addfile(member, io.BytesIO(b"\0" * member.size))
    return buf.getvalue()


@pytest.mark.parametrize("kind", [tarfile.GNUTYPE_LONGNAME, tarfile.XHDTYPE])
def test_a_chain_of_small_extended_headers_is_refused(tmp_path, kind):
    # 400 headers of ~100 bytes each (far under MAX_TAR_HEADER): tarfile recursed once per
    # header and raised RecursionError from a 650-byte .deb (review finding 8)
    payload = b"x" * 100 + b"\0" if kind == tarfile.GNUTYPE_LONGNAME else pax_records((b"comment", b"x"))
    data = extended(kind, payload) * 400 + header("usr/f") + END
    refused(tmp_path, data, f"more than {MAX_HEADER_CHAIN} extended headers in a row")


def test_real_header_combinations_still_work(tmp_path):
    # a long link target and a long name (GNU), and a global + extended pax header
    long_name, long_link = "usr/" + "n" * 150, "t" * 150
    gnu = (
        extended(tarfile.GNUTYPE_LONGLINK, long_link.encode() + b"\0")
        + extended(tarfile.GNUTYPE_LONGNAME, long_name.encode() + b"\0")
        + header("usr/short", tarfile.SYMTYPE, link="short")
    )
    pax = extended(tarfile.XGLTYPE, pax_records((b"comment", b"global"))) + extended(
        tarfile.XHDTYPE, pax_records((b"path", b"usr/p" + b"p" * 150))
    )
    out = accepted(tmp_path, gnu + pax + header("usr/x") + END)
    assert (out / long_name).is_symlink() and (out / long_name).readlink() == Path(long_link)
    assert (out / ("usr/p" + "p" * 150)).is_file()


@pytest.mark.parametrize(
    ("pax", "kind", "what"),
    [
        ({"path": "usr/a\0b"}, tarfile.REGTYPE, r"member path with a NUL byte: 'usr/a\\x00b'"),
        ({"linkpath": "x\0y"}, tarfile.SYMTYPE, r"symlink usr/m has a NUL byte in its target 'x\\x00y'"),
        ({"linkpath": "usr/a\0"}, tarfile.LNKTYPE, "member path with a NUL byte"),
    ],
)
def test_a_nul_byte_in_a_name_or_link_is_refused(tmp_path, pax, kind, what):
    # os.open/os.symlink raised a bare ValueError: embedded null byte (finding 8)
    member = tarfile.TarInfo("usr/m")
    member.type = kind
    refused(tmp_path, pax_tar(member, pax), what)


@pytest.mark.parametrize(
    "data",
    [
        # GNU sparse member (type S) whose map "continues" past the end: IndexError in tarfile
        header("usr/s", tarfile.GNUTYPE_SPARSE, patch={482: b"\1"}),
        # pax sparse formats 0.1 and 1.0: maps read whole, number by number
        extended(tarfile.XHDTYPE, pax_records((b"GNU.sparse.map", b"1,x"))) + header("usr/s") + END,
        extended(tarfile.XHDTYPE, pax_records((b"GNU.sparse.major", b"1"), (b"GNU.sparse.minor", b"0")))
        + header("usr/s", size=512)
        + padded(b"99999999999\n")
        + END,
    ],
    ids=["gnu", "pax-0.1", "pax-1.0"],
)
def test_sparse_members_are_refused(tmp_path, data):
    refused(tmp_path, data, "sparse member")


@pytest.mark.parametrize(
    ("records", "what"),
    [
        ([(b"hdrcharset", b"\xff\xfe")], "UnicodeDecodeError"),  # tarfile decodes it strictly
        ([(b"GNU.sparse.realsize", b"lots")], "ValueError"),  # and int()s this one unchecked
    ],
)
def test_malformed_pax_values_are_format_errors(tmp_path, records, what):
    data = extended(tarfile.XHDTYPE, pax_records(*records)) + header("usr/f") + END
    if records[0][0] == b"hdrcharset" and hasattr(tarfile, "_header_length_prefix_re"):
        # tarfile's pax parser as rewritten for CVE-2024-6232 (Python 3.11.10, 3.12.6,
        # 3.13) no longer decodes hdrcharset strictly: the member is read, and unpacked
        assert (accepted(tmp_path, data) / "usr/f").is_file()
        return
    refused(tmp_path, data, f"corrupt data archive: malformed tar header: {what}")


def test_huge_and_negative_member_sizes_are_refused(tmp_path):
    # A base-256 size field of ~2**88 bytes on a member whose data tarfile skips (an
    # unknown type): it "read" past the end of the stream 10 KiB at a time, forever (a
    # 1.5 KB data.tar hung the unpacker). A negative size (pax) moved its position back.
    huge = b"\x80" + b"\xff" * 11
    for kind in (b"Z", tarfile.REGTYPE):
        data = header("usr/f", kind, patch={124: huge}) + END
        refused(tmp_path, data, r"member 'usr/f' declares \d+ bytes \(limit")
    neg = extended(tarfile.XHDTYPE, pax_records((b"size", b"-1024"))) + header("usr/f") + END
    refused(tmp_path, neg, "member 'usr/f' declares a negative size")


def test_global_pax_headers_are_bounded_in_total(tmp_path):
    # each under MAX_TAR_HEADER, but tarfile keeps every global record for good
    big = extended(tarfile.XGLTYPE, pax_records((b"comment", b"c" * (MAX_TAR_HEADER // 2))))
    data = b"".join(big + header(f"usr/f{i}") for i in range(3)) + END
    refused(tmp_path, data, "global pax headers of .* bytes in all")


# --- fuzzing -----------------------------------------------------------------------------

_PAX_KEYS = [b"path", b"linkpath", b"size", b"hdrcharset", b"GNU.sparse.map", b"GNU.sparse.major", b"mtime"]
_VALUES = [
    b"",
    b"-1",
    b"1",
    b"99999999999999999999",
    b"1,2,3",
    b"\xff\xfe",
    b"a\0b",
    b"BINARY",
    b"../x",
    b"/x",
]
_TYPES = [b"0", b"1", b"2", b"3", b"5", b"7", b"L", b"K", b"x", b"g", b"S", b"Z", b"V"]


def _hostile_tar(rng: random.Random) -> bytes:
    """A few headers with valid checksums and random types, sizes and pax records."""
    out = b""
    for _ in range(rng.randint(1, 5)):
        kind = rng.choice(_TYPES)
        if kind in (b"x", b"g"):
            recs = pax_records(
                *[(rng.choice(_PAX_KEYS), rng.choice(_VALUES)) for _ in range(rng.randint(1, 3))]
            )
            out += extended(kind, recs)
        elif kind in (b"L", b"K"):
            out += extended(kind, rng.choice(_VALUES) + b"\0")
        else:
            size = rng.choice([0, 3, 600])
            raw = rng.choice([b"", b"", b"\x80" + b"\xff" * 11, b"\x80" + b"\0" * 6 + b"\x10" + b"\0" * 4])
            link = rng.choice(["", "usr/x", "/etc", "../.."])
            name = rng.choice(["usr/x", "usr/", "./", "usr/y/z"])
            out += header(name, kind, size, link, {124: raw} if raw else None) + padded(b"d" * size)
    return out + (END if rng.random() < 0.8 else b"")


def _mutated(rng: random.Random, data: bytes) -> bytes:
    """``data`` cut short, or with a few bytes flipped (and sometimes some appended)."""
    if rng.random() < 0.3:
        return data[: rng.randrange(len(data))]
    b = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        b[rng.randrange(len(b))] ^= 1 << rng.randrange(8)
    return bytes(b) + (rng.randbytes(rng.randint(1, 40)) if rng.random() < 0.1 else b"")


def _fuzz(tmp_path: Path, seed: int, cases: int) -> None:
    rng = random.Random(seed)
    good = tar(
        [Entry("./usr/", "d"), Entry("./usr/" + "n" * 130, data=b"x" * 700), Entry("./usr/l", "l", link="n")]
    )
    for i in range(cases):
        comp = rng.choice(list(COMPRESS))
        where = rng.random()
        if where < 0.4:
            data = COMPRESS[comp](_hostile_tar(rng))
        elif where < 0.7:
            data = COMPRESS[comp](_mutated(rng, good))
        else:
            data = _mutated(rng, COMPRESS[comp](good))
        deb = deb_with_data(tmp_path / f"f{i}_1_amd64.deb", f"data.tar{comp.removesuffix('-frames')}", data)
        out = tmp_path / f"out{i}"
        try:
            unpack_debs([deb], out)
            shutil.rmtree(out)
        except FormatError as e:  # the only error hostile bytes may cause
            assert str(e).startswith(f"{deb.name}: "), e
            assert not out.exists()
        deb.unlink()


def test_fuzzed_debs_raise_only_format_errors(tmp_path):
    _fuzz(tmp_path, 8, 300)


@pytest.mark.slow
def test_fuzzed_debs_raise_only_format_errors_long(tmp_path):
    for seed in range(10):
        _fuzz(tmp_path, 100 + seed, 1000)
