"""Build small .deb files for tests: our own ar writer plus tarfile, every compression."""

from __future__ import annotations

import bz2
import gzip
import io
import lzma
import tarfile
from dataclasses import dataclass
from pathlib import Path

import zstandard


@dataclass(frozen=True)
class Entry:
    """One data.tar member. kind: f (file), d (dir), l (symlink), h (hard link), c (char dev), p (fifo)."""

    name: str
    kind: str = "f"
    data: bytes = b""
    mode: int = 0o644
    link: str = ""


def ar(members: list[tuple[str, bytes]]) -> bytes:
    out = [b"!<arch>\n"]
    for name, data in members:
        header = (
            f"{name:<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}".encode() + b"`\n"
        )  # name mtime uid gid mode size magic
        assert len(header) == 60
        out += [header, data, b"\n" if len(data) % 2 else b""]
    return b"".join(out)


def tar(entries: list[Entry]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.GNU_FORMAT) as t:
        for e in entries:
            info = tarfile.TarInfo(e.name)
            info.mode = e.mode
            info.uid = info.gid = 0
            info.uname = info.gname = "root"
            if e.kind == "f":
                info.size = len(e.data)
                t.addfile(info, io.BytesIO(e.data))
                continue
            info.type = {
                "d": tarfile.DIRTYPE,
                "l": tarfile.SYMTYPE,
                "h": tarfile.LNKTYPE,
                "c": tarfile.CHRTYPE,
                "p": tarfile.FIFOTYPE,
            }[e.kind]
            info.linkname = e.link
            t.addfile(info)
    return buf.getvalue()


COMPRESS = {
    "": lambda b: b,
    ".gz": lambda b: gzip.compress(b, mtime=0),
    ".xz": lzma.compress,
    ".bz2": bz2.compress,
    ".zst": lambda b: zstandard.ZstdCompressor().compress(b),
    # as ``zstd -T``/``pzstd`` may write it: several frames (split near the middle)
    ".zst-frames": lambda b: b"".join(
        zstandard.ZstdCompressor().compress(p) for p in (b[: len(b) // 2], b[len(b) // 2 :])
    ),
}


def control_tar(name: str = "pkg", version: str = "1", arch: str = "amd64") -> bytes:
    """A control.tar holding ``./control`` that says ``name``, ``version`` and ``arch``."""
    text = f"Package: {name}\nVersion: {version}\nArchitecture: {arch}\n".encode()
    return tar([Entry("./control", data=text)])


def make_deb(
    path: Path,
    entries: list[Entry],
    compression: str = ".xz",
    name: str = "pkg",
    version: str | None = None,
    arch: str | None = None,
) -> Path:
    """A .deb at ``path`` whose control file says ``name``, ``version`` and ``arch``. When
    ``path`` is named like a pool file of ``name`` (``<name>_<version>_<arch>.deb``), the
    version and arch default to what the name says (as the build checks), else to
    ``1`` and ``amd64``."""
    parts = path.name.removesuffix(".deb").split("_")
    named = len(parts) == 3 and parts[0] == name and path.name.endswith(".deb")
    version = version or (parts[1] if named else "1")
    arch = arch or (parts[2] if named else "amd64")
    control = control_tar(name, version, arch)
    path.write_bytes(
        ar(
            [
                ("debian-binary", b"2.0\n"),
                ("control.tar.gz", gzip.compress(control, mtime=0)),
                (f"data.tar{compression.removesuffix('-frames')}", COMPRESS[compression](tar(entries))),
            ]
        )
    )
    return path


# --- hand-made tar headers, for hostile archives ----------------------------------------

END = b"\0" * 1024  # tar's end-of-archive blocks


def deb_with_data(path: Path, data_name: str, data: bytes) -> Path:
    """A .deb whose data member is ``data`` verbatim, named ``data_name``."""
    control = control_tar("x")
    path.write_bytes(
        ar(
            [
                ("debian-binary", b"2.0\n"),
                ("control.tar.gz", gzip.compress(control, mtime=0)),
                (data_name, data),
            ]
        )
    )
    return path


def header(
    name: str,
    kind: bytes = tarfile.REGTYPE,
    size: int = 0,
    link: str = "",
    patch: dict[int, bytes] | None = None,
) -> bytes:
    """One ustar header block. ``patch`` overwrites bytes at offsets (e.g. ``{124: <12
    bytes>}`` for a base-256 size); the checksum is recomputed after it."""
    info = tarfile.TarInfo(name)
    info.type, info.size, info.linkname = kind, size, link
    block = bytearray(info.tobuf(tarfile.USTAR_FORMAT))
    for offset, data in (patch or {}).items():
        block[offset : offset + len(data)] = data
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)
    return bytes(block)


def padded(data: bytes) -> bytes:
    return data + b"\0" * (-len(data) % 512)


def pax_records(*pairs: tuple[bytes, bytes]) -> bytes:
    """pax records ``"<len> key=value\\n"`` (the length counts itself)."""
    out = []
    for key, value in pairs:
        body = b" " + key + b"=" + value + b"\n"
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n += 1
        out.append(str(n).encode() + body)
    return b"".join(out)


def extended(kind: bytes, payload: bytes) -> bytes:
    """An extended header (pax ``x``/``g``, GNU ``L``/``K``) carrying ``payload``."""
    return header("././@LongLink", kind, len(payload)) + padded(payload)
