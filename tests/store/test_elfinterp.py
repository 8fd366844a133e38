"""``elfinterp.interpreter``: the PT_INTERP of real ELF files on this machine (a dynamic
program, a static one, a shared library) and of crafted headers (both classes and byte
orders), and never an exception on cut or hostile bytes."""

from __future__ import annotations

import glob
import os
import random
import shutil
import struct
import subprocess
import time

import pytest
from elfkit import crafted

from kiln.store.elfinterp import interpreter

HEAD = 1 << 20  # what the reference scan hands it: its first chunk


def _head(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read(HEAD)


def _readelf_interp(path: str) -> str | None:
    out = subprocess.run(["readelf", "-lW", path], capture_output=True, text=True).stdout
    for line in out.splitlines():
        if "Requesting program interpreter:" in line:
            return line.split("interpreter:", 1)[1].strip().rstrip("]")
    return None


@pytest.mark.skipif(shutil.which("readelf") is None, reason="binutils not installed")
def test_real_files_agree_with_readelf():
    files = [os.path.realpath(shutil.which("true") or "/bin/true")]
    files += [p for p in glob.glob("/lib/x86_64-linux-gnu/libz.so.*") if not os.path.islink(p)][:1]
    if shutil.which("busybox"):
        files.append(os.path.realpath(shutil.which("busybox")))
    seen = set()
    for f in files:
        got = interpreter(_head(f))
        assert got == _readelf_interp(f), f
        seen.add(got is None)
    assert seen == {True, False} or len(files) == 1  # a program with one, and files without


@pytest.mark.parametrize("cls", [1, 2])
@pytest.mark.parametrize("order", ["<", ">"])
def test_crafted_headers_of_both_classes_and_byte_orders(cls, order):
    data = crafted(b"/lib/ld-linux.so.2\0", cls=cls, order=order)
    assert interpreter(data) == "/lib/ld-linux.so.2"


def test_an_interpreter_beyond_the_head_or_cut_is_none():
    data = crafted(b"/lib64/ld-linux-x86-64.so.2\0", at=0x300)
    assert interpreter(data) == "/lib64/ld-linux-x86-64.so.2"
    assert interpreter(data[:0x305]) is None  # the string cut
    assert interpreter(data[:100]) is None  # the program headers cut
    assert interpreter(b"\x7fELF") is None
    assert interpreter(b"#!/bin/sh\n" + bytes(100)) is None


def test_hostile_bytes_never_raise():
    rng = random.Random(1)
    base = crafted(b"/x\0")
    for _ in range(3000):
        data = bytearray(base)
        for _ in range(rng.randint(1, 8)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        r = interpreter(bytes(data[: rng.randint(0, len(data))]))
        assert r is None or isinstance(r, str)
    # huge counts and offsets: bounded by the head, no allocation, no error
    huge = bytearray(crafted(b"/x\0"))
    struct.pack_into("<QHHH", huge, 0x20, 2**63, 0, 0, 0)
    assert interpreter(bytes(huge)) is None


def test_work_is_bounded_whatever_the_header_says():
    # e_phnum 65,535 of null headers: at most a few dozen looked at, not 65,535
    many = bytearray(HEAD)
    many[:64] = crafted(b"/x\0")[:64]
    struct.pack_into("<H", many, 0x38, 0xFFFF)
    start = time.process_time()
    for _ in range(200):
        assert interpreter(bytes(many)) is None
    assert time.process_time() - start < 0.5  # ~65,535 steps each would take seconds


def test_an_interpreter_after_a_loadable_segment_is_not_read():
    data = bytearray(crafted(b"/lib/ld.so\0"))
    assert interpreter(bytes(data)) == "/lib/ld.so"
    interp, load = bytes(data[64:120]), bytes(data[120:176])
    data[64:120], data[120:176] = load, interp
    assert interpreter(bytes(data)) is None  # PT_LOAD, then PT_INTERP: not a valid program
