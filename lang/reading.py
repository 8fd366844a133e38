"""Reading a recipe file's text (for ``Evaluator.load``).

Contract: ``read_recipe`` returns the file's raw bytes (what the evaluation cache
hashes) and its text as the parser must see it, or raises a ``RecipeError``: located at
the ``import`` that named the file when there is one, naming the file otherwise. It never
lets an ``OSError``/``ValueError`` escape and never blocks: only regular files are read
(a FIFO, device, socket or directory is refused before any byte is read). Messages name
the file as ``errors.visible`` shows it (a newline in its name cannot start a line).

The text is UTF-8; a leading byte-order mark is dropped and CRLF line ends become LF (a
file checked out with ``core.autocrlf`` means the same as its LF original: ``''``
strings are de-indented and no ``\\r`` reaches a build script). A lone ``\\r`` is kept.
"""

from __future__ import annotations

import errno
import os
import stat

from . import nodes as ast
from .errors import ImportNotFound, RecipeError, visible

_KINDS = (
    (stat.S_ISDIR, "a directory"),
    (stat.S_ISFIFO, "a FIFO"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


def _fail(message: str, via: ast.Import | None) -> RecipeError:
    return RecipeError(message, via.src if via else None, via.pos if via else None)


def _read_bytes(path: str, display: str, via: ast.Import | None) -> bytes:
    what = "imported file" if via is not None else "recipe file"
    shown = visible(display)  # (a newline in the name must not start a line of its own)
    if "\0" in path:
        raise _fail(f"cannot read {what} {display!r}: the path contains a NUL character", via)
    try:
        # O_NONBLOCK: opening a FIFO must not wait for a writer (it is refused below)
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY | os.O_CLOEXEC)
    except OSError as e:
        if e.errno == errno.ENOENT:
            if via is None:
                raise RecipeError(f"recipe file {shown} does not exist") from None
            raise ImportNotFound(f"imported file {shown} does not exist", via.src, via.pos) from None
        raise _fail(f"cannot read {what} {shown}: {e.strerror or e}", via) from None
    try:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            kind = next((k for test, k in _KINDS if test(mode)), "not a regular file")
            raise _fail(f"cannot read {what} {shown}: it is {kind}, not a regular file", via)
        chunks = []
        while chunk := os.read(fd, 1 << 20):
            chunks.append(chunk)
        return b"".join(chunks)
    except OSError as e:
        raise _fail(f"cannot read {what} {shown}: {e.strerror or e}", via) from None
    finally:
        os.close(fd)


def read_recipe(path: str, display: str, via: ast.Import | None) -> tuple[bytes, str]:
    """``(raw bytes, text)`` of the recipe file at ``path`` (reported as ``display``),
    ``via`` the import that named it (None for the entry file). See the module docstring."""
    raw = _read_bytes(path, display, via)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        start = raw.rfind(b"\n", 0, e.start) + 1
        line = raw.count(b"\n", 0, e.start) + 1
        # columns count characters, as every other error's do
        col = len(raw[start : e.start].decode("utf-8", "replace")) + 1
        bad = f"not valid UTF-8 (byte 0x{raw[e.start]:02x})"
        if via is not None:
            raise _fail(
                f"imported file {visible(display)} is {bad} at line {line}, column {col}", via
            ) from None
        raise RecipeError(f"{visible(display)}:{line}:{col}: {bad}; recipe files are UTF-8") from None
    text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark some editors write
    return raw, text.replace("\r\n", "\n")


def check_utf8(text: str, display: str) -> str:
    """``text`` (a recipe expression given on the command line, where undecodable bytes
    arrive as lone surrogates) if it is valid Unicode text, else the same located error
    a recipe file gets."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        line = text.count("\n", 0, e.start) + 1
        col = e.start - (text.rfind("\n", 0, e.start) + 1) + 1
        c = ord(text[e.start])
        bad = f"byte 0x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"lone surrogate U+{c:04X}"
        raise RecipeError(f"{visible(display)}:{line}:{col}: not valid UTF-8 ({bad})") from None
    return text
