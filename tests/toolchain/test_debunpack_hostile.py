"""unpack_debs against hostile .debs: links that point at the host, broken ar and tar
framing, header bombs, stale symlink resolution. Each must fail with a FormatError naming
the package (or be confined to the tree), leaving nothing behind."""

from __future__ import annotations

import io
import os
import resource
import tarfile

import pytest
import zstandard

from kiln.store import nar
from kiln.store.debarchive import MAX_TAR_HEADER, read_ar
from kiln.store.debunpack import unpack_debs
from kiln.store.errors import FormatError

from .debs import Entry, ar, deb_with_data, make_deb, tar


@pytest.mark.parametrize("bin_link", ["/host-victim/bin", "../host-victim/bin"])
def test_added_links_never_leave_the_tree(tmp_path, bin_link):
    # A package ships bin as a link; the host has a bash where it points. add_links must
    # look inside the tree (where nothing is), not at the host.
    victim = tmp_path / "host-victim" / "bin"
    victim.mkdir(parents=True)
    (victim / "bash").write_text("host bash")
    out = tmp_path / "out"
    unpack_debs([make_deb(tmp_path / "a.deb", [Entry("./bin", "l", link=bin_link)])], out)
    assert sorted(os.listdir(victim)) == ["bash"]  # no sh made on the host
    assert not os.path.lexists(out / "bin" / "sh") or os.readlink(out / "bin") != bin_link


def test_added_link_outcome_does_not_depend_on_the_host(tmp_path):
    # Same .deb, with and without a gcc on the host where the tree's absolute usr/bin
    # link points: the trees must be the same (the target means the tree's own path).
    host_bin = tmp_path / "host" / "bin"
    host_bin.mkdir(parents=True)
    entries = [Entry("./usr/", "d"), Entry("./usr/bin", "l", link=str(host_bin))]
    hashes = []
    for i in range(2):
        if i:
            (host_bin / "gcc").write_text("host gcc")
        out = tmp_path / f"out{i}"
        unpack_debs([make_deb(tmp_path / f"a{i}.deb", entries)], out)
        hashes.append(nar.hash_path(out)[0])
    assert hashes[0] == hashes[1]
    assert sorted(os.listdir(host_bin)) == ["gcc"]


def test_added_link_resolves_its_target_inside_the_tree(tmp_path):
    # bin -> usr/bin inside the tree (usrmerge): sh is made next to the tree's bash.
    entries = [
        Entry("./usr/", "d"),
        Entry("./usr/bin/", "d"),
        Entry("./usr/bin/bash", data=b"bash", mode=0o755),
        Entry("./bin", "l", link="usr/bin"),
    ]
    out = tmp_path / "out"
    unpack_debs([make_deb(tmp_path / "a.deb", entries)], out)
    assert os.readlink(out / "usr" / "bin" / "sh") == "bash"


@pytest.mark.parametrize("size", [b"-60", b"+5", b"1_0", b"abc"])
def test_ar_size_must_be_digits(tmp_path, size):
    good = ar([("debian-binary", b"2.0\n")])
    bad = good + b"data.tar        0           0     0     100644  " + size.ljust(10) + b"`\n"
    (tmp_path / "x.deb").write_bytes(bad)
    with open(tmp_path / "x.deb", "rb") as f, pytest.raises(FormatError, match="bad ar member size"):
        list(read_ar(f))


