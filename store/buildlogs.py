"""Build logs, kept zstd-compressed under ``<root>/logs/<drv base name>.zst``.

Written once per build (temp file + rename, so a reader never sees half a log); the
latest build of a derivation wins. A check or rebuild saves under its own name
(``buildproduce.check_log_key``), so the log of the build behind the registered output
is never replaced by a later comparison's. ``read`` accepts the ``.drv`` path or any of its
outputs' paths when the caller resolves them (see ``LocalStore.query``'s deriver).

Showing build output. A build's output is the builder's bytes: escape sequences in it
would be interpreted by the operator's terminal (set its title, erase lines, write the
clipboard with OSC 52...). So whatever of it kiln puts in its own messages (a failed
build's log tail, file names of its output, ``--check``'s differences) goes through
``shown_output``, and a log streamed to a terminal (``kiln build -L``, ``kiln log``)
through a ``TerminalSafe``: every control character but newline and tab is shown as
an escape (``\\x1b``, ``\\r``; a CR ending a line is dropped), as are C1 controls,
bidi overrides and bytes that are not UTF-8. Backslashes are left as they are: the
text is for reading, not for decoding. A log written to a pipe or file stays raw.
"""

from __future__ import annotations

import codecs
import os
import re
import shutil
from pathlib import Path

import zstandard

from .errors import StoreError


class LogStore:
    def __init__(self, directory: Path) -> None:
        self.dir = directory
        self._dir_made = False  # (one mkdir per LogStore, not one per log saved)

    def _file(self, drv_path: str) -> Path:
        return self.dir / (drv_path.rsplit("/", 1)[-1] + ".zst")

    def save(self, drv_path: str, log_file: Path) -> Path:
        if not self._dir_made:
            self.dir.mkdir(parents=True, exist_ok=True)
            self._dir_made = True
        dest = self._file(drv_path)
        tmp = dest.with_name(f".{dest.name}.{os.getpid()}.tmp")
        with (
            open(log_file, "rb") as src,
            open(tmp, "wb") as out,
            zstandard.ZstdCompressor(level=3).stream_writer(out, closefd=False) as w,
        ):
            shutil.copyfileobj(src, w, 1 << 20)
        os.replace(tmp, dest)
        return dest

    def open(self, drv_path: str) -> zstandard.ZstdDecompressionReader:
        """A binary stream of the decompressed log."""
        f = self._file(drv_path)
        if not f.exists():
            raise StoreError(f"no build log for {drv_path}")
        return zstandard.ZstdDecompressor().stream_reader(open(f, "rb"), closefd=True)


#: what ``shown_output`` escapes: C0 controls but tab and newline, DEL, C1 controls,
#: bidi controls (embeddings, overrides, isolates and the marks U+061C, U+200E/F: they
#: reorder how the rest of a line displays; the recipe errors' ``BIDI_CONTROLS``), and
#: the surrogates ``surrogateescape`` makes of bytes that are not UTF-8
_UNSAFE = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069\udc80-\udcff]")


def _escape(m: re.Match[str]) -> str:
    c = ord(m.group())
    if c == 0x0D:
        return "\\r"
    if 0xDC80 <= c <= 0xDCFF:  # a byte that was not UTF-8
        return f"\\x{c - 0xDC00:02x}"
    return f"\\x{c:02x}" if c < 0x100 else f"\\u{c:04x}"


def shown_output(text: str) -> str:
    """``text`` (build output, decoded with ``surrogateescape`` or ``replace``) safe to
    print on a terminal: CRLF becomes LF, every other character ``_UNSAFE`` matches is
    replaced by a visible escape. Idempotent; newlines and tabs are kept."""
    return _UNSAFE.sub(_escape, text.replace("\r\n", "\n"))


class TerminalSafe:
    """``shown_output`` for a byte stream cut in arbitrary pieces (``-L``, ``kiln log``):
    ``feed`` returns the UTF-8 bytes to write for a piece, holding back an incomplete
    UTF-8 sequence and a trailing CR (it may start a CRLF) until the next piece;
    ``flush`` returns what is held at the end of the stream."""

    def __init__(self) -> None:
        self._decoder = codecs.getincrementaldecoder("utf-8")("surrogateescape")
        self._cr = False

    def feed(self, data: bytes, final: bool = False) -> bytes:
        text = ("\r" if self._cr else "") + self._decoder.decode(data, final)
        self._cr = not final and text.endswith("\r")
        if self._cr:
            text = text[:-1]
        return shown_output(text).encode("utf-8", "surrogateescape")

    def flush(self) -> bytes:
        return self.feed(b"", final=True)
