"""A .deb must say what it is, and be what its lock entry pins (audit finding 5): the
control file's Package, Version and Architecture are read (with the same bounded
decoders as the data) and checked against the pin before anything is unpacked; a .deb
without a control file, such as the audit's empty control.tar, is refused."""

from __future__ import annotations

import gzip
import lzma
import random
from pathlib import Path

import pytest
import zstandard

from kiln.store.aptlock import LockEntry
from kiln.store.debpin import DebPin
from kiln.store.debunpack import unpack_debs
from kiln.store.errors import FormatError

from .debs import END, Entry, ar, control_tar, header, make_deb, tar

DATA = tar([Entry("./usr/", "d"), Entry("./usr/f", data=b"f")])


def deb_with_control(path: Path, member: str, control: bytes) -> Path:
    """A .deb with the control member ``member`` holding ``control`` as it is."""
    path.write_bytes(
        ar([("debian-binary", b"2.0\n"), (member, control), ("data.tar.xz", lzma.compress(DATA))])
    )
    return path


def refused(deb: Path, out: Path, match: str, pin: DebPin | None = None) -> None:
    with pytest.raises(FormatError, match=match):
        unpack_debs([deb], out, [pin]) if pin is not None else unpack_debs([deb], out)
    assert not out.exists()


def entry(name: str = "bash", version: str = "5.2.15-2+b13", arch: str = "amd64") -> LockEntry:
    filename = f"pool/main/b/{name}/{name}_{version.partition(':')[2] or version}_{arch}.deb"
    return LockEntry(name, version, arch, "ab" * 32, filename, 1)


def test_a_deb_without_a_control_file_is_refused(tmp_path):
    # the audit's .deb: an empty control.tar was unpacked into the toolchain
    empty = deb_with_control(tmp_path / "e.deb", "control.tar", tar([]))
    refused(empty, tmp_path / "out", r"^e.deb: control.tar: no control file \(expected ./control")
    other = deb_with_control(tmp_path / "o.deb", "control.tar", tar([Entry("./md5sums", data=b"")]))
    refused(other, tmp_path / "out", "^o.deb: control.tar: no control file")
    (tmp_path / "n.deb").write_bytes(ar([("debian-binary", b"2.0\n"), ("data.tar.xz", lzma.compress(DATA))]))
    refused(tmp_path / "n.deb", tmp_path / "out", "^n.deb: expected one control.tar member, found 0")


@pytest.mark.parametrize(
    ("text", "says"),
    [
        (
            b"Package: bash\nArchitecture: amd64\n",
            r"lacks Version \(expected Package, Version and Architecture",
        ),
        (b"Package: bash\nVersion:\nArchitecture: amd64\n", "lacks Version"),
        (
            b"\nPackage: a\n\nVersion: 1\nArchitecture: amd64\n",
            "lacks Version, Architecture",
        ),  # 2nd paragraph
        (b"Package: a\nPackage: b\nVersion: 1\nArchitecture: all\n", "field 'Package' is given twice"),
        (b" Package: a\n", "expected a field before the continuation line"),
        (b"Package a\n", r"expected 'Field: value', found 'Package a'"),
        (b"Package: \xff\n", "expected UTF-8 text"),
    ],
)
def test_a_control_file_that_does_not_say_what_the_package_is_is_refused(tmp_path, text, says):
    deb = deb_with_control(tmp_path / "c.deb", "control.tar", tar([Entry("./control", data=text)]))
    refused(deb, tmp_path / "out", f"^c.deb: control file: {says}")


