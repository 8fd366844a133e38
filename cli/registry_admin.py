"""``kiln registry ...``: administering a registry directory (``init``, bearer
``token``s, ``publish-index``, ``rotate-root``, ``verify``). Reached through
``cmd_serve.main`` (cli/main.py routes ``registry`` there); the work is in
kiln.registry (see docs/registry.md). ``token list`` prints a token per line,
tab-separated: id, scopes, creation time (ISO 8601, UTC), comment. ``verify --json``
prints one object on stdout, ``{"ok", "checked", "problems", "removed", "unnamed",
"unnamed_bytes"}`` (with ``--delete-unnamed`` also ``"unnamed_young"`` and
``"unnamed_kept"``), ``ok`` true when there is no problem (exit 0; ``jsonout``):
unnamed object files are counted, never a problem.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.registry.indexbuild import MAX_TIMESTAMP_HOURS, MIN_TIMESTAMP_HOURS, TIMESTAMP_HOURS
from kiln.store.errors import KilnError
from kiln.store.keyfiles import load_secret_key

from .common import nonempty_path, trusted_keys, warn_no_signatures, whole_number

if TYPE_CHECKING:
    from kiln.registry.backends import DirSource


def cmd_registry(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="kiln registry", description="registry administration")
    sub = p.add_subparsers(dest="cmd", required=True)
    init = sub.add_parser("init", help="create a registry directory")
    init.add_argument("--dir", type=nonempty_path, required=True)
    init.add_argument("--store-dir", default="/kiln/store")
    tok = sub.add_parser("token", help="manage bearer tokens")
    toks = tok.add_subparsers(dest="tcmd", required=True)
    tc = toks.add_parser("create", help="create a token and print it once")
    tc.add_argument("--scope", action="append", choices=["read", "write"], required=True)
    tc.add_argument("--dir", type=nonempty_path, required=True)
    tc.add_argument("--comment", default="")
    tl = toks.add_parser("list", help="list token ids and scopes")
    tl.add_argument("--dir", type=nonempty_path, required=True)
    tr = toks.add_parser("revoke", help="revoke a token by id")
    tr.add_argument("--dir", type=nonempty_path, required=True)
    tr.add_argument("token_id")
    pi = sub.add_parser("publish-index", help="sign and publish the registry index")
    pi.add_argument("--dir", type=nonempty_path, required=True)
    pi.add_argument("--key", type=Path, required=True)
    pi.add_argument(
        "--full", action="store_true", help="read every narinfo again, not only those that changed"
    )
    pi.add_argument(
        "--timestamp-hours",
        type=whole_number(MIN_TIMESTAMP_HOURS, MAX_TIMESTAMP_HOURS),
        default=TIMESTAMP_HOURS,
        metavar="N",
        help=f"the signed timestamp is valid N hours (default {TIMESTAMP_HOURS}, at most "
        f"{MAX_TIMESTAMP_HOURS}): a mirror sync after that fails as frozen (docs/airgap.md)",
    )
    pi.add_argument(
        "--min-version",
        type=whole_number(1, 2**53),
        default=0,
        metavar="N",
        help="publish no index, snapshot or timestamp version below N: after restoring the "
        "directory from a backup, one above any version a mirror or client saw (they refuse "
        "a rollback; docs/registry.md)",
    )
    ve = sub.add_parser(
        "verify", help="check every narinfo and blob of a registry directory (exit 1 if any is bad)"
    )
    ve.add_argument("--dir", type=nonempty_path, required=True)
    ve.add_argument(
        "--trusted-key",
        action="append",
        metavar="KEY",
        help="also require signatures by these keys (repeatable)",
    )
    ve.add_argument(
        "--sigs-needed", type=whole_number(0), default=None, help="default: 1 with trusted keys, else 0"
    )
    ve.add_argument(
        "--delete-bad",
        action="store_true",
        help="unpublish what fails (its narinfo and bad blob), so the next sync or push fetches it again",
    )
    ve.add_argument(
        "--delete-unnamed",
        action="store_true",
        help="remove the object files no narinfo names (a refused or killed push's) written over an hour ago",
    )
    ve.add_argument(
        "-j", "--jobs", type=whole_number(1), default=None, help="blobs checked at once (default: cores)"
    )
    ve.add_argument("--json", action="store_true")
    rr = sub.add_parser("rotate-root", help="move the index to a new key (root v+1 signed by old and new)")
    rr.add_argument("--dir", type=nonempty_path, required=True)
    rr.add_argument("--old-key", type=Path, required=True)
    rr.add_argument("--new-key", type=Path, required=True)
    args = p.parse_args(argv)
    from kiln.registry.backends import DirSource

    if args.cmd == "init":
        src = DirSource(args.dir, store_dir=args.store_dir)
        print(f"registry at {src.storage.url} (StoreDir {src.store_dir})")
        return 0
    from kiln.registry.layout import CACHE_INFO

    if not (args.dir / CACHE_INFO).is_file():
        raise KilnError(f"{args.dir} is not a registry directory (no {CACHE_INFO}); see kiln registry init")
    src = DirSource(args.dir)
    if args.cmd == "token":
        from kiln.registry.auth import TokenStore

        ts = TokenStore(src.storage)
        if args.tcmd == "create":
            print(ts.create(args.scope, args.comment))
        elif args.tcmd == "list":
            for r in ts.records():
                created = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(r.created))  # ISO 8601, UTC
                print(f"{r.token_id}\t{','.join(r.scopes)}\t{created}\t{r.comment}")
        else:
            gone = ts.revoke(args.token_id)
            if gone is None:
                raise KilnError(f"no token with id {args.token_id} (see kiln registry token list)")
            # a running server re-reads the token file on its next request (TokenStore.check)
            about = f" ({gone.comment})" if gone.comment else ""
            print(
                f"revoked token {gone.token_id}{about}, scopes {','.join(gone.scopes)}; "
                "a running server refuses it from its next request"
            )
        return 0
    if args.cmd == "verify":
        return _verify_registry(src, args)
    from kiln.registry import publish

    if args.cmd == "publish-index":
        pub = publish.publish_index(
            src.storage,
            load_secret_key(args.key),
            full=args.full,
            timestamp_hours=args.timestamp_hours,
            min_version=args.min_version,
        )
        stamp = publish.load_signed(src.storage, "index/timestamp.json") or {}
        print(
            f"index version {pub.index_version}, timestamp version {pub.timestamp_version}"
            f" (expires {stamp.get('expires', '?')})"
        )
        return 0
    # each key read once, before anything is written (a key may come from a pipe)
    old_key, new_key = load_secret_key(args.old_key), load_secret_key(args.new_key)
    v = publish.rotate_root(src.storage, old_key, new_key)
    pub = publish.publish_index(src.storage, new_key)
    print(f"root version {v}; index version {pub.index_version}, timestamp version {pub.timestamp_version}")
    return 0


def _verify_registry(src: DirSource, args: argparse.Namespace) -> int:
    from kiln.registry.fsck import verify_dir

    trusted = trusted_keys(args.trusted_key)
    needed = args.sigs_needed if args.sigs_needed is not None else (1 if trusted else 0)
    if needed == 0 and trusted:  # keys given, and then not used
        warn_no_signatures("the registry is verified")
    rep = verify_dir(
        src,
        trusted=trusted,
        sigs_needed=needed,
        delete_bad=args.delete_bad,
        jobs=args.jobs,
        delete_unnamed=args.delete_unnamed,
    )
    if rep.unnamed_kept:
        print(f"note: {rep.unnamed_kept}", file=sys.stderr)
    if args.json:
        from .jsonout import emit

        doc = {
            "checked": rep.checked,
            "problems": [{"path": p.path, "problem": p.what} for p in rep.problems],
            "removed": list(rep.removed),
            "unnamed": rep.unnamed,
            "unnamed_bytes": rep.unnamed_bytes,
        }
        if args.delete_unnamed:
            doc |= {"unnamed_young": rep.unnamed_young, "unnamed_kept": rep.unnamed_kept}
        emit(not rep.problems, doc, sort_keys=False)
    else:
        for p in rep.problems:
            print(f"{p.path}: {p.what}")
        for k in rep.removed:
            print(f"removed {k}")
        unnamed = f"{rep.unnamed} unnamed object file(s) ({rep.unnamed_bytes} bytes)"
        if args.delete_unnamed:
            unnamed += f", {rep.unnamed_young} written in the last hour kept"
        elif rep.unnamed:
            unnamed += ", which --delete-unnamed removes once an hour old"
        print(f"checked {rep.checked} narinfos: {len(rep.problems)} problem(s); {unnamed}")
    return 1 if rep.problems else 0
