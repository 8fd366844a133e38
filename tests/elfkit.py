"""Crafted ELF heads for tests (``elfinterp``, the build's host-loader warning): an ELF
header with a PT_INTERP and a PT_LOAD program header, and the same bytes as ``printf``
octal escapes for a busybox build script to write."""

from __future__ import annotations

import struct


def crafted(interp: bytes, *, cls: int = 2, order: str = "<", at: int = 0x100) -> bytes:
    """An ELF header, a PT_INTERP and a PT_LOAD program header (in that order, as linkers
    write them), ``interp`` at ``at``."""
    if cls == 2:
        ehdr = b"\x7fELF" + bytes([2, 1 if order == "<" else 2, 1]) + bytes(9)
        ehdr += struct.pack(order + "HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 2, 64, 0, 0)
        ph = struct.pack(order + "IIQQQQQQ", 3, 4, at, at, at, len(interp), len(interp), 1)
        ph += struct.pack(order + "IIQQQQQQ", 1, 5, 0, 0, 0, 0x200, 0x200, 0x1000)
    else:
        ehdr = b"\x7fELF" + bytes([1, 1 if order == "<" else 2, 1]) + bytes(9)
        ehdr += struct.pack(order + "HHIIIIIHHHHHH", 2, 3, 1, 0, 52, 0, 0, 52, 32, 2, 40, 0, 0)
        ph = struct.pack(order + "IIIIIIII", 3, at, at, at, len(interp), len(interp), 4, 1)
        ph += struct.pack(order + "IIIIIIII", 1, 0, 0, 0, 0x200, 0x200, 5, 0x1000)
    data = ehdr + ph
    return data + bytes(at - len(data)) + interp


def printf_octal(data: bytes) -> str:
    """``printf`` format text writing ``data`` (every byte an octal escape)."""
    return "".join(f"\\{b:03o}" for b in data)


def crafted_dynamic(
    needed: list[bytes],
    runpath: bytes | None = None,
    *,
    cls: int = 2,
    order: str = "<",
    etype: int = 2,
    interp: bytes | None = b"/lib64/ld-linux-x86-64.so.2",
) -> bytes:
    """An ELF file the loader would read as dynamically linked: a PT_INTERP of ``interp``
    (a program; None: a library), a PT_LOAD over the whole file, a PT_DYNAMIC with
    ``DT_NEEDED`` for each of ``needed``, a ``DT_RUNPATH`` of ``runpath`` (when given),
    ``DT_STRTAB`` and ``DT_STRSZ``; the strings, then the interpreter, after it."""
    strings = b"\0"
    offsets = []
    for name in [*needed, *([runpath] if runpath is not None else [])]:
        offsets.append(len(strings))
        strings += name + b"\0"
    wide = cls == 2
    ehsize, phsize = (64, 56) if wide else (52, 32)
    nph = 3 if interp is not None else 2
    dyn_off = ehsize + nph * phsize
    tags = [(1, off) for off in offsets[: len(needed)]]
    if runpath is not None:
        tags.append((29, offsets[-1]))
    entry = 16 if wide else 8
    dyn_size = (len(tags) + 3) * entry
    str_off = dyn_off + dyn_size
    tags += [(5, str_off), (10, len(strings)), (0, 0)]
    interp_off = str_off + len(strings)
    interp_z = interp + b"\0" if interp is not None else b""
    total = interp_off + len(interp_z)
    if wide:
        ehdr = b"\x7fELF" + bytes([2, 1 if order == "<" else 2, 1]) + bytes(9)
        ehdr += struct.pack(order + "HHIQQQIHHHHHH", etype, 62, 1, 0, 64, 0, 0, 64, 56, nph, 64, 0, 0)
        ph = b""
        if interp is not None:
            ph += struct.pack(
                order + "IIQQQQQQ", 3, 4, interp_off, interp_off, interp_off, len(interp_z), len(interp_z), 1
            )
        ph += struct.pack(order + "IIQQQQQQ", 1, 5, 0, 0, 0, total, total, 0x1000)
        ph += struct.pack(order + "IIQQQQQQ", 2, 6, dyn_off, dyn_off, dyn_off, dyn_size, dyn_size, 8)
        dyn = b"".join(struct.pack(order + "qQ", t, v) for t, v in tags)
    else:
        ehdr = b"\x7fELF" + bytes([1, 1 if order == "<" else 2, 1]) + bytes(9)
        ehdr += struct.pack(order + "HHIIIIIHHHHHH", etype, 3, 1, 0, 52, 0, 0, 52, 32, nph, 40, 0, 0)
        ph = b""
        if interp is not None:
            ph += struct.pack(
                order + "IIIIIIII", 3, interp_off, interp_off, interp_off, len(interp_z), len(interp_z), 4, 1
            )
        ph += struct.pack(order + "IIIIIIII", 1, 0, 0, 0, total, total, 5, 0x1000)
        ph += struct.pack(order + "IIIIIIII", 2, dyn_off, dyn_off, dyn_off, dyn_size, dyn_size, 6, 4)
        dyn = b"".join(struct.pack(order + "iI", t, v) for t, v in tags)
    return ehdr + ph + dyn + strings + interp_z
