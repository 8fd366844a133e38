"""Helpers shared by the verification and rebuilder commands (``cmd_verify``,
``cmd_rebuild``): naming a store path on the command line, opening the store without
creating it, usage errors (exit status 2), and the signer options."""

from __future__ import annotations

import argparse

from kiln.store.errors import FormatError, KilnError, NoStoreError
from kiln.store.hashes import Hash
from kiln.store.localstore import LocalStore
from kiln.store.paths import StorePath

from .common import store_root
from .storeroots import root_path

EXIT_USAGE = 2


def open_store(args: argparse.Namespace) -> LocalStore:
    """The store ``--store`` names, which must exist (else a ``UsageError``); a store that
    is there but cannot be opened (a damaged database) raises its ``StoreError``: no
    usage error, the command could not run (``kiln verify``: exit 3)."""
    try:
        return LocalStore.open(store_root(args), create=False)
    except NoStoreError as e:
        raise UsageError(str(e)) from None


class UsageError(Exception):
    """A usage error: printed, exit status 2."""


def by_digest(store: LocalStore, arg: str) -> str:
    """The valid path whose NAR hash is ``arg`` (``sha256:<hex|nix32>`` or SRI)."""
    try:
        want = Hash.parse(arg)
    except FormatError as e:
        raise KilnError(f"{arg!r} is not a NAR digest: {e}") from None
    found = [p for p in store.all_paths() if (i := store.query(p)) is not None and i.nar_hash == want]
    if not found:
        raise KilnError(f"no path in the store at {store.root} has NAR hash {want.to_hex()}")
    if len(found) > 1:
        raise KilnError(f"{len(found)} paths have NAR hash {want.to_hex()}: {', '.join(found)}; name one")
    return found[0]


def by_base_name(store: LocalStore, base: str) -> str | None:
    """The valid store path whose hash part (32 characters) or base name ``base`` is, or
    None."""
    info = store.query_by_hash_part(base[:32]) if len(base) >= 32 else None
    if info is None or (len(base) > 32 and StorePath.parse(info.path).base != base):
        return None
    return info.path


def resolve_target(store: LocalStore, arg: str) -> str:
    """A store path from a logical or physical path, a base name, a hash part, the NAR
    digest of its content (``sha256:...``), or a GC root name."""
    if arg.startswith(("sha256:", "sha256-")):
        return by_digest(store, arg)
    try:
        path, sub = store.resolve(arg)
    except (KilnError, ValueError):
        # (read as GC reads it, through a moved store too; an invalid one is an error naming it)
        if "/" not in arg and (rooted := root_path(store, arg)) is not None:
            return rooted
        if "/" in arg.rstrip("/"):
            # a path outside this store names nothing here, whatever its last component:
            # another store's or a registry's copy must not be taken for this store's
            raise KilnError(
                f"{arg!r} is not a path in the store at {store.root} (to verify what a registry "
                "directory holds: DIR#PATH, file:///DIR#PATH or --registry DIR PATH)"
            ) from None
        found = by_base_name(store, arg.rstrip("/"))
        if found is None:
            raise KilnError(f"{arg!r} is not a path in the store at {store.root}") from None
        return found
    if sub:
        raise KilnError(f"{arg!r} is inside {path}; give the store path itself")
    return path


def resolve_path_or_root(store: LocalStore, arg: str) -> str:
    """The store path ``arg`` names, as ``store.resolve`` reads it (a path inside a store
    path names that path), else as ``resolve_target`` does (a GC root name, a base
    name, a hash part, a NAR digest): what ``kiln run``, ``sbom``, ``verify`` and ``log``
    accept, ``kiln store info`` and ``kiln push`` accept too."""
    try:
        return store.resolve(arg)[0]
    except (KilnError, ValueError):
        return resolve_target(store, arg)


def signer_args(p: argparse.ArgumentParser, what: str) -> None:
    p.add_argument("--key", metavar="FILE", help=f"secret key that signs {what} (mode 0600)")
    p.add_argument(
        "--signer-cmd", metavar="CMD", help="external signer (stdin: data; stdout: base64 ed25519 signature)"
    )
    p.add_argument(
        "--signer-key", metavar="PUB", help="public key of --signer-cmd (name:base64 or a .pub file)"
    )
