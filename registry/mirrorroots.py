"""The roots a mirror trusts: whether a first sync may start, the trust state a sync
starts from, and a ``--root`` given again checked against it (``kiln mirror sync``;
``mirror`` has the theory of operation). Errors are ``MirrorUsageError`` (exit 2) and
``index.NoIndex``; nothing here writes."""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

from kiln.store.errors import KilnError

from . import index as ix
from .client import Client


class MirrorError(KilnError):
    """A sync could not complete; the mirror kept its previous state. ``transient``:
    every path that failed did so for a temporary reason (``retryable``: the source
    unreachable, 5xx, timeouts), so a later sync may well succeed."""

    def __init__(self, msg: str, transient: bool = False) -> None:
        super().__init__(msg)
        self.transient = transient


class MirrorUsageError(MirrorError):
    """The sync was not given what it needs to start (a first sync without ``--root``)."""


async def first_sync_allowed(client: Client, src_url: str, dst_dir: Path, root: bytes | None) -> None:
    """A first sync: refused, before DST is made, when DST is a registry publishing its own
    signed index, when the source publishes none (``no_index``: a plain binary cache, as
    ``nix copy`` writes), without ``--root`` (``MirrorUsageError``) or with one that is no
    self-signed root."""
    own = Path(dst_dir) / "index" / "root.json"
    if own.exists():
        # a publishing registry's root is what its clients pin: a sync would replace it
        # (a swapped SRC and DST on a live registry destroyed its trust anchor)
        raise MirrorUsageError(
            f"{dst_dir} is a registry with its own signed index ({own}) and was never synced as a "
            "mirror: a sync would replace its root and index, which its clients pin (are SRC and DST "
            "swapped?); mirror into another directory"
        )
    if await client.get("index/timestamp.json") is None:
        raise no_index(client, src_url)
    if root is None:
        raise MirrorUsageError(
            f"first sync into {dst_dir}: pass the source's pinned root metadata with --root FILE"
        )
    ix.TrustState.pin(root)


def trusted_state(prev: bytes | None, root: bytes | None, repin_root: bool, dst_dir: Path) -> ix.TrustState:
    """The trust state this sync starts from: DST's (``prev``), with a ``--root`` given
    again checked against it (``given_root``), or ``root`` (``--root``) pinned afresh on a first
    sync or a re-pin."""
    if root is None:
        if prev is None:
            raise MirrorUsageError(
                f"first sync into {dst_dir}: pass the source's pinned root metadata with --root FILE"
            )
        return ix.TrustState.from_json(prev)
    given = ix.TrustState.pin(root)
    if prev is None or repin_root:
        if prev is not None:
            print(f"note: {dst_dir} re-pinned to the given root; versions seen forgotten", file=sys.stderr)
        return given
    state = ix.TrustState.from_json(prev)
    given_root(state, given, dst_dir, walked=False)
    return state


def given_root(state: ix.TrustState, given: ix.TrustState, dst_dir: Path, walked: bool) -> None:
    """``MirrorUsageError`` if ``--root`` (``given``) is not a root DST trusts or may
    reach: another root of the root's version, or (``walked``: after the chain walk) a
    newer one than the source's rotations reach."""
    have, want = state.root["version"], given.root["version"]

    def sha(b: bytes) -> str:
        return hashlib.sha256(b).hexdigest()[:16] + "..."

    if want < have:
        # an older root: the one pinned first (a cron line passes it every time), unless
        # DST holds that version's root (mirrored from the source) and it is another
        try:
            held = (dst_dir / "index" / f"{want}.root.json").read_bytes()
            same = ix.TrustState.pin(held).root == given.root  # (what is signed, not the spacing)
        except (OSError, ix.IndexError_):
            return
        if same:
            return
        which = f"another root of version {want} (sha256 {sha(held)}, given {sha(given.root_bytes)})"
    elif (want > have and not walked) or given.root_bytes == state.root_bytes:
        return
    else:
        which = (
            f"another root of version {have} (sha256 {sha(state.root_bytes)}, given {sha(given.root_bytes)})"
            if want == have
            else f"root version {have}, the newest the source's signed rotations reach (given version {want})"
        )
    raise MirrorUsageError(
        f"--root: {dst_dir} trusts {which}: a mirror keeps the root it pinned and follows the "
        "source's signed rotations; if the source's keys were replaced out of band, pass "
        "--repin-root to trust the given root instead"
    )


def no_index(client: Client, src_url: str) -> ix.NoIndex:
    """Why a source without a signed index cannot be mirrored, and what to use instead."""
    elsewhere = getattr(client, "missed_at", {}).get("index/timestamp.json")
    if elsewhere is not None:
        return ix.NoIndex(
            f"the source redirects index/timestamp.json to {elsewhere}, which answers that it has "
            "no such file (is the redirect target a copy of the registry?)"
        )
    return ix.NoIndex(
        f"the source publishes no index (no signed index/timestamp.json at {src_url}): it is a plain binary "
        "cache (one written by nix copy, say), which kiln mirror sync cannot verify; copy paths from it "
        f"with kiln copy --from {src_url} --to DST --trusted-key KEY PATH... (DST a registry or 'store')"
    )
