"""Reading deb822 stanzas' fields and Debian version strings as dpkg does (for ``apt``).

Invariants: field names are case-insensitive and a field given twice in a stanza is an
error (``debian.deb822`` keeps the last value, a first-match scan the first: the
candidate and the lock could disagree); a version is valid exactly when
``dpkg --validate-version`` accepts it (tests/toolchain/test_lock_index_input.py).
Pure functions, no I/O.
"""

from __future__ import annotations

import re

from .errors import FormatError

#: a stanza's fields: name (no whitespace or colon, not a ``#`` comment), value with its
#: continuation lines
_FIELD_RE = re.compile(r"^([^\s:#][^\s:]*)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)", re.M)


def fields(stanza: str, what: str = "") -> dict[str, str]:
    """The fields of a raw stanza by lowercase name (deb822 names are case-insensitive),
    values unstripped, continuation lines included. ``FormatError`` for a field given
    twice: ``debian.deb822`` keeps the last value, a first-match scan the first, so the
    candidate and the lock could disagree. One regex scan: this runs for every stanza of
    a 50 MB index. ``what`` names the stanza in that error (default: its package)."""
    pairs = _FIELD_RE.findall(stanza)
    fields = {k.lower(): v for k, v in pairs}
    if len(fields) != len(pairs):
        seen: set[str] = set()
        for k, _ in pairs:
            if k.lower() in seen:
                name = fields.get("package", "").strip()
                what = what or f"package {name or '(no Package field)'}"
                raise FormatError(f"{what}: field {k!r} is given twice")
            seen.add(k.lower())
    return fields


#: a Debian version as dpkg accepts it (``dpkg --validate-version``): ``[epoch:]upstream[-revision]``;
#: the upstream part starts with a digit and may hold ``:`` only after an epoch and ``-``
#: only before a revision (everything after the last ``-``: non-empty, no ``:``)
_VERSION_RE = re.compile(
    r"(?:(\d+):[0-9](?:[A-Za-z0-9.+~:-]*-[A-Za-z0-9.+~]+|[A-Za-z0-9.+~:]*)"
    r"|[0-9](?:[A-Za-z0-9.+~-]*-[A-Za-z0-9.+~]+|[A-Za-z0-9.+~]*))"
)
#: dpkg's largest epoch (it is an int)
_MAX_EPOCH = 2**31 - 1


def valid_version(version: str) -> bool:
    """Whether ``version`` is a Debian version dpkg accepts (``_VERSION_RE``, and an epoch
    of at most ``_MAX_EPOCH``); python-debian's comparison refuses some that do not."""
    m = _VERSION_RE.fullmatch(version)
    if m is None:
        return False
    epoch = (m.group(1) or "0").lstrip("0")
    return len(epoch) <= 10 and int(epoch or "0") <= _MAX_EPOCH
