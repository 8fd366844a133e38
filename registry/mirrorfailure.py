"""The record of a mirror's last failed sync (``.kiln/mirror-failure.json``).

``kiln mirror status`` read only what successful syncs write, so a mirror whose cron
sync had failed for days (the source unreachable, a path refused, the disk full) was
shown as synced and "fresh" until its timestamp expired. Now a sync that fails on a
directory that is already a mirror (it holds ``.kiln/mirror-state.json``) records when
and why (the error's first line, credentials hidden, and whether a later attempt may
succeed: ``transient``), and a sync that succeeds removes the record. Best effort: a
record that cannot be written (a full or read-only disk) is skipped; the error itself
is what the sync reports."""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from kiln.store.errors import KilnError, redact_urls

from . import index as ix
from .storage import FileStorage

FAILURE_KEY = ".kiln/mirror-failure.json"
STATE_KEY = ".kiln/mirror-state.json"


def record(dst_dir: Path, error: BaseException, transient: bool) -> None:
    """Remember that a sync into the mirror at ``dst_dir`` failed now with ``error``."""
    if not (dst_dir / STATE_KEY).is_file():
        return  # (not a mirror yet: nothing claims it is synced)
    first = (str(error).splitlines() or [type(error).__name__])[0][:500]
    # (the format of ``synced_at``, which ``mirrorstatus`` compares it with)
    doc = {"at": ix.utcnow().strftime(ix.EXPIRY_FORMAT), "error": redact_urls(first), "transient": transient}
    with contextlib.suppress(OSError, KilnError):
        FileStorage(dst_dir, create=False).put_bytes(FAILURE_KEY, json.dumps(doc, sort_keys=True).encode())


def clear(dst_dir: Path) -> None:
    """A sync succeeded: the record of an earlier failure goes."""
    with contextlib.suppress(OSError):
        (dst_dir / FAILURE_KEY).unlink(missing_ok=True)


def load(dst_dir: Path) -> dict[str, Any] | None:
    """The record (``at``, ``error``, ``transient``), or None (none, or unreadable)."""
    try:
        doc = json.loads((dst_dir / FAILURE_KEY).read_text())
    except (OSError, ValueError):
        return None
    ok = isinstance(doc, dict) and isinstance(doc.get("at"), str) and isinstance(doc.get("error"), str)
    return doc if ok else None
