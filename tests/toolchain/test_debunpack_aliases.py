"""What the tree's symlinks and tar's size fields can make the unpacker do behind its own
checks (findings of a fuzz audit): the links added after the last package are counted in
the unpack's ``MAX_RESOLVE_STEPS``; a hard link whose source and target are one file
through a symlinked directory is refused (it deleted its own source); and a member that
carries no data (link, directory, device, fifo) but declares a size is refused (tarfile
would read what the size covers as the next headers). Each refusal is a ``FormatError``
naming the package, with nothing left behind."""

from __future__ import annotations

import tarfile
from pathlib import Path

import pytest

from kiln.store import debunpack
from kiln.store.debunpack import unpack_debs, unpack_debs_verbose
from kiln.store.errors import FormatError

from .debs import END, Entry, deb_with_data, extended, header, make_deb, pax_records


def refused(debs: list[Path], out: Path, match: str) -> None:
    with pytest.raises(FormatError, match=match):
        unpack_debs(debs, out)
    assert not out.exists() and not out.is_symlink()


# --- the links added after the last package -------------------------------------------------


def wandering_links_deb(path: Path) -> Path:
    """``usr/bin/gawk`` is a symlink to ``gawk.1`` through 30 hops of ``L``, a symlink
    whose target wanders ``s/../s/../...`` (~400 components): unpacking it costs a few
    steps per member, but deciding whether ``usr/bin/awk -> gawk`` can be made costs
    ~12,000 (and ``nawk`` as much again)."""
    entries = [
        Entry("./s/", "d"),
        Entry("./L", "l", link=("s/../" * 200).rstrip("/")),
        Entry("./usr/", "d"),
        Entry("./usr/bin/", "d"),
        Entry("./usr/bin/gawk.1", data=b"#!/bin/sh\n", mode=0o755),
        Entry("./usr/bin/gawk", "l", link="/" + "L/" * 30 + "usr/bin/gawk.1"),
    ]
    return make_deb(path, entries, name="links")


def test_the_links_added_after_unpacking_count_towards_the_resolve_bound(tmp_path, monkeypatch):
    # add_links resolved without the unpack's budget: a 5 KB .deb of 826 such members made
    # it do 26 million lstat calls (65 s of CPU) after every member had fitted the bound
    deb = wandering_links_deb(tmp_path / "links_1_amd64.deb")
    monkeypatch.setattr(debunpack, "MAX_RESOLVE_STEPS", 10_000)
    refused(
        [deb],
        tmp_path / "out",
        r"^after unpacking links_1_amd64.deb, adding the link /usr/bin/awk: resolving paths took "
        r"more than 10000 steps in all",
    )
    # with room for them, the same package unpacks and the links are judged as before
    monkeypatch.setattr(debunpack, "MAX_RESOLVE_STEPS", 100_000)
    notes = unpack_debs_verbose([deb], tmp_path / "fits")
    assert "added link usr/bin/awk -> gawk" in notes
    assert (tmp_path / "fits" / "usr" / "bin" / "awk").is_symlink()


def test_the_link_bound_error_names_the_number_of_packages(tmp_path, monkeypatch):
    deb = wandering_links_deb(tmp_path / "links_1_amd64.deb")
    other = make_deb(tmp_path / "o_1_amd64.deb", [Entry("./o", data=b"o")], name="o")
    monkeypatch.setattr(debunpack, "MAX_RESOLVE_STEPS", 10_000)
    refused([other, deb], tmp_path / "out", r"^after unpacking 2 packages, adding the link /usr/bin/awk: ")


# --- a hard link to itself through a symlinked directory -----------------------------------


def test_a_hard_link_to_itself_through_a_symlinked_directory_is_refused(tmp_path):
    # a/f and b/f are one file: the link's target was deleted ("replaced") before being
    # copied from, and the unpack failed with a bare FileNotFoundError naming neither
    # the package nor the member
    deb = make_deb(
        tmp_path / "hl.deb",
        [
            Entry("./b", "d", mode=0o755),
            Entry("./b/f", data=b"hello"),
            Entry("./a", "l", link="b"),
            Entry("./a/f", "h", link="./b/f"),
        ],
    )
    refused(
        [deb],
        tmp_path / "out",
        r"^hl.deb: hard link a/f -> ./b/f: both name the same file \(b/f\) through symlinks",
    )


def test_hard_links_through_a_symlinked_directory_to_another_file_still_work(tmp_path):
    deb = make_deb(
        tmp_path / "hl.deb",
        [
            Entry("./b", "d", mode=0o755),
            Entry("./b/f", data=b"hello"),
            Entry("./a", "l", link="b"),
            Entry("./a/g", "h", link="./b/f"),  # target through the link: b/g
            Entry("./c", "h", link="./a/f"),  # source through the link: b/f
        ],
    )
    unpack_debs([deb], tmp_path / "out")
    assert (tmp_path / "out" / "b" / "g").read_bytes() == b"hello"
    assert (tmp_path / "out" / "c").read_bytes() == b"hello"


# --- members without data that declare a size ----------------------------------------------

#: a header hidden where the data of a dataless member would be: tarfile reads it as the
#: next member, GNU tar and dpkg skip it as data
HIDDEN = header("./hidden", tarfile.REGTYPE, 0)

DATALESS = {
    "symlink": header("./l", tarfile.SYMTYPE, 512, link="x"),
    "hard link": header("./h", tarfile.LNKTYPE, 512, link="./f"),
    "directory": header("./d/", tarfile.DIRTYPE, 512),
    "fifo": header("./p", tarfile.FIFOTYPE, 512),
    "char device": header("./c", tarfile.CHRTYPE, 512),
}


@pytest.mark.parametrize("kind", sorted(DATALESS))
def test_a_member_without_data_that_declares_a_size_is_refused(tmp_path, kind):
    data = header("./f", tarfile.REGTYPE, 0) + DATALESS[kind] + HIDDEN + END
    deb = deb_with_data(tmp_path / "t_1_amd64.deb", "data.tar", data)
    refused(
        [deb],
        tmp_path / "out",
        r"^t_1_amd64.deb: corrupt data archive: member '\./\w+' of type b'.' \(no data\) declares 512 bytes",
    )


def test_a_pax_size_on_a_member_without_data_is_refused(tmp_path):
    # the pax record replaces the header's size of 0; tarfile skips no data for a symlink
    pax = extended(tarfile.XHDTYPE, pax_records((b"size", b"512")))
    data = pax + header("./l", tarfile.SYMTYPE, 0, link="x") + HIDDEN + END
    deb = deb_with_data(tmp_path / "t_1_amd64.deb", "data.tar", data)
    refused([deb], tmp_path / "out", r"^t_1_amd64.deb: corrupt data archive: member '\./l' .* declares 512")


def test_members_without_data_and_a_size_of_zero_unpack(tmp_path):
    data = b"".join(
        [
            header("./f", tarfile.REGTYPE, 0),
            header("./l", tarfile.SYMTYPE, 0, link="f"),
            header("./h", tarfile.LNKTYPE, 0, link="./f"),
            header("./d/", tarfile.DIRTYPE, 0),
            END,
        ]
    )
    deb = deb_with_data(tmp_path / "t_1_amd64.deb", "data.tar", data)
    unpack_debs([deb], tmp_path / "out")
    assert (tmp_path / "out" / "l").is_symlink() and (tmp_path / "out" / "d").is_dir()
