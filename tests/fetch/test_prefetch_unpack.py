"""``kiln prefetch --unpack`` on hostile and awkward archives: it extracted with
``tarfile.extractall(filter="data")``, which symlink chains past PATH_MAX get around
(CVE-2025-4517: a file written, or overwritten through a hard link, outside the unpack
directory), with no size limit, crashing on an absolute symlink, and losing zip
executable bits. Now it never extracts; the hash must still be the unpacked tree's."""

from __future__ import annotations

import gzip
import io
import os
import tarfile
import tempfile
from pathlib import Path

import pytest
from unpack_archives import path_max_escape, tar, zip_

from kiln.main import main
from kiln.store import nar


def prefetch_unpack(server, capsys, name: str, data: bytes) -> tuple[int, str, str]:
    server.add(name, data)
    code = main(["prefetch", "--unpack", server.url(f"file/{name}")])
    out = capsys.readouterr()
    return code, out.out.strip(), out.err


def tree_hash(root: Path) -> str:
    return nar.hash_path(root)[0].hex


@pytest.fixture
def private_tmp(tmp_path, monkeypatch) -> Path:
    """The temporary directory prefetch works in, at a known place (the escape needs its
    path's length); checked empty afterwards."""
    tmp = tmp_path / "t"
    tmp.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(tmp))
    yield tmp
    assert list(tmp.iterdir()) == []  # nothing left behind


@pytest.mark.parametrize("hardlink", [False, True], ids=["write", "hardlink-overwrite"])
def test_a_path_max_symlink_chain_writes_nothing_outside(server, capsys, tmp_path, private_tmp, hardlink):
    target = tmp_path / "target"
    target.mkdir()
    (target / "victim").write_bytes(b"precious\n")
    dest = f"{private_tmp}/kiln-owned-prefetch-XXXXXXXX/unpacked"  # (mkdtemp's names are 8 characters)
    code, out, err = prefetch_unpack(server, capsys, "poc.tar", path_max_escape(dest, target, hardlink))
    assert sorted(p.name for p in target.iterdir()) == ["victim"]
    assert (target / "victim").read_bytes() == b"precious\n"
    assert code == 1 and out == "" and "is a symlink, not a directory" in err, err


def test_writing_or_linking_through_an_absolute_symlink_is_refused(server, capsys, tmp_path, private_tmp):
    target = tmp_path / "target"
    target.mkdir()
    (target / "victim").write_bytes(b"precious\n")
    for i, members in enumerate(
        [
            [("p/esc", "l", str(target)), ("p/esc/new", "f", b"x")],
            [("p/esc", "l", str(target)), ("p/h", "h", "p/esc/victim"), ("p/h", "f", b"x")],
        ]
    ):
        code, _, err = prefetch_unpack(server, capsys, f"esc{i}.tar.gz", tar(members))
        assert code == 1 and "'p/esc' is a symlink, not a directory" in err and "Traceback" not in err, err
    assert sorted(p.name for p in target.iterdir()) == ["victim"]
    assert (target / "victim").read_bytes() == b"precious\n"


def test_an_absolute_symlink_is_data(server, capsys, tmp_path, private_tmp):
    """It crashed with an internal error (AbsoluteLinkError, exit 70); Nix hashes it."""
    code, out, err = prefetch_unpack(
        server,
        capsys,
        "abs.tar.gz",
        tar([("p/a", "f", b"a\n"), ("p/passwd", "l", "/etc/passwd"), ("p/up", "l", "../../x")]),
    )
    ref = tmp_path / "ref"
    ref.mkdir()
    (ref / "a").write_bytes(b"a\n")
    (ref / "passwd").symlink_to("/etc/passwd")
    (ref / "up").symlink_to("../../x")
    assert code == 0 and out == tree_hash(ref), err


def test_zip_executable_bits_are_kept(server, capsys, tmp_path, private_tmp):
    data = zip_(
        [
            ("p/configure", b"#!/bin/sh\n", 0o100755),
            ("p/README", b"hi\n", 0o100644),
            ("p/dos.txt", b"dos\n", None),
            ("p/sub/", b"", 0o40755),
            ("p/link", b"README", 0o120777),
        ]
    )
    code, out, err = prefetch_unpack(server, capsys, "p.zip", data)
    ref = tmp_path / "ref"
    (ref / "sub").mkdir(parents=True)
    (ref / "configure").write_bytes(b"#!/bin/sh\n")
    (ref / "configure").chmod(0o755)
    (ref / "README").write_bytes(b"hi\n")
    (ref / "dos.txt").write_bytes(b"dos\n")
    (ref / "link").symlink_to("README")
    assert code == 0 and out == tree_hash(ref), err


