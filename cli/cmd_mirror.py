"""``kiln mirror sync SRC DST`` and ``kiln mirror status``: keeping a verified copy of a
registry (the work: ``kiln.registry.mirror``; docs/registry.md).

cli/main.py routes ``mirror`` here with ``argv[0]`` = the name. A sync's exit status
sorts failures for a cron line or a supervisor: 0 synced, 1 a data problem someone must
look at, 75 (``EX_TEMPFAIL``) a temporary one, 2 usage.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .common import UsageError, trusted_keys, whole_number
from .tokenargs import TOKEN, add_token_args, check_not_token, resolve

#: ``kiln mirror sync``'s exit status when the source could not be read for a reason a
#: later sync may not meet (unreachable, 5xx, timeouts): sysexits.h's EX_TEMPFAIL
EX_TEMPFAIL = 75


def cmd_mirror(argv: list[str]) -> int:
    """``kiln mirror sync``, and ``kiln mirror status`` (``mirrorstatus``). Exit status of
    a sync: 0 synced; 1 some paths bad or refused (a data problem: someone must look), or
    any other error; 75 the source unreachable or answering 5xx or too slowly (retry
    later); 2 usage (a first sync without --root)."""
    p = argparse.ArgumentParser(prog="kiln mirror", description="mirror a registry")
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser(
        "sync",
        help="sync DST (a directory) from SRC (a registry URL)",
        epilog="exit status: 0 synced, 1 paths bad or refused (or another error), 75 SRC unreachable "
        "or answering 5xx/too slowly (retry later), 2 usage",
    )
    s.add_argument("src", metavar="SRC")
    s.add_argument("dst", type=Path, metavar="DST")
    s.add_argument("--root", type=Path, help="pinned root metadata of SRC (required on the first sync)")
    s.add_argument(
        "--repin-root",
        action="store_true",
        help="trust --root instead of the root DST trusts, forgetting the versions seen (SRC's keys "
        "replaced out of band, without a signed rotation)",
    )
    s.add_argument(
        "--trusted-key", action="append", metavar="KEY", help="also require narinfo signatures by these keys"
    )
    s.add_argument("-j", "--jobs", type=whole_number(1), default=16)
    add_token_args(s, TOKEN, "read token of a private SRC")
    s.add_argument(
        "--full",
        action="store_true",
        help="download the index again, compare every narinfo and listing in DST and check that every "
        "published narinfo's object is there at its size (a sync otherwise checks only what changed "
        "since the last one)",
    )
    s.add_argument(
        "--rehash",
        action="store_true",
        help="--full, and also read every object and check its sha256 (finds rot that kept the size; "
        "reads the whole mirror)",
    )
    s.add_argument(
        "--prune",
        action="store_true",
        help="after the sync, remove the paths SRC no longer lists (narinfos, attestations) and the "
        "objects no narinfo names any more",
    )
    from . import mirrorstatus

    mirrorstatus.add_parser(sub)
    args = p.parse_args(argv)
    if args.cmd == "status":
        return mirrorstatus.run(args)
    check_not_token(args.src, "SRC")
    check_not_token(str(args.dst), "DST")
    resolve(args, TOKEN)
    from kiln.registry.mirror import MirrorError, MirrorUsageError, sync
    from kiln.registry.retryable import retryable

    dst = Path(str(args.dst).removeprefix("file://"))
    try:
        rep = sync(
            args.src,
            dst,
            root=args.root.read_bytes() if args.root else None,
            trusted=trusted_keys(args.trusted_key),
            jobs=args.jobs,
            token=args.token,
            full=args.full,
            rehash=args.rehash,
            prune=args.prune,
            repin_root=args.repin_root,
        )
    except MirrorUsageError as e:
        raise UsageError(str(e)) from None
    except Exception as e:  # noqa: BLE001 - only sorted here; run_command reports the rest
        if not (e.transient if isinstance(e, MirrorError) else retryable(e)):
            raise
        print(f"error: {e}", file=sys.stderr)
        print(
            "(a temporary failure of the source: the mirror keeps its previous state; retry later)",
            file=sys.stderr,
        )
        return EX_TEMPFAIL
    print(
        f"mirror at index version {rep.index_version} (timestamp {rep.timestamp_version}): {rep.paths} paths, "
        f"{rep.narinfos_fetched} narinfos and {rep.blobs_fetched} blobs ({rep.bytes_fetched} bytes) fetched, "
        f"{rep.attestations_fetched} attestations"
        + (f"; {rep.objects_repaired} missing or bad objects fetched again" if rep.objects_repaired else "")
    )
    if rep.pruned is not None:
        mirrorstatus.print_pruned(rep.pruned)
    elif rep.stale:
        print(
            f"note: the mirror holds {rep.stale} path(s) its source no longer lists "
            "(kiln mirror sync --prune removes them)",
            file=sys.stderr,
        )
    return 0


def main(argv: list[str]) -> int:
    return cmd_mirror(argv[1:])
