"""Reading a recipe file's text (for ``Evaluator.load``).

Contract: ``read_recipe`` returns the file's raw bytes (what the evaluation cache
hashes) and its text as the parser must see it, or raises a ``RecipeError``: one that
stops the file being read is located at the ``import`` that named it when there is one,
naming the file otherwise; one in its text is located in the text (below). It never
lets an ``OSError``/``ValueError`` escape and never blocks: only regular files are read
(a FIFO, device, socket or directory is refused before any byte is read). Messages name
the file as ``errors.visible`` shows it (a newline in its name cannot start a line).

The text is UTF-8; a leading UTF-8 byte-order mark is dropped (editors hide it, so
columns on line 1 count from after it) and CRLF line ends become LF (a file checked out
with ``core.autocrlf`` means the same as its LF original: ``''`` strings are de-indented
and no ``\\r`` reaches a build script). Refused, each located at its own
``file:line:col`` in the file that holds it (an imported file too, as a syntax error in
it is), with the line shown and a caret under it:

- a byte that is not UTF-8: the line is shown decoded with U+FFFD for what is not; a
  UTF-16 file (which Windows tools write with a byte-order mark) is named as such;
- a carriage return not followed by a line feed (a stray ``\\r`` in a file of LF or CRLF
  lines, or classic Mac OS's CR-only line ends). Why refuse rather than count it as a
  line end, as Python's universal newlines, VS Code, Emacs and Nix's error positions do:
  other editors (vim, less, git's diffs) show it as ``^M`` inside a line, so no
  ``line:col`` after one is what every editor shows; refused, every position (its own
  included: nothing before it is ambiguous) is. And counting it as a line end would make
  the positions describe lines the evaluator does not read: a ``''`` string is not
  de-indented at it, bash does not end a command at it (``$'\\r': command not found``),
  while reading it as LF would silently change what existing recipes' strings hold.
  A carriage return meant as one is written ``\\r`` (``''\\r`` in an indented string);
- a NUL character: a recipe is text (git takes a file with a NUL for binary and shows
  no diff of it, so a change in it would escape review; and no build variable can hold
  one).

So in every text the parser sees, a line is what an editor shows as one: lines end at
LF, and nothing else ends one (not a form feed or U+2028, which ``str.splitlines``
would take, but editors show inside a line). ``check_utf8`` holds a recipe expression
given on the command line to the same rules (a CRLF in one is left as it is).
"""

from __future__ import annotations

import errno
import os
import stat

from . import nodes as ast
from .errors import ImportNotFound, RecipeError, RecipeSyntaxError, SourceText, visible

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


def _problem(text: str, crlf: bool) -> int:
    """The position of the first lone carriage return or NUL in ``text`` (``crlf``: a
    CR before an LF is not lone), or -1."""
    cr = text.find("\r")
    while crlf and cr >= 0 and text.startswith("\n", cr + 1):
        cr = text.find("\r", cr + 2)
    nul = text.find("\0")
    return min(cr, nul) if cr >= 0 and nul >= 0 else max(cr, nul)


def _refused(
    text: str, at: int, display: str, path: str | None, bad: str = "", hint: str = ""
) -> RecipeSyntaxError:
    """The syntax error for the character at ``text[at]``: a lone CR or a NUL, or
    (``bad``, what to call it, and a ``hint``) what UTF-8 could not decode, which
    ``text`` shows as U+FFFD."""
    if bad:
        msg = f"not valid UTF-8 ({bad}){hint}"
    elif text[at] == "\0":
        msg = "NUL character (byte 0x00): a recipe file is text"
    elif "\n" not in text:
        msg = (
            "carriage return not followed by a line feed: this file's lines end in CR alone "
            "(classic Mac OS); recipe lines end in LF or CRLF"
        )
    else:
        msg = (
            "carriage return not followed by a line feed: recipe lines end in LF or CRLF "
            '(in a string, write "\\r")'
        )
    return RecipeSyntaxError(msg, SourceText(display, text, path), at)


def read_recipe(path: str, display: str, via: ast.Import | None) -> tuple[bytes, str]:
    """``(raw bytes, text)`` of the recipe file at ``path`` (reported as ``display``),
    ``via`` the import that named it (None for the entry file). See the module docstring."""
    raw = _read_bytes(path, display, via)
    try:
        text, bad = raw.decode("utf-8"), -1
    except UnicodeDecodeError as e:
        # what precedes the byte decodes, so it is where the byte is in the text (the
        # byte becomes U+FFFD: no CRLF straddles it, CRLF can become LF on each side)
        head = raw[: e.start].decode("utf-8").removeprefix("\ufeff")
        text = head + raw[e.start :].decode("utf-8", "replace")
        bad = len(head.replace("\r\n", "\n"))
        byte, hint = f"byte 0x{raw[e.start]:02x}", ""
        if raw.startswith((b"\xff\xfe", b"\xfe\xff")):  # (what Windows tools save as "Unicode")
            hint = ": the file starts with a UTF-16 byte-order mark; recipe files are UTF-8"
    else:
        text = text.removeprefix("\ufeff")  # a UTF-8 byte-order mark some editors write
    text = text.replace("\r\n", "\n")
    at = _problem(text, crlf=False)  # (CRLF is gone: a CR left is lone)
    if bad >= 0 and not 0 <= at < bad:
        raise _refused(text, bad, display, path, byte, hint)
    if at >= 0:
        raise _refused(text, at, display, path)
    return raw, text


def check_utf8(text: str, display: str) -> str:
    """``text`` (a recipe expression given on the command line, where undecodable bytes
    arrive as lone surrogates) with CRLF made LF, as in a recipe file, if it is valid
    Unicode text without a lone carriage return or NUL; else the same located error a
    recipe file gets."""
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as e:
        c = ord(text[e.start])
        bad = f"byte 0x{c - 0xDC00:02x}" if 0xDC80 <= c <= 0xDCFF else f"lone surrogate U+{c:04X}"
        shown = "".join("\ufffd" if 0xD800 <= ord(ch) <= 0xDFFF else ch for ch in text)
        raise _refused(shown, e.start, display, None, bad) from None
    at = _problem(text, crlf=True)
    if at >= 0:
        raise _refused(text, at, display, None)
    return text.replace("\r\n", "\n")
