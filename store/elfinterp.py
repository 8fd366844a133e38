"""The program interpreter (``PT_INTERP``) an ELF file asks for, from its first bytes.

Pure: bytes in, a path or None out; never raises on any input (a build output is
hostile data). Used by the reference scan (``refscan``) to tell a build that a program
it made will be started by the *host's* loader (``/lib64/ld-linux-x86-64.so.2``) rather
than one in the store: linked without the toolchain's ``cc`` wrappers, it runs with
whatever C library the machine has (docs/toolchain.md, "Run time").

Only what the head holds is read: the ELF header, the program header table and the
interpreter string must lie inside ``head`` (the scan's first 1 MiB chunk; linkers put
them in the first page). A file whose table or string lies further, or is cut, gives
None, as a file without ``PT_INTERP`` (static programs, shared libraries, objects) does;
so does one whose ``PT_INTERP`` comes after a ``PT_LOAD`` (the ELF specification puts it
before any) or past the first 64 program headers: bounded work per file whatever its
header says. Both classes (32/64-bit) and byte orders are read.
"""

from __future__ import annotations

from typing import Literal

_MAGIC = b"\x7fELF"
_PT_LOAD, _PT_INTERP = 1, 3
#: program headers looked at (real programs have ~13; a hostile e_phnum of 65,535 must
#: not cost 65,535 steps per file)
_MAX_HEADERS = 64
#: an interpreter path longer than this is not one (PATH_MAX)
_MAX_INTERP = 4096


def interpreter(head: bytes) -> str | None:
    """The ``PT_INTERP`` path in an ELF file starting with ``head``, else None (see the
    module docstring). Bytes that are not UTF-8 are kept as surrogate escapes."""
    if len(head) < 52 or head[:4] != _MAGIC:
        return None
    cls, order = head[4], head[5]
    if cls not in (1, 2) or order not in (1, 2):
        return None
    endian: Literal["little", "big"] = "little" if order == 1 else "big"

    def u(off: int, size: int) -> int:
        return int.from_bytes(head[off : off + size], endian)

    if cls == 2:  # ELF64: e_phoff at 0x20 (8), e_phentsize 0x36, e_phnum 0x38
        if len(head) < 64:
            return None
        phoff, entsize, count = u(0x20, 8), u(0x36, 2), u(0x38, 2)
        need, at_off, at_size, word = 56, 8, 32, 8
    else:  # ELF32: e_phoff at 0x1C (4), e_phentsize 0x2A, e_phnum 0x2C
        phoff, entsize, count = u(0x1C, 4), u(0x2A, 2), u(0x2C, 2)
        need, at_off, at_size, word = 32, 4, 16, 4
    if entsize < need or phoff <= 0:
        return None
    for i in range(min(count, _MAX_HEADERS)):
        ph = phoff + i * entsize
        if ph + need > len(head):
            return None
        kind = u(ph, 4)
        if kind == _PT_LOAD:  # PT_INTERP must come before any loadable segment
            return None
        if kind != _PT_INTERP:
            continue
        off, size = u(ph + at_off, word), u(ph + at_size, word)
        if size == 0 or size > _MAX_INTERP or off + size > len(head):
            return None
        raw = head[off : off + size].split(b"\0", 1)[0]
        return raw.decode("utf-8", "surrogateescape") if raw else None
    return None
