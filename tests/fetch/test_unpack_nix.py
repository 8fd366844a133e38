"""``kiln prefetch --unpack`` against ``nix-prefetch-url --unpack`` (Debian's nix-bin) on
the same archives: the same NAR hash, or both refusing. kiln never extracts; Nix unpacks
with libarchive, whose rules (replacing, hard links, symlinks as data, zip modes) kiln's
in-memory tree follows."""

from __future__ import annotations

import shutil
import subprocess
import tarfile

import pytest
import zstandard
from unpack_archives import git_archive, tar, zip_

from kiln.main import main

pytestmark = pytest.mark.nix

EXE = 0o100755
CASES = {
    "exec.tar.gz": lambda tmp: tar(
        [("p/configure", "f", b"#!/bin/sh\n", 0o755), ("p/g", "f", b"g", 0o011), ("p/README", "f", b"hi\n")]
    ),
    "xz.tar.xz": lambda tmp: tar([("p/a", "f", b"x" * 5000, 0o700), ("p/d", "d")], mode="w:xz"),
    "zstd.tar.zst": lambda tmp: zstandard.compress(
        tar([("p/a", "f", b"z" * 3000, 0o755), ("p/l", "l", "a")], mode="w")
    ),
    "gnu-long.tar.bz2": lambda tmp: tar(
        [("p/" + "n" * 150, "f", b"long"), ("p/l", "l", "t" * 200)], mode="w:bz2", fmt=tarfile.GNU_FORMAT
    ),
    "abs-symlink.tar.gz": lambda tmp: tar(
        [("p/a", "f", b"x"), ("p/abs", "l", "/etc/passwd"), ("p/up", "l", "../q")]
    ),
    "exec.zip": lambda tmp: zip_(
        [("p/run.sh", b"#!/bin/sh\n", EXE), ("p/doc", b"d", 0o100644), ("p/sub/", b"", 0o40755)]
    ),
    "modes.zip": lambda tmp: zip_(
        [
            ("p/dos", b"a", None),
            ("p/gx", b"g", 0o100011),
            ("p/untyped", b"u", 0o700),
            ("p/l", b"dos", 0o120777),
        ]
    ),
    "windows.zip": lambda tmp: zip_([("p\\a", b"a", None), ("p\\b\\c", b"c", None), ("p/x\\y", b"y", None)]),
    "fifo-mode.zip": lambda tmp: zip_([("p/from-a-pipe", b"data", 0o010755), ("p/z", b"z", 0o100644)]),
    "single-file.tar.gz": lambda tmp: tar([("only.txt", "f", b"hello\n", 0o755)]),
    "single-link.tar.gz": lambda tmp: tar([("only", "l", "/etc/passwd")]),
    "two-top.tar.gz": lambda tmp: tar([("a", "f", b"1"), ("b/c", "f", b"2", 0o700)]),
    "dot-prefix.tar.gz": lambda tmp: tar([("./", "d"), ("./pkg/", "d"), ("./pkg/a", "f", b"1")]),
    "absolute-names.tar.gz": lambda tmp: tar([("/t/x", "f", b"x"), ("/t/y", "l", "x")]),
    "implicit-dirs.tar.gz": lambda tmp: tar([("top/x/y/z", "f", b"deep"), ("top/e", "f", b"e", 0o100)]),
    "order.tar.gz": lambda tmp: tar(
        [("t/b", "f", b"b"), ("t/B", "f", b"B"), ("t/a", "d"), ("t/é", "f", b"e")]
    ),
    "replacing.tar.gz": lambda tmp: tar(
        [
            ("t/dup", "f", b"first"),
            ("t/dup", "f", b"second", 0o755),
            ("t/was-file", "f", b"x"),
            ("t/was-file", "d"),
            ("t/was-file/in", "f", b"y"),
            ("t/was-empty-dir", "d"),
            ("t/was-empty-dir", "l", "x"),
            ("t/was-link", "l", "y"),
            ("t/was-link", "d"),
        ]
    ),
    "hardlinks.tar.gz": lambda tmp: tar(
        [
            ("t/a", "f", b"A", 0o700),
            ("t/b", "h", "t/a"),
            ("t/c", "h", "t/b"),
            ("t/a", "f", b"replaced"),
            ("t/s", "l", "target"),
            ("t/hs", "h", "t/s"),
        ]
    ),
    "git-archive.tar.gz": lambda tmp: git_archive(tmp, "tar.gz"),
    "git-archive.zip": lambda tmp: git_archive(tmp, "zip"),
    # both refuse these
    "dotdot.tar.gz": lambda tmp: tar([("t/../x", "f", b"x")]),
    "through-symlink.tar.gz": lambda tmp: tar([("t/d", "d"), ("t/l", "l", "d"), ("t/l/f", "f", b"x")]),
    "over-nonempty-dir.tar.gz": lambda tmp: tar([("t/a/b", "f", b"y"), ("t/a", "f", b"x")]),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_prefetch_unpack_agrees_with_nix(server, capsys, tmp_path, name):
    if not shutil.which("nix-prefetch-url"):
        pytest.skip("nix-prefetch-url not installed")
    server.add(name, CASES[name](tmp_path))
    url = server.url(f"file/{name}")
    code = main(["prefetch", "--unpack", "--format", "nix32", url])
    out = capsys.readouterr()
    theirs = subprocess.run(
        ["nix-prefetch-url", "--unpack", url], capture_output=True, text=True, timeout=120
    )
    if theirs.returncode != 0:
        assert code == 1 and out.out == "", f"nix refused ({theirs.stderr.strip()}), kiln printed {out.out}"
        return
    assert code == 0, out.err
    assert out.out.strip() == theirs.stdout.strip()