def test_ar_member_longer_than_the_file(tmp_path):
    data = ar([("debian-binary", b"2.0\n"), ("data.tar", tar([Entry("./f", data=b"x")]))])
    (tmp_path / "x.deb").write_bytes(data[:-200])
    with pytest.raises(FormatError, match="truncated ar archive"):
        unpack_debs([tmp_path / "x.deb"], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_tar_cut_at_a_member_boundary(tmp_path):
    whole = tar([Entry(f"./f{i}", data=b"x" * 600) for i in range(4)])
    cut = whole[: 2 * (512 + 1024)]  # two complete members, no end-of-archive blocks
    deb = deb_with_data(tmp_path / "cut.deb", "data.tar", cut)
    with pytest.raises(FormatError, match="cut.deb: truncated data archive"):
        unpack_debs([deb], tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_long_name_header_bomb_is_refused_without_reading_it(tmp_path):
    # A GNU long-name header declaring 512 MiB of zeros: a few KB compressed.
    size = 512 << 20
    hdr = tarfile.TarInfo("././@LongLink")
    hdr.type = tarfile.GNUTYPE_LONGNAME
    hdr.size = size
    raw = hdr.tobuf(format=tarfile.USTAR_FORMAT)
    cctx = zstandard.ZstdCompressor(level=19)
    buf = io.BytesIO()
    with cctx.stream_writer(buf, closefd=False) as w:
        w.write(raw)
        zeros = b"\0" * (1 << 20)
        for _ in range(size >> 20):
            w.write(zeros)
    deb = deb_with_data(tmp_path / "bomb.deb", "data.tar.zst", buf.getvalue())
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    with pytest.raises(FormatError, match=f"bomb.deb: .*limit {MAX_TAR_HEADER}"):
        unpack_debs([deb], tmp_path / "out")
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before < 64 << 10  # KiB
    assert not (tmp_path / "out").exists()


def test_corrupt_zstd_is_a_format_error_naming_the_package(tmp_path):
    good = zstandard.ZstdCompressor().compress(tar([Entry("./f", data=b"x" * 5000)]))
    bad = good[:4] + bytes([good[4] ^ 0xFF]) + good[5:]
    deb = deb_with_data(tmp_path / "z_1_amd64.deb", "data.tar.zst", bad)
    with pytest.raises(FormatError, match="z_1_amd64.deb: corrupt data archive"):
        unpack_debs([deb], tmp_path / "out")


def test_conflicts_name_the_package_and_member(tmp_path):
    a = make_deb(tmp_path / "a.deb", [Entry("./usr/lib/thing/", "d")])
    b = make_deb(tmp_path / "b.deb", [Entry("./usr/lib/thing", data=b"file")])
    with pytest.raises(FormatError, match="b.deb: cannot replace directory usr/lib/thing"):
        unpack_debs([a, b], tmp_path / "out")
    lz = deb_with_data(tmp_path / "old.deb", "data.tar.lzma", b"")
    with pytest.raises(FormatError, match="old.deb: unsupported data member"):
        unpack_debs([lz], tmp_path / "out2")
    selfl = make_deb(tmp_path / "s.deb", [Entry("./f", "h", link="./f")])
    with pytest.raises(FormatError, match="s.deb: hard link f points at itself"):
        unpack_debs([selfl], tmp_path / "out3")


def test_replacing_a_symlink_redirects_later_members(tmp_path):
    # lib -> lib.old, then a later package moves lib -> lib.new and ships lib/b.so:
    # b.so must land where /lib now points, as dpkg would put it.
    a = make_deb(
        tmp_path / "a.deb",
        [Entry("./lib.old/", "d"), Entry("./lib", "l", link="lib.old"), Entry("./lib/a.so", data=b"a")],
    )
    b = make_deb(
        tmp_path / "b.deb",
        [Entry("./lib.new/", "d"), Entry("./lib", "l", link="lib.new"), Entry("./lib/b.so", data=b"b")],
    )
    out = tmp_path / "out"
    unpack_debs([a, b], out)
    assert (out / "lib.new" / "b.so").read_bytes() == b"b"
    assert not (out / "lib.old" / "b.so").exists()
    # Within one package: x is a link, then a file; x/2 must be refused, not written
    # through the old link.
    c = make_deb(
        tmp_path / "c.deb",
        [
            Entry("./d/", "d"),
            Entry("./x", "l", link="d"),
            Entry("./x/1", data=b"1"),
            Entry("./x", data=b"now a file"),
            Entry("./x/2", data=b"2"),
        ],
    )
    with pytest.raises(FormatError, match="needs x to be a directory"):
        unpack_debs([c], tmp_path / "out-c")


def test_an_empty_data_archive_is_not_truncated(tmp_path):
    # open() already reads the end-of-archive block of an empty tar
    deb = deb_with_data(tmp_path / "empty.deb", "data.tar", tar([]))
    unpack_debs([deb], tmp_path / "out")
    assert (tmp_path / "out").is_dir()
