"""Test data: a crafted ELF head with a PT_INTERP, as ``printf`` octal escapes for a
busybox build script (``crafted_octal``)."""

from __future__ import annotations

import struct


def crafted_octal(interp: bytes) -> str:
    """``printf`` format text writing a little ELF64 head whose PT_INTERP is ``interp``."""
    at = 0x100
    ehdr = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 62, 1, 0, 64, 0, 0, 64, 56, 1, 64, 0, 0)
    ph = struct.pack("<IIQQQQQQ", 3, 4, at, at, at, len(interp), len(interp), 1)
    data = ehdr + ph
    data += bytes(at - len(data)) + interp
    return "".join(f"\\{b:03o}" for b in data)
