"""The toolchain lock file: ``LockEntry`` records, rendered as a ``.recipe`` file binding
``debian_lock`` and read back without the recipe evaluator (so shell fixtures can use
it). ``render_lock`` and ``parse_lock`` are the only places that know the syntax; each
``{...}`` record is one pinned ``.deb``. Pure text: no I/O.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from .errors import FormatError


@dataclass(frozen=True, slots=True)
class LockEntry:
    """One pinned .deb: what ``kiln lock debian`` writes and ``debian_rootfs`` fetches."""

    name: str
    version: str
    arch: str
    sha256: str
    filename: str
    size: int


LOCK_FIELDS = ("name", "version", "arch", "sha256", "filename", "size")


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def render_lock(entries: Iterable[LockEntry], header: str = "") -> str:
    """The lock as a ``.recipe`` file binding ``debian_lock`` to a list of records, one
    record per line. This and ``parse_lock`` are the only places that know the syntax."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines.append("let debian_lock = [")
    for e in entries:
        lines.append(
            f"  {{ name = {_q(e.name)}, version = {_q(e.version)}, arch = {_q(e.arch)}, "
            f"sha256 = {_q(e.sha256)}, filename = {_q(e.filename)}, size = {e.size} }},"
        )
    lines.append("]")
    return "\n".join(lines) + "\n"


_RECORD = re.compile(r"\{([^{}]*)\}")
_PAIR = re.compile(r'([a-z0-9_]+)\s*[=:]\s*(?:"((?:[^"\\]|\\.)*)"|([0-9]+))')


def parse_lock(text: str) -> tuple[LockEntry, ...]:
    """Read back what ``render_lock`` writes (without the recipe evaluator, so shell
    fixtures can use it). Comments are ignored; each ``{...}`` is one entry."""
    text = re.sub(r"(?m)^\s*#.*$", "", text)
    out = []
    for m in _RECORD.finditer(text):
        fields: dict[str, str] = {}
        for key, s, n in _PAIR.findall(m.group(1)):
            fields[key] = n or re.sub(r"\\(.)", r"\1", s)
        missing = [k for k in LOCK_FIELDS if k not in fields]
        if missing:
            raise FormatError(f"lock record {m.group(0)[:80]!r} lacks {', '.join(missing)}")
        out.append(LockEntry(**{k: (int(fields[k]) if k == "size" else fields[k]) for k in LOCK_FIELDS}))
    if not out:
        raise FormatError("no lock records found (expected 'let debian_lock = [ { name = ..., ... } ]')")
    return tuple(out)
