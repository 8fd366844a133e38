"""The toolchain lock file: ``LockEntry`` records, rendered as a ``.recipe`` file binding
``debian_lock`` and read back without the recipe evaluator (so shell fixtures can use
it). ``render_lock`` and ``parse_lock`` are the only places that know the syntax; each
``{...}`` record is one pinned ``.deb``. ``lock_value_problem`` is the one definition of a
valid field value; every reader and writer of lock entries checks it. ``entry_problem``
checks a whole entry: its ``filename`` must name its ``name``, ``version`` and ``arch``
(Debian's ``<name>_<version>_<arch>.deb``), because the file name is the part of an entry
the build checks the ``.deb`` against (``debpin``). Pure text: no I/O but ``read_lock``.

``parse_lock`` tokenizes (strings, words, punctuation, ``#`` comments) rather than
matching records with patterns, so any string ``render_lock`` writes — with ``{``, ``}``,
``#``, quotes or ``,`` in it — reads back as it was: render and parse round-trip for every
value ``lock_value_problem`` allows.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

from .debpin import DebIdentity, DebPin
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
# characters (C0, DEL and C1) have no business in a package name or path and garble
# messages
_BAD_CHAR = re.compile(r"[\s\x00-\x1f\x7f-\x9f]")
# a lone surrogate cannot be written to the (UTF-8) lock file at all
_SURROGATE = re.compile(r"[\ud800-\udfff]")


def package_url(name: str, version: str, arch: str) -> str:
    """The package URL (purl) of a Debian package: ``pkg:deb/debian/<name>@<version>?arch=<arch>``,
    name and version percent-encoded (``+`` as ``%2B``, an epoch's ``:`` as ``%3A``), as
    SBOMs name a lock entry (``sbom``) and ``debian_packages`` records it (``kiln.lang``)."""
    return f"pkg:deb/debian/{quote(name, safe='')}@{quote(version, safe='')}?arch={quote(arch, safe='')}"


def lock_value_problem(field: str, value: object) -> str | None:
    """What is wrong with ``value`` as lock field ``field``, as "expected ..., found ...";
    None if it is valid (and for fields the lock does not define). The rules:

    - ``sha256``: 64 lowercase hex digits (what apt's indexes hold, and how mirrors name files);
    - ``size``: a non-negative integer;
    - ``filename``: a relative path (no leading ``/``, no empty, ``.`` or ``..`` component);
    - ``name``, ``version``, ``arch`` and ``filename``: non-empty strings without whitespace,
      NUL or other control characters (C0, DEL, C1), or lone surrogates (not UTF-8)."""
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
    if _SURROGATE.search(value):
        return f"expected text that can be written as UTF-8, found a lone surrogate in {value!r}"
    if field == "filename":
        if value.startswith("/"):
            return f"expected a path relative to the archive base, found the absolute path {value!r}"
        odd = next((p for p in value.split("/") if p in ("", ".", "..")), None)
        if odd is not None:
            return f"expected a relative path of plain components, found a {odd!r} component in {value!r}"
    return None


def entry_problem(name: str, version: str, arch: str, filename: str) -> str | None:
    """What is wrong with an entry whose values are each valid, as "expected ..., found
    ..."; None if its ``filename`` names its ``name``, ``version`` (an epoch, which pool
    file names drop, aside) and ``arch``. The build pins each ``.deb`` by its file name
    (the only part of the entry its derivations carry), so an entry whose fields said
    otherwise would claim a package it does not pin."""
    try:
        pin = DebPin.of_pool_name(filename)
    except FormatError as e:
        return str(e)
    if pin.mismatch(DebIdentity(name, version, arch)) is None:
        return None
    plain = version.partition(":")[2] if ":" in version else version
    return (
        f"expected a file name naming this entry ({name}_{plain}_{arch}.deb: name, version "
        f"without epoch, arch), found {filename.rsplit('/', 1)[-1]!r}"
    )


def check_entry(fields: Mapping[str, object], where: str) -> None:
    """Raise ``FormatError`` ``"<where>: '<field>': expected ..., found ..."`` for the first
    invalid value of the lock fields in ``fields``; then, if ``name``, ``version``,
    ``arch`` and ``filename`` are all there, for a ``filename`` that does not name them
    (``entry_problem``)."""
    for key in LOCK_FIELDS:
        if key in fields:
            problem = lock_value_problem(key, fields[key])
            if problem:
                raise FormatError(f"{where}: {key!r}: {problem}")
    if all(k in fields for k in ("name", "version", "arch", "filename")):
        problem = entry_problem(*(str(fields[k]) for k in ("name", "version", "arch", "filename")))
        if problem:
            raise FormatError(f"{where}: 'filename': {problem}")


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


# one token of the lock's syntax: blanks and ``#`` comments (skipped), a string literal
# as ``_q`` writes it, a bare word, or one character of punctuation
_TOKEN = re.compile(
    r'(?P<skip>\s+|#[^\n]*)|(?P<string>"(?:[^"\\]|\\.)*")|(?P<word>[^\s"{}\[\],;=:#]+)|(?P<punct>.)',
    re.S,
)


def _unescape(quoted: str) -> str:
    """The text of a string literal's body as ``_q`` writes it."""
    return re.sub(r"\\(.)", r"\1", quoted, flags=re.S)


def _value(key: str, kind: str, text: str, where: str) -> object:
    """The value of one ``key = ...`` pair: ``size`` is a bare integer, the rest strings."""
    if kind == "string":
        return _unescape(text[1:-1])
    if key == "size" and re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    if key in LOCK_FIELDS and key != "size":
        raise FormatError(f"{where}: {key!r}: expected a quoted string, found {text}")
    return text


def _records(text: str, source: str) -> list[tuple[str, list[tuple[str, str, str]]]]:
    """Each ``{...}`` record of ``text``: its text and its ``(key, kind, value text)``
    pairs (``kind``: ``string`` or ``word``). What lies outside records (``let ... = [``,
    ``]``, comments) is skipped; inside one only ``key = value`` pairs (``:`` for ``=``),
    separated by ``,`` or ``;``, are accepted."""
    tokens = [(m.lastgroup, m.group(), m.start()) for m in _TOKEN.finditer(text) if m.lastgroup != "skip"]
    records: list[tuple[str, list[tuple[str, str, str]]]] = []
    pos = 0
    while pos < len(tokens):
        kind, tok, start = tokens[pos]
        pos += 1
        if (kind, tok) == ("punct", '"'):
            raise FormatError(f"{source}: unterminated string at offset {start}")
        if (kind, tok) != ("punct", "{"):
            continue  # ``let debian_lock = [``, ``]``, strings outside records...
        where = f"{source}: lock entry {len(records) + 1}"
        pairs: list[tuple[str, str, str]] = []
        while True:
            head = tokens[pos : pos + 3]
            if not head:
                raise FormatError(f"{where}: expected '}}' to end the record, found the end of the file")
            if head[0][:2] == ("punct", "}"):
                records.append((text[start : head[0][2] + 1], pairs))
                pos += 1
                break
            if (
                len(head) < 3
                or head[0][0] != "word"
                or head[1][:2] not in (("punct", "="), ("punct", ":"))
                or head[2][0] not in ("string", "word")
            ):
                found = text[head[0][2] : head[0][2] + 40]
                raise FormatError(f"{where}: expected 'key = value' or '}}', found {found!r}")
            pairs.append((head[0][1], head[2][0], head[2][1]))
            pos += 3
            if pos < len(tokens) and tokens[pos][:2] in (("punct", ","), ("punct", ";")):
                pos += 1
    return records


def parse_lock(text: str, source: str = "lock file") -> tuple[LockEntry, ...]:
    """Read back what ``render_lock`` writes (without the recipe evaluator, so shell
    fixtures can use it). Comments are ignored; each ``{...}`` is one entry. A missing,
    repeated or invalid field (``lock_value_problem``, ``entry_problem``) or a malformed
    record is a ``FormatError`` naming ``source`` (the lock file), the entry (number and
    name) and the field."""
    out = []
    for i, (record, pairs) in enumerate(_records(text, source), 1):
        name = next((v for k, kind, v in pairs if k == "name" and kind == "string"), None)
        label = f" ({_unescape(name[1:-1])!r})" if name is not None else ""
        where = f"{source}: lock entry {i}{label}"
        fields: dict[str, object] = {}
        for key, kind, value in pairs:
            if key in fields:
                raise FormatError(f"{where}: {key!r} is given twice")
            fields[key] = _value(key, kind, value, where)
        missing = [k for k in LOCK_FIELDS if k not in fields]
        if missing:
            raise FormatError(f"{where}: lacks {', '.join(missing)} (record {record[:80]!r})")
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
