"""unpack_debs on small .debs built in the test (our own ar + tar, every compression)."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from kiln.store import nar
from kiln.store.debunpack import read_ar, unpack_debs, unpack_debs_verbose
from kiln.store.errors import FormatError

from .debs import Entry, make_deb


def basic(i: int = 0) -> list[Entry]:
    return [
        Entry("./", "d", mode=0o755),
        Entry("./usr/", "d", mode=0o755),
        Entry("./usr/bin/", "d", mode=0o700),
        Entry("./usr/bin/tool", data=b"#!/bin/sh\necho %d\n" % i, mode=0o4755),  # setuid dropped
        Entry("./usr/bin/tool-alias", "l", link="tool"),
        Entry("./usr/bin/tool-copy", "h", link="./usr/bin/tool"),
        Entry("./usr/share/", "d"),
        Entry("./usr/share/doc.txt", data=b"doc", mode=0o600),
    ]


def listing(d: Path) -> dict[str, tuple]:
    out = {}
    for p in sorted(d.rglob("*")):
        st = os.lstat(p)
        rel = str(p.relative_to(d))
        if stat.S_ISLNK(st.st_mode):
            out[rel] = ("l", os.readlink(p))
        elif stat.S_ISDIR(st.st_mode):
            out[rel] = ("d", oct(stat.S_IMODE(st.st_mode)))
        else:
            out[rel] = ("f", oct(stat.S_IMODE(st.st_mode)), p.read_bytes())
    return out


@pytest.mark.parametrize("comp", ["", ".gz", ".xz", ".bz2", ".zst", ".zst-frames"])
def test_every_compression(tmp_path, comp):
    deb = make_deb(tmp_path / f"p{comp}.deb", basic(), comp)
    unpack_debs([deb], tmp_path / "root")
    assert listing(tmp_path / "root") == {
        "usr": ("d", "0o755"),
        "usr/bin": ("d", "0o755"),
        "usr/bin/tool": ("f", "0o755", b"#!/bin/sh\necho 0\n"),
        "usr/bin/tool-alias": ("l", "tool"),
        "usr/bin/tool-copy": ("f", "0o755", b"#!/bin/sh\necho 0\n"),
        "usr/share": ("d", "0o755"),
        "usr/share/doc.txt": ("f", "0o644", b"doc"),
    }


def test_later_package_wins_and_order_matters(tmp_path):
    a = make_deb(tmp_path / "a.deb", basic(1))
    b = make_deb(tmp_path / "b.deb", basic(2), ".zst")
    unpack_debs([a, b], tmp_path / "ab")
    unpack_debs([b, a], tmp_path / "ba")
    assert (tmp_path / "ab/usr/bin/tool").read_bytes().endswith(b"2\n")
    assert (tmp_path / "ba/usr/bin/tool").read_bytes().endswith(b"1\n")


def test_deterministic_nar_hash(tmp_path):
    debs = [
        make_deb(tmp_path / "a.deb", basic(1)),
        make_deb(tmp_path / "b.deb", [Entry("./bin/", "d"), Entry("./bin/bash", data=b"x", mode=0o755)]),
    ]
    old = os.umask(0o077)
    try:
        unpack_debs(debs, tmp_path / "one")
    finally:
        os.umask(old)
    unpack_debs(debs, tmp_path / "two")
    assert nar.hash_path(tmp_path / "one")[0] == nar.hash_path(tmp_path / "two")[0]


def test_alternative_links_added(tmp_path):
    deb = make_deb(
        tmp_path / "t.deb",
        [
            Entry("./bin/bash", data=b"", mode=0o755),
            Entry("./usr/bin/gawk", data=b"", mode=0o755),
            Entry("./usr/bin/gcc", "l", link="gcc-12"),
            Entry("./usr/bin/gcc-12", data=b"", mode=0o755),
            Entry("./usr/bin/g++", "l", link="g++-12"),
            Entry("./usr/bin/g++-12", data=b"", mode=0o755),
            Entry("./usr/bin/xz", data=b"", mode=0o755),
        ],
    )
    notes = unpack_debs_verbose([deb], tmp_path / "r")
    r = tmp_path / "r"
    assert os.readlink(r / "bin/sh") == "bash"
    assert os.readlink(r / "usr/bin/awk") == "gawk"
    assert os.readlink(r / "usr/bin/cc") == "gcc"
    assert os.readlink(r / "usr/bin/c++") == "g++"
    assert os.readlink(r / "usr/bin/lzma") == "xz"
    assert not (r / "usr/bin/which").is_symlink()  # target absent: no dangling link
    assert "added link bin/sh -> bash" in notes


def test_existing_link_is_not_replaced(tmp_path):
    deb = make_deb(
        tmp_path / "t.deb",
        [Entry("./bin/dash", data=b""), Entry("./bin/bash", data=b""), Entry("./bin/sh", "l", link="dash")],
    )
    unpack_debs([deb], tmp_path / "r")
    assert os.readlink(tmp_path / "r/bin/sh") == "dash"


@pytest.mark.parametrize(
    "entries, what",
    [
        ([Entry("/etc/passwd", data=b"x")], "absolute"),
        ([Entry("./usr/../../etc/passwd", data=b"x")], "'..'"),
        ([Entry("./up", "l", link="../.."), Entry("./up/escaped", data=b"x")], "escapes"),
    ],
)
def test_refuses_paths_outside_root(tmp_path, entries, what):
    deb = make_deb(tmp_path / "evil.deb", entries)
    out = tmp_path / "root"
    with pytest.raises(FormatError, match=what):
        unpack_debs([deb], out)
    assert not out.exists()  # nothing half-unpacked is left behind
    assert sorted(p.name for p in tmp_path.iterdir()) == ["evil.deb"]


def test_absolute_symlink_parent_stays_inside_root(tmp_path):
    deb = make_deb(
        tmp_path / "p.deb",
        [
            Entry("./lib64", "l", link="/usr/lib64"),
            Entry("./usr/lib64/", "d"),
            Entry("./lib64/ld.so", data=b"ld"),
        ],
    )
    unpack_debs([deb], tmp_path / "r")
    assert (tmp_path / "r/usr/lib64/ld.so").read_bytes() == b"ld"
    assert not Path("/usr/lib64/ld.so").exists() or Path("/usr/lib64/ld.so").read_bytes() != b"ld"


def test_devices_are_skipped_with_a_note(tmp_path):
    deb = make_deb(
        tmp_path / "d.deb",
        [Entry("./dev/", "d"), Entry("./dev/null", "c"), Entry("./dev/fifo", "p"), Entry("./ok", data=b"1")],
    )
    notes = unpack_debs_verbose([deb], tmp_path / "r")
    assert sorted(os.listdir(tmp_path / "r/dev")) == []
    assert any("dev/null" in n for n in notes) and any("dev/fifo" in n for n in notes)


def test_not_a_deb(tmp_path):
    bad = tmp_path / "bad.deb"
    bad.write_bytes(b"PK\x03\x04 not an ar file")
    with pytest.raises(FormatError, match="not an ar archive"):
        unpack_debs([bad], tmp_path / "r")
    truncated = tmp_path / "trunc.deb"
    truncated.write_bytes(make_deb(tmp_path / "ok.deb", basic()).read_bytes()[:300])
    with pytest.raises(FormatError):
        unpack_debs([truncated], tmp_path / "r2")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r2").exists()


def test_target_must_not_exist(tmp_path):
    deb = make_deb(tmp_path / "a.deb", basic())
    (tmp_path / "r").mkdir()
    (tmp_path / "r" / "keep").write_text("mine")
    with pytest.raises(FormatError, match="already exists"):
        unpack_debs([deb], tmp_path / "r")
    assert (tmp_path / "r" / "keep").read_text() == "mine"


def test_read_ar_members(tmp_path):
    deb = make_deb(tmp_path / "a.deb", basic(), ".gz")
    with open(deb, "rb") as f:
        assert [m.name for m in read_ar(f)] == ["debian-binary", "control.tar.gz", "data.tar.gz"]


def test_matches_dpkg_deb(tmp_path):
    """Cross-check against the host's dpkg-deb (only as a test oracle, never used by kiln)."""
    import shutil
    import subprocess

    if not shutil.which("dpkg-deb"):
        pytest.skip("dpkg-deb not installed")
    deb = make_deb(tmp_path / "a.deb", basic(3), ".xz")
    unpack_debs([deb], tmp_path / "kiln")
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp_path / "dpkg")], check=True)
    ours, theirs = listing(tmp_path / "kiln"), listing(tmp_path / "dpkg")
    assert ours.keys() == theirs.keys()
    for k, v in ours.items():
        assert v[0] == theirs[k][0]
        if v[0] != "d":  # directory modes are normalised to 0755 on purpose
            assert v[-1] == theirs[k][-1]
