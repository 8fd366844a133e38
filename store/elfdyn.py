"""The shared libraries an ELF file needs (``DT_NEEDED``) and where it asks the loader to
look for them (``DT_RUNPATH``, ``DT_RPATH``), read from its dynamic segment.

Pure of policy, small in I/O: ``dynamic(fd)`` reads the ELF header, the program header
table, the ``PT_DYNAMIC`` segment and the string table it names, each with one
``pread`` of bounded size, and never raises on a malformed file (a build output is
hostile data): anything that does not add up gives None, as a file that is no ELF, or a
static one, does. Bounds: at most ``MAX_HEADERS`` program headers, a dynamic segment of
at most ``MAX_DYNAMIC`` bytes (so at most a few thousand entries), each string read
alone, at most ``MAX_STRING`` bytes. The string
table's address (``DT_STRTAB``, a virtual address) is mapped to a file offset through
the ``PT_LOAD`` segment holding it. Both classes (32/64-bit) and byte orders are read.

Used by ``libcheck`` to warn about a program that needs a library a dependency holds
but has no run path to it (it fails, or loads another copy, when run).
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

_PT_LOAD, _PT_DYNAMIC = 1, 2
_DT_NULL, _DT_NEEDED, _DT_STRTAB, _DT_STRSZ, _DT_RPATH, _DT_RUNPATH = 0, 1, 5, 10, 15, 29
_ET_EXEC, _ET_DYN = 2, 3
MAX_HEADERS = 64
MAX_DYNAMIC = 64 << 10
MAX_STRING = 4096


@dataclass(frozen=True, slots=True)
class Dynamic:
    """What the loader reads of a dynamically linked ELF file: the libraries it needs, in
    order, and its run path entries (``DT_RUNPATH`` then ``DT_RPATH``), as written
    (``$ORIGIN`` unexpanded). Names that are not UTF-8 are kept as surrogate escapes."""

    needed: tuple[str, ...]
    runpath: tuple[str, ...]


def dynamic(fd: int) -> Dynamic | None:
    """The ``Dynamic`` of the ELF file open at ``fd``, or None (module docstring)."""
    try:
        return _read(fd)
    except (OSError, struct.error, ValueError, OverflowError):
        return None


def _read(fd: int) -> Dynamic | None:
    head = os.pread(fd, 64, 0)
    if len(head) < 52 or head[:4] != b"\x7fELF" or head[4] not in (1, 2) or head[5] not in (1, 2):
        return None
    wide = head[4] == 2
    o = "<" if head[5] == 1 else ">"
    if struct.unpack_from(o + "H", head, 16)[0] not in (_ET_EXEC, _ET_DYN):
        return None
    if wide:
        phoff, entsize, count = (
            struct.unpack_from(o + "Q", head, 0x20)[0],
            *struct.unpack_from(o + "HH", head, 0x36),
        )
        ph_fmt, need = o + "IIQQQQQQ", 56
    else:
        phoff, entsize, count = (
            struct.unpack_from(o + "I", head, 0x1C)[0],
            *struct.unpack_from(o + "HH", head, 0x2A),
        )
        ph_fmt, need = o + "IIIIIIII", 32
    if entsize < need or not 0 < count <= MAX_HEADERS:
        return None
    table = os.pread(fd, entsize * count, phoff)
    loads: list[tuple[int, int, int]] = []  # (vaddr, filesz, offset)
    dyn: tuple[int, int] | None = None  # (offset, size)
    for i in range(count):
        if (i + 1) * entsize > len(table):
            return None
        f = struct.unpack_from(ph_fmt, table, i * entsize)
        if wide:  # p_type, p_flags, p_offset, p_vaddr, p_paddr, p_filesz, ...
            kind, off, vaddr, size = f[0], f[2], f[3], f[5]
        else:  # p_type, p_offset, p_vaddr, p_paddr, p_filesz, ...
            kind, off, vaddr, size = f[0], f[1], f[2], f[4]
        if kind == _PT_LOAD:
            loads.append((vaddr, size, off))
        elif kind == _PT_DYNAMIC:
            dyn = (off, size)
    if dyn is None or not 0 < dyn[1] <= MAX_DYNAMIC:
        return None
    data = os.pread(fd, dyn[1], dyn[0])
    step, fmt = (16, o + "qQ") if wide else (8, o + "iI")
    entries: list[tuple[int, int]] = []  # (tag, value)
    for at in range(0, len(data) - step + 1, step):
        tag, val = struct.unpack_from(fmt, data, at)
        if tag == _DT_NULL:
            break
        entries.append((tag, val))
    strtab = next((v for t, v in entries if t == _DT_STRTAB), None)
    strsz = next((v for t, v in entries if t == _DT_STRSZ), None)
    if strtab is None or strsz is None or strsz <= 0:
        return None
    where = next((off + strtab - va for va, size, off in loads if va <= strtab < va + size), None)
    if where is None:
        return None

    def text(at: int) -> str | None:
        # each string read where it is (a program's string table holds every symbol
        # name too: megabytes, of which only these few strings are wanted)
        if not 0 <= at < strsz:
            return None
        got = os.pread(fd, min(MAX_STRING, strsz - at), where + at)
        end = got.find(b"\0")
        return got[:end].decode("utf-8", "surrogateescape") if end > 0 else None

    needed = tuple(t for tag, v in entries if tag == _DT_NEEDED and (t := text(v)) is not None)
    paths = [t for want in (_DT_RUNPATH, _DT_RPATH) for tag, v in entries if tag == want and (t := text(v))]
    return Dynamic(needed, tuple(e for p in paths for e in p.split(":") if e))
