"""``kiln store gc``: collect the local store (``store/gc.py``) and say what went.

stdout lists each deleted path, unregistered tree, leftover working dir, failed build
dir and quarantine record (with why it no longer matters; one a line; build logs and
eval-cache entries only by count: a store months old has thousands); stderr has the
warnings (what was kept, and why; an unreadable quarantine record is never deleted)
and the summary: the count of each kind, the bytes freed on disk and the apparent size
(``gcremove.Sizes``), and, when the collection compacted the database
(``store/dbcompact.py``), the bytes its file gave back. ``--dry-run`` says the same
with "would delete" (it never compacts).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from .common import store_root, whole_number


def add_gc_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """The ``gc`` subcommand of ``kiln store`` (run by ``cmd_gc``)."""
    sp = cmd("gc", "delete paths not reachable from a GC root")
    sp.add_argument("--dry-run", action="store_true", help="only list what would be deleted")
    sp.add_argument(
        "--keep-outputs",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="keep the outputs of live derivations: what building a rooted result again takes "
        "(default: the store's keep_outputs, true unless config.json says false)",
    )
    sp.add_argument(
        "--keep-failed",
        type=whole_number(0),
        default=None,
        metavar="DAYS",
        help="delete failed builds' tmp/kiln-failed-* dirs (kiln build -K) older than DAYS, 0: all "
        "(default: config.json's keep_failed_days, else 7); one a running build may be filling is kept",
    )
    sp.add_argument(
        "--eval-cache-days",
        type=whole_number(0),
        default=None,
        metavar="N",
        help="delete evaluation-cache entries not used for N days, 0: all "
        "(default: config.json's eval_cache_days, else 30)",
    )
    sp.add_argument(
        "--keep-quarantine",
        type=whole_number(0),
        default=None,
        metavar="DAYS",
        help="delete quarantine/ records (kiln store verify --repair) older than DAYS, 0: all, once they "
        "can no longer matter: their path is valid again, or nothing keeps it (default: config.json's "
        "keep_quarantine_days, else 30); a record "
        "of a rooted or referenced path with no row is kept",
    )


def _gc_meter() -> Callable[[int, int], None] | None:
    """A ``progress`` for ``gc`` on a terminal (else None): the deletion it reports runs
    after the GC lock is released, so other commands may already go on meanwhile."""
    from .cmd_store import _meter

    return _meter("removing garbage (the store is unlocked)")


def cmd_gc(args: argparse.Namespace) -> int:
    from kiln.store.gc import collect
    from kiln.store.localstore import LocalStore

    from .cmd_store import _human

    # the store's reserved space goes first: on a full disk the database cannot be opened
    # without it (GC makes it again when it is done)
    with LocalStore.open(store_root(args), create=False, release_reserve=True) as s:
        r = collect(
            s,
            dry_run=args.dry_run,
            progress=None if args.dry_run else _gc_meter(),
            keep_outputs=args.keep_outputs,
            keep_failed_days=args.keep_failed,
            eval_cache_days=args.eval_cache_days,
            keep_quarantine_days=args.keep_quarantine,
        )
    verb = "would delete" if r.dry_run else "deleted"
    for p in r.deleted:
        print(p)
    for p in r.stray_trees:
        print(f"{p} (unregistered)")
    for t in r.tmp_dirs:
        print(f"{t} (working directory no process is using)")  # (a live writer recreates its own)
    for t in r.failed_dirs:
        print(f"{t} (failed build's directory)")
    for q in r.quarantine_dirs:
        print(f"{q.dir} (quarantine record of {q.path}: {q.why})")
    for k in r.kept:
        print(f"warning: kept {k}", file=sys.stderr)
    for unread in r.unread_quarantine:
        print(
            f"warning: quarantine record unreadable, its references were not kept: {unread} "
            "(GC leaves it: inspect it and delete it by hand)",
            file=sys.stderr,
        )
    print(
        f"{verb} {len(r.deleted)} paths, {len(r.stray_trees)} unregistered trees, {r.objects_deleted} objects, "
        f"{len(r.tmp_dirs)} leftover working dirs, {len(r.logs)} build logs, "
        f"{len(r.failed_dirs)} failed build dirs, {len(r.eval_cache_entries)} eval-cache entries, "
        f"{len(r.quarantine_dirs)} quarantine records: "
        f"{_human(r.disk_bytes_freed)} on disk ({r.disk_bytes_freed} bytes; apparent size "
        f"{_human(r.bytes_freed)}, {r.bytes_freed} bytes); {len(r.roots)} roots"
        + (
            f"; the database gave back {_human(r.db_bytes_freed)} ({r.db_bytes_freed} bytes)"
            if r.db_bytes_freed
            else ""
        ),
        file=sys.stderr,
    )
    return 0
