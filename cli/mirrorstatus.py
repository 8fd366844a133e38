"""``kiln mirror status DIR [--json]``: the state of a mirror directory
(``kiln.registry.mirrorstatus``), for operators and monitoring.

Exit status: 0 fresh; 1 frozen (the mirror's index timestamp, or its trusted root, has
expired: its clients refuse its index until a sync brings a newer one; or it publishes
no timestamp), or another error; 2 usage, including a directory that is not a mirror.
With ``--json`` one JSON object on stdout (``MirrorStatus.to_json``: every field, plus
``fresh``, and ``ok``: fresh, the exit status 0; ``jsonout``), whatever the exit status.
``root_sha256`` is the root metadata file's digest in hex, as ``sha256sum`` prints it.
Also ``print_pruned``: what ``kiln mirror sync --prune`` says it took out.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .common import UsageError

if TYPE_CHECKING:
    from kiln.registry.mirrorprune import PruneReport


def add_parser(sub: Any) -> None:
    """The ``status`` subcommand of ``kiln mirror``."""
    s = sub.add_parser(
        "status",
        help="show a mirror's source, last sync, versions, contents and freshness",
        epilog="exit status: 0 fresh, 1 frozen (its index timestamp expired) or another error, "
        "2 usage (DIR is not a mirror)",
    )
    s.add_argument("dir", type=Path, metavar="DIR")
    s.add_argument("--json", action="store_true", help="one JSON object on stdout")


def _ago(when: str | None) -> str:
    """`` (3 h ago)``-style note for an ISO 8601 UTC time, or ``""``."""
    from kiln.registry import index as ix

    if when is None:
        return ""
    try:
        s = (ix.utcnow() - ix.parse_expiry(when)).total_seconds()
    except ValueError:
        return ""
    word = "ago" if s >= 0 else "from now"
    s = abs(s)
    n = f"{s / 86400:.1f} d" if s >= 172800 else f"{s / 3600:.1f} h" if s >= 3600 else f"{s / 60:.0f} min"
    return f" ({n} {word})"


def run(args: argparse.Namespace) -> int:
    from kiln.registry.mirrorstatus import NotAMirror, status

    try:
        st = status(Path(str(args.dir).removeprefix("file://")))
    except NotAMirror as e:
        raise UsageError(str(e)) from None
    if args.json:
        from .jsonout import emit

        emit(st.frozen is None, st.to_json())
        return 0 if st.frozen is None else 1
    rows = [
        ("source", st.source or "(not recorded: last synced by an older kiln)"),
        ("last sync", (st.synced_at or "(not recorded)") + _ago(st.synced_at)),
        ("root", f"version {st.root_version}, sha256 {st.root_sha256[:16]}, expires {st.root_expires}"),
        ("seen", f"timestamp version {st.timestamp_seen}, snapshot/index version {st.snapshot_seen}"),
        (
            "index",
            "(no record)"
            if st.index_paths is None
            else f"{st.index_paths} paths listed"
            + (f"; {st.stale} held but no longer listed" if st.stale else ""),
        ),
        ("held", f"{st.narinfos} narinfos, {st.objects} objects"),
        (
            "timestamp",
            "(none)"
            if st.timestamp_version is None
            else f"version {st.timestamp_version}, expires {st.timestamp_expires}{_ago(st.timestamp_expires)}",
        ),
    ]
    if st.last_failure is not None:
        f = st.last_failure
        later = ", a later attempt may succeed" if f.get("transient") else ""
        rows.append(("last try", f"FAILED at {f['at']}{_ago(f['at'])}{later}: {f['error']}"))
    print(f"mirror {st.directory}")
    for k, v in rows:
        print(f"  {k:<10} {v}")
    if st.frozen is None:
        print("fresh")
        return 0
    print(f"FROZEN: {st.frozen}; its clients refuse its index until a sync brings a newer one")
    return 1


def print_pruned(pr: PruneReport) -> None:
    """What ``kiln mirror sync --prune`` took out (``mirrorprune.PruneReport``)."""
    for path in pr.paths[:20]:
        print(f"pruned {path}")
    if len(pr.paths) > 20:
        print(f"pruned ... and {len(pr.paths) - 20} more")
    print(
        f"pruned {len(pr.paths)} path(s) no longer listed by the source and {pr.objects} object file(s) "
        f"no narinfo names ({pr.bytes_freed} bytes freed)"
    )
    if pr.objects_kept:
        print(f"warning: objects not pruned: {pr.objects_kept}", file=sys.stderr)
    if pr.objects_young:
        print(
            f"note: {pr.objects_young} unnamed object file(s) written in the last hour kept "
            "(an upload may be about to publish them; a later prune takes them if not)",
            file=sys.stderr,
        )
