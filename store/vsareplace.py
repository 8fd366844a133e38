"""Whether a rebuilder's new verdict may replace its stored one (``attestations.record_vsa``).

Theory of operation
-------------------
A rebuilder key keeps one verdict per path (``vsa-<keyid16>``), and ``kiln verify``
counts each key's latest (``policyeval._reproduced``). A rebuild under varied conditions
(``kiln rebuild --vary``: ``kiln_rebuild.varied``) finds non-determinism a plain one
misses, e.g. an output that depends on ``KILN_CORES``, the umask or the month. If any
newer verdict replaced the older one, a plain rebuild that happened to reproduce would
turn the key's FAILED into PASSED: nothing was fixed (the path is the same bytes of the
same derivation), the failing conditions were just not tried again.

The rule (``check``): a new **PASSED** verdict replaces a stored **FAILED** one of the
same key about the same content only if it varied at least everything the FAILED one
varied (its ``varied`` labels a superset, compared exactly; a plain rebuild varied
nothing). Then the failure was a fluke, or what varied no longer matters, and the
replacement is reported. Otherwise nothing is signed and ``VerdictKept`` is raised: the
FAILED stays, here and wherever it was pushed, and the message says how to replace it
(a ``--vary`` rebuild that varies as much, or deleting the file). Every other new verdict
replaces the stored one as before: a FAILED always does (a failure is news, whatever was
varied), a PASSED replaces a PASSED.

Only a stored verdict that this very key validly signed, about this path's name and NAR
digest, counts (as for ``verdicttime``): a file someone else wrote there pins nothing.
The check and the write are not one atomic step: two rebuilds by one key of one path at
once are not serialised (the later write wins, as before).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from .errors import KilnError, StoreError


class VerdictKept(StoreError):
    """A new PASSED verdict was not recorded: the key's stored FAILED one was made under
    variations this one did not all repeat (module docstring). ``file`` is the stored one."""

    def __init__(self, message: str, file: Path) -> None:
        super().__init__(message)
        self.file = file


@dataclass(frozen=True, slots=True)
class StoredVerdict:
    """A key's stored verdict about a path: ``varied`` is empty for a plain rebuild."""

    file: Path
    passed: bool
    varied: tuple[str, ...]
    time: datetime | None


def stored_verdict(store: Any, path: str, public_key: bytes, nar_sha256_hex: str) -> StoredVerdict | None:
    """The verdict stored under ``public_key``'s kind for ``path`` if that key validly
    signed it and it is a VSA about ``path``'s base name and ``nar_sha256_hex``; else None
    (none stored, someone else's, unreadable, about other content)."""
    from . import attestations, dsse
    from .intoto import LEVEL_REPRODUCED, VSA_TYPE, parse_statement, statement_time
    from .paths import StorePath

    kind = attestations.vsa_kind(public_key)
    try:
        env = attestations.read(store, path, kind)
        if env is None or not dsse.signers(env, {"k": public_key}):
            return None
        st = parse_statement(env.payload)
        if st.predicate_type != VSA_TYPE or not st.matches(StorePath.parse(path).base, nar_sha256_hex):
            return None
        when = statement_time(st)
    except (KilnError, OSError):
        return None
    p = st.predicate
    levels = p.get("verifiedLevels")
    # as ``policyeval`` reads it: anything but a well-formed PASSED is a failure
    passed = (
        p.get("verificationResult") == "PASSED" and isinstance(levels, list) and LEVEL_REPRODUCED in levels
    )
    ext = p.get("kiln_rebuild")
    varied = ext.get("varied") if isinstance(ext, dict) else None
    labels = tuple(v for v in varied if isinstance(v, str)) if isinstance(varied, list) else ()
    return StoredVerdict(attestations.file_of(store, path, kind), passed, labels, when)


def _labels(varied: Sequence[str]) -> str:
    return ", ".join(varied) if varied else "nothing (a plain rebuild)"


def check(
    path: str, stored: StoredVerdict | None, *, passed: bool, varied: Sequence[str] | None
) -> str | None:
    """Whether a new verdict (``passed``, made varying ``varied``; None or empty: a plain
    rebuild) may replace ``stored``: ``VerdictKept`` if not; else a notice to show when it
    replaces a FAILED with a PASSED, or None when there is nothing to say."""
    if stored is None or stored.passed or not passed:
        return None
    new = tuple(varied or ())
    at = f" of {stored.time:%Y-%m-%dT%H:%M:%SZ}" if stored.time is not None else ""
    missing = [v for v in stored.varied if v not in new]
    if missing:
        short = f" (not {', '.join(missing)})" if new else ""
        raise VerdictKept(
            f"{path}: this PASSED verdict was not recorded: this key's stored verdict{at} is FAILED, "
            f"made varying {_labels(stored.varied)}, and this rebuild varied {_labels(new)}{short}; "
            "reproducing under fewer variations does not show the failure "
            f"is gone, so the FAILED verdict stays ({stored.file}). To replace it, rebuild with --vary "
            "on a machine that varies at least as much, or delete that file and rebuild",
            stored.file,
        )
    return (
        f"{path}: replacing this key's FAILED verdict{at} (made varying {_labels(stored.varied)}) with "
        f"PASSED (made varying {_labels(new)}: at least as much)"
    )
