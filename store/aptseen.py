"""The newest signed Release of each suite ``kiln lock debian`` has verified on this machine.

Theory of operation
-------------------
A genuine but older Release of a suite, put back with its indexes, verifies: it is
signed, and Debian's main suites set no ``Valid-Until``. apt notices because it keeps
the last Release it saw and refuses one dated earlier; so does kiln, in one small JSON
file (``$KILN_HOME/apt-releases.json``): ``{"<list prefix>": "<its Date, ISO 8601>"}``.
The prefix encodes the archive URL and the suite, so switching sources to another
archive (a dated snapshot, say) is no conflict.

Keys are the suites' list prefixes (``<host>_debian_dists_bookworm_``), the same for
an ``InRelease`` and a ``Release``. Only Releases verified with the machine's own keys
are recorded: a ``--keyring`` run could otherwise record a far-future date that refuses
every genuine Release after it.

``load`` reads it (missing: empty; unreadable or malformed: empty, and the caller says
so: the check is lost, not the lock); ``save`` reads it again and merges the dates just
verified, keeping the newer of each, and replaces the file atomically (temporary file,
fsync, rename), so a crash leaves the old or the new file, never half of one. Two locks
saving at the same moment may lose one's update: the dates only move forward, so that
costs at most one check.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from datetime import datetime
from pathlib import Path

FILE_NAME = "apt-releases.json"


def load(path: Path) -> tuple[dict[str, datetime], str | None]:
    """The dates recorded in ``path``, and why they could not be read (None if fine)."""
    try:
        data = json.loads(path.read_bytes())
        if not isinstance(data, dict):
            raise ValueError("expected a JSON object")
        out = {str(k): datetime.fromisoformat(v) for k, v in data.items()}
        if any(v.tzinfo is None for v in out.values()):
            raise ValueError("a date without a time zone")
        return out, None
    except FileNotFoundError:
        return {}, None
    except (OSError, ValueError, TypeError) as e:
        return {}, f"{path}: cannot read the Release dates seen before ({e}); starting afresh"


def save(path: Path, verified: dict[str, datetime]) -> None:
    """Record ``verified`` over what ``path`` holds now (read again: another lock may have
    saved since this one loaded it; the newer date of each name wins), atomically."""
    merged = load(path)[0]
    for name, when in verified.items():
        if name not in merged or when > merged[name]:
            merged[name] = when
    text = json.dumps({k: v.isoformat() for k, v in sorted(merged.items())}, indent=1) + "\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:  # (a signal may land after the replace: nothing to remove then)
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
