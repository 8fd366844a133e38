"""Splitting string literals into text and ``${...}`` interpolations.

Two literal forms (as in Nix):

- ``"..."``: escapes ``\\n \\t \\r \\\\ \\" \\$``; ``\\${`` is a literal ``${``; ``$$``
  is literal text (so ``$${x}`` is the text ``$${x}``, as in Nix), in both forms.
- ``''...''`` (indented): indentation is stripped exactly as Nix strips it (Nix's
  ``stripIndentation``; ``split_indented`` says how, corners included: lines of only
  spaces, tabs, escaped newlines). Escapes: ``''$`` → ``$`` (so ``''${`` is a literal
  ``${``), ``'''`` → ``''``, ``''\\n`` / ``''\\t`` / ``''\\r`` / ``''\\<c>``.

A token is cut by ``strscan.scan``, the scanner the lexer found its end with, so the two
cannot disagree on where an interpolation ends (its code is read as code, nested
strings and their interpolations included, to any depth: ``strscan`` says how).

``split_plain`` and ``split_indented`` read a literal in place, in the text of its file
(``text[start:end]``), and return a list of pieces: ``str`` for literal text and
``(begin, end)`` for interpolations, their code being ``text[begin:end]``. No piece copies
the code of an interpolation: a literal nested ``n`` deep in interpolations is read once
per level, and copies would make memory quadratic in ``n`` (the parser keeps every level
open while it parses the next).
"""

from __future__ import annotations

from typing import Any

from .strscan import HOLE as _HOLE
from .strscan import LIT as _LIT
from .strscan import scan

#: Nix's "no line sets the indentation" (every line is blank): strip every leading space
_NO_INDENT = 1 << 62


def _pieces(text: str, start: int, ends: dict[int, int] | None) -> list[tuple[int, Any]]:
    """The pieces of the literal at ``text[start]`` as ``strscan.scan`` cuts them
    (``_LIT``, ``_ESC``, ``_HOLE``). The lexer found its end with the same scan, so it is
    whole. ``ends`` is as for ``scan`` (``text`` being the whole file): the ends of the
    strings nested in it, which the lexer read."""
    pieces: list[tuple[int, Any]] = []
    scan(text, start, pieces, ends)
    return pieces


def split_plain(
    text: str, start: int = 0, end: int | None = None, ends: dict[int, int] | None = None
) -> list:
    """Pieces of the ``"..."`` literal ``text[start:end]`` (quotes included; ``end``
    defaults to the end of ``text``); ``ends`` as for ``_pieces``."""
    end = len(text) if end is None else end
    # (``${`` first: a literal holding one usually holds it early, so the test stays short)
    if text.find("${", start, end) < 0 and text.find("\\", start, end) < 0:
        return [text[start + 1 : end - 1]]
    out: list = []
    for kind, value in _pieces(text, start, ends):
        if kind != _HOLE and out and isinstance(out[-1], str):
            out[-1] += value
        else:
            out.append(value)
    return out


def _min_indent(tokens: list[tuple[int, Any]]) -> int:
    """The indentation to strip: the fewest leading spaces of a line that holds anything
    but spaces, where an escape or interpolation ends the leading spaces (it is content,
    even an escaped space or newline) and a tab is content, not indentation. Lines of
    only spaces, the last one included, do not count; ``_NO_INDENT`` if none counts."""
    at_start, indent, least = True, 0, _NO_INDENT
    for kind, value in tokens:
        if kind != _LIT:
            if at_start:
                at_start, least = False, min(least, indent)
            continue
        for k, seg in enumerate(value.split("\n")):
            if k:  # after a newline
                at_start, indent = True, 0
            if at_start:
                rest = seg.lstrip(" ")
                indent += len(seg) - len(rest)
                if rest:
                    at_start, least = False, min(least, indent)
    return least


def split_indented(
    text: str, start: int = 0, end: int | None = None, ends: dict[int, int] | None = None
) -> list:
    """Pieces of the ``''...''`` literal ``text[start:end]`` (as ``split_plain``), with
    indentation stripped exactly as Nix does (``stripIndentation`` in Nix's parser,
    checked against nix-instantiate in the tests).

    ``_min_indent`` finds the indentation; then at the start of every line up to that
    many leading spaces are dropped, from literal text and from escapes alike (so a line
    of only spaces keeps those beyond it, and after an escaped newline ``''\\n`` the
    next characters count as a line start here though they did not for the
    indentation); an interpolation ends a line start. Finally, if the last token is
    literal text holding a newline and only spaces follow its last newline, those spaces
    go. Escapes and interpolations are tokens apart from the literal text, so no
    character of the input, whatever it is, can be mistaken for one."""
    tokens = _pieces(text, start, ends)
    strip = _min_indent(tokens)
    out: list = []
    buf: list[str] = []
    at_start, dropped = True, 0
    last = len(tokens) - 1
    for n, (kind, value) in enumerate(tokens):
        if kind == _HOLE:
            at_start, dropped = False, 0
            if buf:
                out.append("".join(buf))
                buf = []
            out.append(value)
            continue
        segs = value.split("\n")
        for k, seg in enumerate(segs):
            if k:
                at_start, dropped = True, 0
            if at_start:
                rest = seg.lstrip(" ")
                spaces = len(seg) - len(rest)
                segs[k] = seg[max(0, min(spaces, strip - dropped)) :]
                dropped += spaces
                if rest:
                    at_start, dropped = False, 0
        if n == last and kind == _LIT and len(segs) > 1 and not segs[-1].strip(" "):
            segs[-1] = ""  # the last line, of only spaces (or nothing), is emptied
        buf.append("\n".join(segs))
    text = "".join(buf)
    if text:
        out.append(text)
    return out
