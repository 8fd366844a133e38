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