@pytest.mark.parametrize(
    ("members", "top"),
    [
        ([("only.txt", "f", b"x\n", 0o755)], "file"),  # a single entry of any type is the top
        ([("a", "f", b"1"), ("b/c", "f", b"2")], "root"),
        ([("./", "d"), ("./pkg/", "d"), ("./pkg/x", "f", b"1")], "pkg"),
    ],
)
def test_the_single_top_level_entry_is_stripped(server, capsys, tmp_path, private_tmp, members, top):
    code, out, err = prefetch_unpack(server, capsys, "t.tar.gz", tar(members))
    ref = tmp_path / "ref"
    ref.mkdir()
    with tarfile.open(fileobj=io.BytesIO(tar(members))) as t:
        t.extractall(ref, filter="tar")  # (harmless members: a reference tree)
    want = {"file": ref / "only.txt", "root": ref, "pkg": ref / "pkg"}[top]
    assert code == 0 and out == tree_hash(want), err


def test_a_decompression_bomb_stops_at_the_byte_limit(server, capsys, tmp_path, private_tmp, monkeypatch):
    """64 MiB of zeros in 64 KB of gzip: with an 8 MiB limit, refused (it unpacked all of
    it, whatever the size: 1 MB of .tar.gz wrote 1 GiB)."""
    buf = io.BytesIO()
    with gzip.GzipFile(fileobj=buf, mode="wb") as gz, tarfile.open(fileobj=gz, mode="w|") as t:
        info = tarfile.TarInfo("zeros")
        info.size = 64 << 20
        t.addfile(info, io.BytesIO(bytes(64 << 20)))
    monkeypatch.setenv("KILN_UNPACK_MAX_BYTES", str(8 << 20))
    code, out, err = prefetch_unpack(server, capsys, "bomb.tar.gz", buf.getvalue())
    assert code == 1 and "unpacks to more than 8388608 bytes (KILN_UNPACK_MAX_BYTES" in err, err


def test_too_many_members_are_refused(server, capsys, private_tmp, monkeypatch):
    monkeypatch.setenv("KILN_UNPACK_MAX_ENTRIES", "100")
    members = [(f"p/f{i}", "f", b"") for i in range(200)]
    code, _, err = prefetch_unpack(server, capsys, "many.tar.gz", tar(members))
    assert code == 1 and "more than 100 entries (KILN_UNPACK_MAX_ENTRIES" in err, err
    code, _, err = prefetch_unpack(
        server, capsys, "many.zip", zip_([(f"p/f{i}", b"", None) for i in range(200)])
    )
    assert code == 1 and "more than 100 entries" in err, err


@pytest.mark.parametrize(
    ("members", "says"),
    [
        ([("p/../x", "f", b"x")], "it contains '..'"),
        ([("p/d/f", "f", b"x"), ("p/d", "f", b"y")], "would replace a non-empty directory"),
        ([("p/a", "f", b"x"), ("p/h", "h", "p/missing")], "is not an earlier member"),
        ([("p/" + "n" * 256, "f", b"x")], "a component is 256 bytes"),
    ],
)
def test_what_nix_refuses_is_refused(server, capsys, private_tmp, members, says):
    code, out, err = prefetch_unpack(server, capsys, "bad.tar.gz", tar(members))
    assert code == 1 and out == "" and says in err, err


def test_a_huge_extended_header_is_refused_unread(server, capsys, private_tmp):
    """tarfile reads a pax header of any size into memory: a few KB of gzip could make
    it allocate gigabytes."""
    head = tarfile.TarInfo("././@PaxHeader")
    head.type, head.size = tarfile.XHDTYPE, 1 << 40
    block = head.tobuf(format=tarfile.GNU_FORMAT)
    code, _, err = prefetch_unpack(server, capsys, "pax.tar", block + bytes(4096))
    assert code == 1 and "an extended header of 1099511627776 bytes" in err, err


def test_names_in_errors_are_escaped(server, capsys, private_tmp):
    code, _, err = prefetch_unpack(server, capsys, "esc.tar.gz", tar([("p/\x1b]0;OWNED\x07/../x", "f", b"")]))
    assert code == 1 and "\x1b" not in err and "\\x1b]0;OWNED\\x07" in err, repr(err)


def test_not_an_archive_is_a_clean_error(server, capsys, private_tmp):
    for name, data in [("x.bin", os.urandom(3000)), ("x.gz", gzip.compress(b"not a tar" * 100)), ("e", b"")]:
        code, _, err = prefetch_unpack(server, capsys, name, data)
        assert code == 1 and err.startswith("error:") and "Traceback" not in err, err
