"""The shape of the signed index's path table (``index.json``'s ``paths``) that mirrors
rely on, checked after its signatures (``index.verify_index`` raises ``IndexError_``
with the problem found here): a malformed table is reported naming the entry, never as
a KeyError or TypeError deep in mirror sync. Pure: no I/O.
"""

from __future__ import annotations

import re
from typing import Any

from kiln.store.attestations import check_kind
from kiln.store.errors import FormatError

from .layout import is_hash_part

_HEX64 = re.compile(r"[0-9a-f]{64}")


def path_table_problem(paths: Any) -> str | None:
    """The signed path table has the shape mirrors rely on (its signer could still have
    made a mistake): ``{hash part: {"path": str, "narinfo_sha256": hex, "attestations"?:
    {kind: hex}}}``. Returns the first problem, naming its entry, or None."""
    if not isinstance(paths, dict):
        return f"index: 'paths' must be an object, found {type(paths).__name__}"
    for h, e in paths.items():
        what = f"index entry {str(h)[:40]!r}"
        if not is_hash_part(h) or not isinstance(e, dict):
            return f"{what}: expected a hash part mapped to an object"
        path = e.get("path")
        if not isinstance(path, str) or path.rsplit("/", 1)[-1][:32] != h:
            return f"{what}: 'path' must be a store path with that hash part, found {path!r}"
        if not isinstance(e.get("narinfo_sha256"), str) or not _HEX64.fullmatch(e["narinfo_sha256"]):
            return f"{what}: 'narinfo_sha256' must be 64 hex digits"
        atts = e.get("attestations", {})
        if not isinstance(atts, dict):
            return f"{what}: 'attestations' must be an object"
        for kind, digest in atts.items():
            try:
                check_kind(kind if isinstance(kind, str) else "")
            except FormatError as ex:
                return f"{what}: {ex}"
            if not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                return f"{what}: attestation {kind!r} must map to 64 hex digits"
    return None
