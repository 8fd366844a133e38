"""``kiln store unsign --key PUB PATH...|--all``: remove every signature a public key made
from store paths, e.g. after revoking that key (``kiln key revoke``), so the store no
longer vouches for anything by it (``kiln store sign`` is the other way).

A signature is the key's when it verifies with the key over the path's fingerprint,
*whatever name it carries*: the name in a signature is not signed, so a stolen key may
have signed under another key's name. A signature that merely carries the key's name and
does not verify is not the key's and stays (``kiln store verify`` counts it for nothing).

Per path, the signatures are read, judged and deleted in one database transaction
(``LocalStore.remove_signatures``): a signature the key added meanwhile is removed too,
and a path is never left with some of the key's signatures gone and others not. Each one
removed is listed on stdout (``PATH SIGNATURE``, a line each, as ``gc`` lists what it
deleted); the summary goes to stderr. Exit 0 whether or not any was found.

A registry's copies are not touched: see ``docs/security.md``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from kiln.store.localstore import LocalStore
    from kiln.store.pathinfo import PathInfo
    from kiln.store.signing import PublicKey


def add_parser(cmd: Callable[[str, str], argparse.ArgumentParser]) -> None:
    """The ``unsign`` subcommand of ``kiln store`` (``run(store, args)`` is ``cmd_unsign``)."""
    sp = cmd("unsign", "remove every signature by a public key (after revoking it) from paths")
    sp.add_argument(
        "--key",
        required=True,
        metavar="PUB",
        help="public key file or text whose signatures go, whatever name they carry",
    )
    sp.add_argument("paths", nargs="*")
    sp.add_argument("--all", action="store_true", help="every valid path")
    sp.set_defaults(run=cmd_unsign)


def signed_by(key: PublicKey) -> Callable[[PathInfo, str], bool]:
    """Whether a signature of a path verifies with ``key``, under any name."""
    from kiln.store.errors import FormatError
    from kiln.store.signing import PublicKey

    def judge(info: PathInfo, sig: str) -> bool:
        name = sig.strip().partition(":")[0]
        try:
            return PublicKey(name, key.key).verify(info.fingerprint(), sig)
        except FormatError:  # (no fingerprint: such a row verifies nothing)
            return False

    return judge


def cmd_unsign(store: LocalStore, args: argparse.Namespace) -> int:
    from .cmd_store import _path
    from .common import UsageError, load_trusted_key

    if args.all == bool(args.paths):
        raise UsageError("give store paths to unsign, or --all (not both)")
    key = load_trusted_key(args.key)
    paths = store.all_paths() if args.all else [_path(store, p)[0] for p in args.paths]
    judge = signed_by(key)
    removed = touched = 0
    for p in paths:
        gone = store.remove_signatures(p, judge)
        for sig in gone:
            print(f"{p} {sig}")
        removed += len(gone)
        touched += bool(gone)
    print(
        f"removed {removed} signature(s) by {key.to_text()} from {touched} of {len(paths)} path(s)",
        file=sys.stderr,
    )
    return 0
