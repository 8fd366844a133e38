"""``store/elfdyn.py``: the libraries an ELF file needs and its run path, from crafted
files (both classes, both byte orders), differentially against binutils' ``readelf -d``
on the host's own programs and libraries, and never an exception on damaged input."""

from __future__ import annotations

import glob
import os
import random
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parents[1]))  # tests/elfkit.py
from elfkit import crafted, crafted_dynamic  # noqa: E402

from kiln.store.elfdyn import Dynamic, dynamic  # noqa: E402


def _read(path: Path) -> Dynamic | None:
    fd = os.open(path, os.O_RDONLY)
    try:
        return dynamic(fd)
    finally:
        os.close(fd)


@pytest.mark.parametrize("cls", [1, 2])
@pytest.mark.parametrize("order", ["<", ">"])
def test_crafted(tmp_path: Path, cls: int, order: str) -> None:
    f = tmp_path / "prog"
    f.write_bytes(
        crafted_dynamic([b"libgreet.so.1", b"libc.so.6"], b"$ORIGIN/../lib:/x/lib", cls=cls, order=order)
    )
    assert _read(f) == Dynamic(("libgreet.so.1", "libc.so.6"), ("$ORIGIN/../lib", "/x/lib"))
    f.write_bytes(crafted_dynamic([b"libz.so.1"], cls=cls, order=order, etype=3))
    assert _read(f) == Dynamic(("libz.so.1",), ())


def test_not_dynamic_or_not_elf(tmp_path: Path) -> None:
    f = tmp_path / "f"
    for data in (
        b"",
        b"#!/bin/sh\n",
        crafted(b"/lib64/ld-linux-x86-64.so.2\0"),
        crafted_dynamic([b"l"], etype=1),
    ):
        f.write_bytes(data)
        assert _read(f) is None, data[:20]


def test_damaged_files_never_raise(tmp_path: Path) -> None:
    good = crafted_dynamic([b"libgreet.so.1"], b"/a/lib")
    rng = random.Random(35)
    f = tmp_path / "f"
    for i in range(3000):
        data = bytearray(good)
        if i % 3 == 0:
            data = data[: rng.randrange(1, len(data))]
        for _ in range(rng.randrange(1, 6)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        f.write_bytes(bytes(data))
        got = _read(f)
        assert got is None or isinstance(got, Dynamic)


@pytest.mark.skipif(shutil.which("readelf") is None, reason="needs binutils' readelf")
def test_agrees_with_readelf_on_the_hosts_files() -> None:
    files = sorted(glob.glob("/usr/bin/*"))[:300] + sorted(glob.glob("/usr/lib/x86_64-linux-gnu/*.so*"))[:300]
    checked = 0
    for name in files:
        p = Path(name)
        if p.is_symlink() or not p.is_file() or not os.access(p, os.R_OK) or p.read_bytes()[:4] != b"\x7fELF":
            continue
        out = subprocess.run(["readelf", "-dW", name], capture_output=True, text=True).stdout
        needed = tuple(re.findall(r"\(NEEDED\)\s+Shared library: \[(.*?)\]", out))
        runpath = [
            e
            for s in re.findall(r"\((?:RUNPATH|RPATH)\)\s+Library \w+: \[(.*?)\]", out)
            for e in s.split(":")
            if e
        ]
        got = _read(p)
        if got is None:
            assert not needed, name
            continue
        assert got.needed == needed and sorted(got.runpath) == sorted(runpath), name
        checked += 1
    assert checked >= 20
