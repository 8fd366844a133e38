"""``kiln push`` and ``kiln copy``: moving paths to, from and between registries (mirrors:
``cmd_mirror``; the server and its administration: ``cmd_serve``).

cli/main.py routes each of those command names here with ``argv[0]`` = the name. This
module only parses arguments and glues kiln.store to kiln.registry; the work is in
kiln.registry (see docs/registry.md).

Credentials: ``$KILN_REGISTRY_TOKEN``, ``--token-file FILE`` or ``--token`` (which every
local user can read in ``/proc``: ``tokenargs``) for pushes; a ``--to``/``--from`` that is
a kiln token is refused before anything is made of it; trusted public keys
with ``--trusted-key KEY`` (repeatable; a key file, or ``name:base64`` itself) or
``$KILN_TRUSTED_KEYS`` (space-separated ``name:base64`` keys, ``common.trusted_keys``);
``kiln copy --to store --attester-key KEY`` (repeatable): keys trusted for attestations
only, never for paths (``registry.attest_fetch``). A copy into a store that refuses an
attestation (tampered with, or not the path's) still imports and roots the paths, which
their own signatures vouch for, and then fails (exit 1) naming each refused one; so does a
push, or a copy between registries, whose destination refuses an attestation (not
signed by a key it trusts, signed time ahead of its clock, ...): the paths and the index
are published, the command exits 1. Likewise a push whose ``--sign-key`` signature (or a
rotated key's) the registry did not merge into a path it had.
``kiln copy --to store --index-root ROOT``: the source's signed index is checked first,
as ``kiln mirror sync --root`` checks it, and only what it lists is taken
(``registry.indexstate``: the versions seen are kept under the store root).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from kiln.registry.looprun import run as run_async
from kiln.store.keyfiles import load_secret_key

from .common import (
    UsageError,
    add_store_arg,
    load_trusted_key,
    store_root,
    trusted_keys,
    warn_no_signatures,
    whole_number,
)
from .tokenargs import FROM_TOKEN, TOKEN, add_token_args, check_not_token, resolve

if TYPE_CHECKING:
    from kiln.store.localstore import LocalStore


def _open_store(args: argparse.Namespace, store_dir: str | None = None, create: bool = False) -> LocalStore:
    """The local store of ``--store``/``KILN_HOME``; made only if ``create`` (copying into
    it): reading from a mistyped path must not make a new, empty store there."""
    from kiln.store.localstore import LocalStore

    return LocalStore.open(store_root(args), store_dir=store_dir, create=create)


def cmd_push(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="kiln push", description="push the closures of store paths to a registry"
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--to", required=True, metavar="URL")
    add_token_args(p, TOKEN, "write token of the registry")
    p.add_argument("--sign-key", type=Path, help="sign paths that lack this key's signature before pushing")
    p.add_argument("-j", "--jobs", type=whole_number(1), default=8)
    add_store_arg(p)
    args = p.parse_args(argv)
    check_not_token(args.to, "--to")
    resolve(args, TOKEN)
    from kiln.registry.client import open_client
    from kiln.registry.push import push

    with _open_store(args) as store:
        from .targets import resolve_path_or_root

        paths = [resolve_path_or_root(store, a) for a in args.paths]
        sk = load_secret_key(args.sign_key) if args.sign_key else None
        rep = push(
            store,
            paths,
            lambda: open_client(args.to, args.token, args.jobs, store.store_dir),
            jobs=args.jobs,
            sign_key=sk,
        )
    print(
        f"pushed {rep.pushed} of {rep.closure} paths ({rep.nars_uploaded} NARs, {rep.bytes_uploaded} bytes, "
        f"{rep.attestations_uploaded} attestations)"
        + (
            f"; narinfos sent again (new signatures, a corrected CA) for {rep.signatures_updated} published paths"
            if rep.signatures_updated
            else ""
        )
        + (f"; {rep.index}" if rep.index else "")
    )
    for why in rep.ca_refused[:10]:  # (the published CA stays: a repair, not a failure of the push)
        print(f"warning: the registry did not take the corrected CA of {why}", file=sys.stderr)
    for why in rep.signatures_refused[:10]:
        print(f"error: the registry did not take the new signature of {why}", file=sys.stderr)
    for why in rep.attestations_refused[:10]:
        print(f"error: the registry refused the attestation {why}", file=sys.stderr)
    if any("trusted" in why for why in rep.attestations_refused):
        print(
            "  (kiln serve admits attestations signed by one of its --trusted-key or --attester-key "
            "keys; provenance is signed by the build key)",
            file=sys.stderr,
        )
    for what, n in (
        ("signatures", len(rep.signatures_refused)),
        ("attestations", len(rep.attestations_refused)),
    ):
        if n > 10:
            print(f"error: ... and {n - 10} more {what} not taken", file=sys.stderr)
    if rep.signatures_refused:
        print(
            f"error: the registry did not keep {len(rep.signatures_refused)} signature(s) (named above): the "
            "paths are published without them (does it trust the key? kiln serve --trusted-key)",
            file=sys.stderr,
        )
    return _attestations_refused(rep.attestations_refused) or (1 if rep.signatures_refused else 0)


#: what ``registry.attest_rules.future_problem`` says of a signed time ahead of the registry's clock
_AHEAD = "ahead of this registry's clock"


def _attestations_refused(refused: tuple[str, ...]) -> int:
    """``kiln push``'s and ``kiln copy``'s (between registries) exit status once everything
    else is done: 1 if the registry refused any attestation (the paths are published
    without it: verifiers requiring it will fail them), with a closing line saying so; 0
    otherwise."""
    if not refused:
        return 0
    print(
        f"error: the registry refused {len(refused)} attestation(s) (named above): the paths were "
        "published without them",
        file=sys.stderr,
    )
    if any(_AHEAD in why for why in refused):
        print(
            "  (a signed time ahead of the registry's clock: check this machine's clock (NTP), or that of "
            "the machine that signed it, and the registry's)",
            file=sys.stderr,
        )
    return 1


def cmd_copy(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="kiln copy", description="copy path closures between registries and stores"
    )
    p.add_argument("paths", nargs="+", metavar="PATH")
    p.add_argument("--from", dest="src", required=True, metavar="URL|store")
    p.add_argument("--to", dest="dst", required=True, metavar="URL|store")
    add_token_args(p, TOKEN, "bearer token of the registry written to, or read from when --to store")
    add_token_args(p, FROM_TOKEN, "bearer token of a private --from registry (between two registries)")
    p.add_argument(
        "--trusted-key",
        action="append",
        metavar="KEY",
        help="public key whose signatures admit paths and their attestations (repeatable)",
    )
    p.add_argument(
        "--attester-key",
        action="append",
        metavar="KEY",
        help="with --to store: public key whose DSSE signatures also admit attestations (provenance, "
        "SBOMs, VSAs), never paths (repeatable; a provenance or SBOM it alone signed does not replace "
        "a local one another key signed)",
    )
    p.add_argument(
        "--index-root",
        type=Path,
        metavar="ROOT",
        help="with --to store: pinned root metadata of the source's signed index (as kiln mirror sync "
        "--root); the index is checked first (signatures, expiry, rollback against the versions this "
        "store saw) and only the narinfos and attestations it lists, as it lists them, are taken",
    )
    p.add_argument("--sigs-needed", type=whole_number(0), default=1)
    p.add_argument("-j", "--jobs", type=whole_number(1), default=16)
    p.add_argument(
        "--store-dir",
        default=None,
        help="logical store dir when --to store creates a new store (default: the source's)",
    )
    p.add_argument(
        "--add-root",
        metavar="NAME",
        default=None,
        help="with --to store: make gcroots/NAME point at the first PATH, NAME-2 at the second, ... "
        "(no GC can come in between, as it can after the command)",
    )
    add_store_arg(p)
    args = p.parse_args(argv)
    check_not_token(args.src, "--from")
    check_not_token(args.dst, "--to")
    resolve(args, TOKEN, FROM_TOKEN)
    from kiln.registry import copy as rcopy

    roots = _root_names(args.add_root, len(args.paths)) if args.add_root is not None else []
    if roots and args.dst != "store":
        raise UsageError("--add-root needs --to store: only a local store has GC roots")
    if args.attester_key and args.dst != "store":
        raise UsageError(
            "--attester-key needs --to store: a registry copied to judges attestations by its own keys "
            "(kiln serve --attester-key)"
        )
    if args.index_root is not None and args.dst != "store":
        raise UsageError(
            "--index-root needs --to store (the versions seen are kept in the store); to check a "
            "registry's index on the way to another, kiln mirror sync it first"
        )
    from kiln.registry.client import open_client
    from kiln.store.errors import redact_urls

    if args.src == "store":
        if args.dst == "store":
            raise UsageError("--from store --to store: nothing to do")
        return cmd_push(
            [*args.paths, "--to", args.dst, "-j", str(args.jobs)]
            + (["--token", args.token] if args.token else [])
            + (["--store", str(args.store)] if args.store else [])
        )
    trusted = trusted_keys(args.trusted_key)
    if args.sigs_needed == 0:
        warn_no_signatures("paths are copied")
    if args.dst == "store":
        from kiln.registry.attest_transfer import AttestationError

        from .storeroots import add_root

        attesters = [load_trusted_key(k) for k in args.attester_key or []]
        index_root = args.index_root.read_bytes() if args.index_root is not None else None
        store_dir = args.store_dir
        if store_dir is None and not (store_root(args) / "config.json").exists():
            # a store this copy makes takes the source's store dir (a /nix/store cache's
            # paths cannot go into a new /kiln/store one, which was left behind)
            store_dir = run_async(_store_dir_of(args.src, args.from_token or args.token))
        with _open_store(args, store_dir, create=True) as store:
            refused: AttestationError | None = None
            try:
                n = rcopy.to_store(
                    args.src,
                    store,
                    args.paths,
                    trusted,
                    args.sigs_needed,
                    args.jobs,
                    token=args.from_token or args.token,  # --token has no other use here
                    attesters=attesters,
                    index_root=index_root,
                )
            except AttestationError as e:
                # raised last, after the paths were imported (each checked by its own
                # signatures and NAR hash) and the good attestations stored: the paths are
                # valid, so they get their roots; the command still fails
                refused, n = e, 0
            for name, path in zip(roots, args.paths, strict=False):  # no roots: none asked for
                add_root(store, name, path)  # to_store holds them as temp roots until we close
        if refused is not None:  # (run_command reports it: exit status 1)
            raise AttestationError(
                f"{refused}\nthe paths were copied into {store.root} (their content checked by their "
                "signatures); the attestations refused above were not stored"
            ) from None
        print(f"copied {n} paths into {store.root}")
        return 0
    rep = run_async(
        rcopy.between(
            args.src,
            lambda store_dir: open_client(args.dst, args.token, args.jobs, store_dir),
            args.paths,
            trusted,
            args.sigs_needed,
            args.jobs,
            src_token=args.from_token,  # never --token: it is the destination's secret
        )
    )
    print(f"copied {rep.paths} paths and {rep.attestations} attestations to {redact_urls(args.dst)}")
    for why in rep.refused[:10]:
        print(f"error: attestation not copied: {why}", file=sys.stderr)
    if len(rep.refused) > 10:
        print(f"error: ... and {len(rep.refused) - 10} more attestations not copied", file=sys.stderr)
    return _attestations_refused(tuple(rep.refused))


async def _store_dir_of(url: str, token: str | None) -> str | None:
    """The StoreDir registry ``url`` says it holds paths of (None: it names none)."""
    from kiln.registry.client import open_client

    async with open_client(url, token, create=False) as src:
        return (await src.cache_info()).get("StoreDir") or None


def _root_names(name: str, n: int) -> list[str]:
    """GC root names for ``n`` paths, as ``nix-store --realise --add-root`` makes them:
    NAME, NAME-2, NAME-3, ...; each is checked before anything is copied."""
    from kiln.store.localstore import check_root_name

    names = [name] + [f"{name}-{i}" for i in range(2, n + 1)]
    for r in names:
        check_root_name(r)
    return names


COMMANDS = {
    "push": cmd_push,
    "copy": cmd_copy,
}


def main(argv: list[str]) -> int:
    if not argv or argv[0] not in COMMANDS:
        print(f"kiln: cmd_registry cannot handle {argv[:1]}", file=sys.stderr)
        return 2
    return COMMANDS[argv[0]](argv[1:])
