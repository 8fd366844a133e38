"""Fetching a registry's attestations into a local store (``fetch_attestations``).

Invariants (``docs/security.md``, "Attestations in transit"):

- a fetched attestation is stored only if its file hashes to the registry's listing,
  its subject names the *local* path and NAR hash, and a key the fetch trusts (the
  substitution's or copy's trusted keys: ``Client.trusted``) validly signed it;
- it never replaces a local attestation a trusted key or one of the store's own keys
  (``_own_keys``) signed unless it is not older (``attest_transfer.replaces``):
  "a store fetching attestations keeps its own when it is newer"; a local one neither
  signed gives way to a trusted one whatever its claimed time (so a forged,
  future-dated statement cannot pin itself);
- what is skipped for trust or age is said on stderr, not raised: attestations are
  evidence, and stripping them can only make a requirement fail, never pass.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Iterable
from typing import Any

from kiln.store import attestations
from kiln.store.attestgroup import GroupWriter
from kiln.store.errors import FormatError, KilnError, redact_urls
from kiln.store.signing import PublicKey

from .attest_transfer import (
    AttestationError,
    _hp,
    check_envelope,
    listed_bytes,
    listings,
    replaces,
    sha256_hex,
)
from .attest_wire import fetch_many


def _trusted_by(data: bytes, kind: str, base: str, nar_hex: str, keys: list[PublicKey]) -> str:
    """Empty if ``data`` is a valid ``kind`` attestation of the path signed by one of
    ``keys`` (``check_envelope``'s rule, a VSA by the key it is named after), else why not."""
    if not keys:
        return "no trusted keys were given to judge its signer"
    try:
        check_envelope(data, kind, base, nar_hex, keys)
    except AttestationError as e:
        return str(e)
    return ""


def _own_keys(store: Any) -> list[PublicKey]:
    """The store's own keys (``pathadmit.local_keys``: its ``keys/`` and
    ``$KILN_HOME/keys``). A path built here and signed with one of them keeps its newer
    local attestations."""
    from kiln.store.pathadmit import local_keys

    return local_keys(getattr(store, "root", None))


async def fetch_attestations(
    client: Any,
    store: Any,
    paths: Iterable[str],
    jobs: int = 8,
    *,
    trusted: list[PublicKey] | None = None,
    any_signer: bool = False,
) -> int:
    """Download the registry's attestations of ``paths`` (each valid in ``store``) and
    store those the local store lacks or holds in another version. Each file must hash
    to its listing entry and its subject must be the local path's name and NAR hash;
    a bad one raises ``AttestationError`` (after the good ones are stored). Returns the
    number stored.

    Trust (``trusted``, else ``client.trusted``, the keys the substitution or copy
    trusts): a fetched attestation is stored only if one of those keys validly signed
    it; it replaces a local one that such a key signed only if it is not older
    (``replaces``); a local one no trusted key signed gives way (a forged, future-dated
    statement must not pin itself). Each attestation skipped for trust or age is said
    on stderr, with why; it is not an error. ``any_signer``: store whatever is signed,
    by the age rule only — for a fresh temporary store whose policy then judges the
    signers (``admission``), never for a user's store."""
    keys = list(trusted if trusted is not None else (getattr(client, "trusted", None) or []))
    # a local attestation is kept (when newer) if those keys or the store's own build key
    # signed it: a path built here carries this store's provenance, not the registry's
    keep_keys = keys + _own_keys(store)
    paths = sorted(set(paths))
    if not paths:
        return 0
    # the listings first (one batched request): most paths have none, and looking up
    # thousands of local infos for nothing costs more than the request
    remote = await listings(client, [_hp(p) for p in paths])
    infos = {p: i for p in paths if remote.get(_hp(p)) and (i := store.query(p)) is not None}
    if not infos:
        return 0
    errors: list[str] = []
    skipped: list[str] = []
    # what to fetch: (hash part, kind) -> (path, listed sha256, the local file's bytes)
    todo: dict[tuple[str, str], tuple[str, str, bytes | None]] = {}
    for p in infos:
        for kind, want in sorted(remote[_hp(p)].items()):
            try:
                attestations.check_kind(kind)
            except FormatError as e:  # a listing entry no attestation can have: fetch nothing
                errors.append(f"{p}: {e}")
                continue
            try:
                cur = attestations.read(store, p, kind)
            except FormatError:
                cur = None
            cur_bytes = cur.dumps().encode() if cur is not None else None
            if cur_bytes is None or sha256_hex(cur_bytes) != want:
                todo[(_hp(p), kind)] = (p, want, cur_bytes)
    # each one on its own (one bad entry must not stop the others), all written at the
    # end with one group sync (``GroupWriter``) instead of two fsyncs each
    group = GroupWriter(store)

    def got(h: str, kind: str, result: bytes | None | KilnError) -> None:
        p, want, cur_bytes = todo[(h, kind)]
        try:
            data = listed_bytes(client, kind, want, result)
        except KilnError as e:
            errors.append(f"{p}: {e}")
            return
        base, nar_hex = p.rsplit("/", 1)[1], infos[p].nar_hash.hex
        try:
            env = check_envelope(data, kind, base, nar_hex, None)
        except KilnError as e:
            errors.append(str(e))
            return
        if not any_signer:
            why = _trusted_by(data, kind, base, nar_hex, keys)
            if why:
                skipped.append(f"{p} {kind}: not signed by a trusted key ({why})")
                return
        older = replaces(cur_bytes, data, kind)
        if older is not None and (any_signer or not _trusted_by(cur_bytes, kind, base, nar_hex, keep_keys)):  # type: ignore[arg-type]
            skipped.append(f"{p} {kind}: the local one is newer ({older})")
            return  # ours is newer and trusted: a registry cannot roll it back
        try:
            group.add(p, kind, env)
        except KilnError as e:
            errors.append(f"{p}: {kind}: {e}")

    with group:  # (committed also when the transfer fails: what was checked is stored)
        await fetch_many(client, list(todo), got, jobs=jobs)
    stored = len(group.written)
    shown = redact_urls(client.url)
    for line in sorted(skipped)[:20]:
        print(f"warning: attestation from {shown} skipped: {line}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"warning: ... and {len(skipped) - 20} more attestation(s) skipped", file=sys.stderr)
    if errors:
        raise AttestationError(
            f"{len(errors)} attestation(s) from {client.url} refused:\n  " + "\n  ".join(errors[:20])
        )
    return stored


def fetch_attestations_sync(
    url: str,
    store: Any,
    paths: Iterable[str],
    token: str | None = None,
    *,
    trusted: list[PublicKey] | None = None,
) -> int:
    """``fetch_attestations`` from the registry at ``url`` (only what ``trusted`` keys
    signed), for synchronous library callers (the CLI's build loop uses its own
    session: ``buildglue``). Same contract and errors."""
    from .client import open_client

    async def run() -> int:
        async with open_client(url, token, create=False) as client:
            return await fetch_attestations(client, store, list(paths), trusted=trusted or [])

    return asyncio.run(run())
