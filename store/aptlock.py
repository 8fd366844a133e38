"""The toolchain lock file: ``LockEntry`` records, rendered as a ``.recipe`` file binding
``debian_lock`` and read back without the recipe evaluator (so shell fixtures can use
it). ``render_lock`` and ``parse_lock`` are the only places that know the syntax; each
``{...}`` record is one pinned ``.deb``. ``lock_value_problem`` is the one definition of a
valid field value; every reader and writer of lock entries checks it. Pure text: no I/O
but ``read_lock``.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

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

_SHA256 = re.compile(r"[0-9a-f]{64}")
# whitespace would split the ``urls`` of the fetch derivation; NUL and other control
# characters have no business in a package name or path and garble messages
_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f]")


def lock_value_problem(field: str, value: object) -> str | None:
    """What is wrong with ``value`` as lock field ``field``, as "expected ..., found ...";
    None if it is valid (and for fields the lock does not define). The rules:

    - ``sha256``: 64 lowercase hex digits (what apt's indexes hold, and how mirrors name files);
    - ``size``: a non-negative integer;
    - ``filename``: a relative path (no leading ``/``, no empty, ``.`` or ``..`` component);
    - ``name``, ``version``, ``arch`` and ``filename``: non-empty strings without whitespace,
      NUL or other control characters."""
    if field == "size":
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            return f"expected a non-negative integer (bytes), found {value!r}"
        return None
    if field not in LOCK_FIELDS:
        return None
    if not isinstance(value, str):
        return f"expected a string, found {value!r}"
    if field == "sha256":
        if not _SHA256.fullmatch(value):
            return f"expected 64 lowercase hex digits, found {value!r}"
        return None
    if not value:
        return "expected a non-empty string, found ''"
    bad = _BAD_CHAR.search(value)
    if bad:
        return f"expected no whitespace or control characters, found {bad.group()!r} in {value!r}"
    if field == "filename":
        if value.startswith("/"):
            return f"expected a path relative to the archive base, found the absolute path {value!r}"
        odd = next((p for p in value.split("/") if p in ("", ".", "..")), None)
        if odd is not None:
            return f"expected a relative path of plain components, found a {odd!r} component in {value!r}"
    return None


def check_entry(fields: Mapping[str, object], where: str) -> None:
    """Raise ``FormatError`` ``"<where>: '<field>': expected ..., found ..."`` for the first
    invalid value of the lock fields in ``fields``."""
    for key in LOCK_FIELDS:
        if key in fields:
            problem = lock_value_problem(key, fields[key])
            if problem:
                raise FormatError(f"{where}: {key!r}: {problem}")


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def render_lock(entries: Iterable[LockEntry], header: str = "") -> str:
    """The lock as a ``.recipe`` file binding ``debian_lock`` to a list of records, one
    record per line. This and ``parse_lock`` are the only places that know the syntax.
    An entry with an invalid value is refused (``FormatError``): a lock is never written
    that ``parse_lock`` would reject."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines.append("let debian_lock = [")
    for i, e in enumerate(entries, 1):
        check_entry({k: getattr(e, k) for k in LOCK_FIELDS}, f"refusing to write lock entry {i} ({e.name!r})")
        lines.append(
            f"  {{ name = {_q(e.name)}, version = {_q(e.version)}, arch = {_q(e.arch)}, "
            f"sha256 = {_q(e.sha256)}, filename = {_q(e.filename)}, size = {e.size} }},"
        )
    lines.append("]")
    return "\n".join(lines) + "\n"


_RECORD = re.compile(r"\{([^{}]*)\}")
# a quoted string, or a bare word (valid only for ``size``, as digits)
_PAIR = re.compile(r'([A-Za-z0-9_]+)\s*[=:]\s*(?:"((?:[^"\\]|\\.)*)"|([^\s,"{}]+))')


def _unescape(quoted: str) -> str:
    """The text of a string literal's body as ``_q`` writes it."""
    return re.sub(r"\\(.)", r"\1", quoted)


def _value(key: str, quoted: str | None, bare: str, where: str) -> object:
    """The value of one ``key = ...`` pair: ``size`` is a bare integer, the rest strings."""
    if quoted is not None:
        return _unescape(quoted)
    if key == "size" and re.fullmatch(r"-?[0-9]+", bare):
        return int(bare)
    if key in LOCK_FIELDS and key != "size":
        raise FormatError(f"{where}: {key!r}: expected a quoted string, found {bare}")
    return bare


def parse_lock(text: str, source: str = "lock file") -> tuple[LockEntry, ...]:
    """Read back what ``render_lock`` writes (without the recipe evaluator, so shell
    fixtures can use it). Comments are ignored; each ``{...}`` is one entry. A missing,
    repeated or invalid field (``lock_value_problem``) is a ``FormatError`` naming
    ``source`` (the lock file), the entry (number and name) and the field."""
    text = re.sub(r"(?m)^\s*#.*$", "", text)
    out = []
    for i, m in enumerate(_RECORD.finditer(text), 1):
        name = re.search(r'\bname\s*[=:]\s*"((?:[^"\\]|\\.)*)"', m.group(1))
        label = f" ({_unescape(name.group(1))!r})" if name else ""
        where = f"{source}: lock entry {i}{label}"
        fields: dict[str, object] = {}
        for pair in _PAIR.finditer(m.group(1)):
            key = pair.group(1)
            if key in fields:
                raise FormatError(f"{where}: {key!r} is given twice")
            fields[key] = _value(key, pair.group(2), pair.group(3), where)
        missing = [k for k in LOCK_FIELDS if k not in fields]
        if missing:
            raise FormatError(f"{where}: lacks {', '.join(missing)} (record {m.group(0)[:80]!r})")
        check_entry(fields, where)
        out.append(LockEntry(**{k: fields[k] for k in LOCK_FIELDS}))  # type: ignore[arg-type]
    if not out:
        raise FormatError(
            f"{source}: no lock records found (expected 'let debian_lock = [ {{ name = ..., ... }} ]')"
        )
    return tuple(out)


def read_lock(path: Path) -> tuple[LockEntry, ...]:
    """``parse_lock`` of the file at ``path`` (errors name it)."""
    return parse_lock(Path(path).read_text(encoding="utf-8"), str(path))