def test_the_package_must_be_what_the_lock_entry_pins(tmp_path):
    deb = make_deb(
        tmp_path / "b.deb", [Entry("./usr/bin/bash", data=b"x")], name="bash", version="5.2.15-2+b13"
    )
    unpack_debs([deb], tmp_path / "ok", [DebPin.of_entry(entry())])
    refused(
        deb,
        tmp_path / "out",
        r"^b.deb: not the package its lock entry 'dash' pins: expected Package 'dash', found 'bash'; "
        r"expected Version '0.5.12-2', found '5.2.15-2\+b13'; expected Architecture 'all', found 'amd64'$",
        DebPin.of_entry(entry("dash", "0.5.12-2", "all")),
    )
    # a lock entry's version has its epoch, and so must the package's
    epoch = make_deb(tmp_path / "g.deb", [], name="gcc", version="4:12.2.0-3")
    unpack_debs([epoch], tmp_path / "ok2", [DebPin.of_entry(entry("gcc", "4:12.2.0-3"))])
    refused(
        epoch,
        tmp_path / "out",
        r"^g.deb: not the package its lock entry 'gcc' pins: expected Version '12.2.0-3', found '4:12.2.0-3'$",
        DebPin.of_entry(entry("gcc", "12.2.0-3")),
    )


def test_a_pool_file_name_pins_the_version_without_its_epoch(tmp_path):
    deb = make_deb(tmp_path / "g.deb", [], name="gcc", version="4:12.2.0-3")
    for i, name in enumerate(("gcc_12.2.0-3_amd64.deb", "gcc_4%3a12.2.0-3_amd64.deb")):
        unpack_debs([deb], tmp_path / f"ok{i}", [DebPin.of_pool_name(f"pool/main/g/gcc-defaults/{name}")])
    refused(
        deb,
        tmp_path / "out",
        r"^g.deb: not the package its file name 'gcc_12.2.0-4_amd64.deb' pins: "
        r"expected Version '12.2.0-4' \(any epoch\), found '4:12.2.0-3'$",
        DebPin.of_pool_name("pool/main/g/gcc-defaults/gcc_12.2.0-4_amd64.deb"),
    )
    with pytest.raises(
        FormatError, match=r"expected a .deb file name <package>_<version>_<arch>.deb, found 'gcc.deb'"
    ):
        DebPin.of_pool_name("pool/gcc.deb")


@pytest.mark.parametrize(
    ("member", "compress"),
    [
        ("control.tar", lambda b: b),
        ("control.tar.gz", lambda b: gzip.compress(b, mtime=0)),
        ("control.tar.xz", lzma.compress),
        ("control.tar.zst", lambda b: zstandard.ZstdCompressor().compress(b)),
    ],
)
def test_what_dpkg_deb_writes_is_read(tmp_path, member, compress):
    # field names are case-insensitive, continuation lines and other files are fine
    text = b"Package: tool\nversion: 1\nArchitecture: amd64\nDescription: a tool\n more\n .\n"
    control = tar([Entry("./", "d"), Entry("./md5sums", data=b"x  usr/f\n"), Entry("./control", data=text)])
    deb = deb_with_control(tmp_path / "t.deb", member, compress(control))
    unpack_debs([deb], tmp_path / "out", [DebPin("tool", "1", "amd64", "test")])
    assert (tmp_path / "out" / "usr" / "f").read_bytes() == b"f"


def test_a_control_archive_bomb_is_refused_before_it_is_decompressed(tmp_path):
    # 1 GiB of zeros as an md5sums: ~40 KB of zstd, refused at its header
    z = zstandard.ZstdCompressor().compressobj()
    parts = [z.compress(header("./md5sums", size=1 << 30))]
    parts += [z.compress(bytes(1 << 20)) for _ in range(1 << 10)]
    bomb = b"".join(parts) + z.compress(END) + z.flush()
    assert len(bomb) < 100_000
    deb = deb_with_control(tmp_path / "z.deb", "control.tar.zst", bomb)
    refused(deb, tmp_path / "out", r"^z.deb: control.tar.zst: more than 1000 members or 67108864 bytes")


def test_a_corrupt_control_archive_is_a_format_error(tmp_path):
    good = gzip.compress(control_tar("p"), mtime=0)
    rng = random.Random(5)
    for i in range(300):
        data = bytearray(good)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] ^= 1 << rng.randrange(8)
        deb = deb_with_control(
            tmp_path / f"f{i}.deb", "control.tar.gz", bytes(data)[: rng.randrange(len(data) + 1)]
        )
        out = tmp_path / f"out{i}"
        try:
            unpack_debs([deb], out)
        except FormatError as e:  # the only error hostile bytes may cause
            assert str(e).startswith(f"f{i}.deb: "), e
            assert not out.exists()
