"""Fetching a registry's attestations into a local store (``fetch_attestations``).

Invariants (``docs/security.md``, "Attestations in transit"):

- a fetched attestation is stored only if its file hashes to the registry's listing,
  its subject names the *local* path and NAR hash, and a key the fetch trusts validly
  signed it: the substitution's or copy's trusted keys (``Client.trusted``) or its
  attester keys (``kiln copy --attester-key``: trusted for attestations, never for
  paths; a VSA only by the key its kind names);
- it never replaces a local attestation a trusted key, an attester key or one of the
  store's own keys (``_own_keys``) signed unless it is not older
  (``attest_transfer.replaces``): "a store fetching attestations keeps its own when it
  is newer"; a local one none of them signed gives way to a trusted one whatever its
  claimed time (so a forged, future-dated statement cannot pin itself);
- a provenance or SBOM that no trusted key signed (only attester keys) replaces no local
  one that a trusted key or the store's own key signed, nor one another attester signed
  (``_attester_problem``: ``kiln serve --attester-key``'s rule, ``attest_rules``);
- an attestation whose signer is unknown here is skipped with a warning on stderr, not
  refused: it may be a rebuilder's, and stripping evidence can only make a requirement
  fail, never pass;
- one that *claims* a signer the fetch trusts (a signature whose ``keyid`` is a trusted
  or attester key's) that does not verify, or that has no signature at all (no registry
  admits one), was changed after it was signed: that is tampering, and it is refused
  like a file that does not match its listing or its path. Every refusal is raised
  (``Refused``, an ``AttestationError`` naming the path, the kind and why) after the rest
  are stored, so the command fails while what was checked is kept. ``Refused`` sorts
  them: ``tampered``, ``bad`` (not as listed, of another path, malformed) and
  ``unavailable`` (a transfer that failed, a listed file the registry lacks, a local
  write that failed): a build that substitutes fails for the first two only
  (``cli/buildglue``);
- ``listed`` (``kiln copy --index-root``): the listings a verified signed index gives
  replace the registry's own, so only files the index lists are fetched, and each must
  hash to the sha256 the index lists (``indexcheck``).
"""

from __future__ import annotations

import sys
from collections.abc import Iterable, Mapping, Sequence
from contextlib import suppress
from typing import Any

from kiln.store import attestations
from kiln.store.attestgroup import GroupWriter
from kiln.store.dsse import Envelope, keyid, signers, verify_raw
from kiln.store.errors import FormatError, KilnError, redact_urls
from kiln.store.signing import PublicKey

from .attest_rules import signer_bound
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
from .looprun import run as run_async


class Refused(AttestationError):
    """Attestations ``fetch_attestations`` refused (the message names each). Each tuple
    holds ``"path kind: why"`` lines: ``tampered`` (a false claim of a judged signer, or
    unsigned), ``bad`` (not as listed, of another path, malformed) and ``unavailable``
    (not received: a transfer error, a listed file missing there, a local write)."""

    def __init__(
        self, msg: str, tampered: Sequence[str] = (), bad: Sequence[str] = (), unavailable: Sequence[str] = ()
    ) -> None:
        super().__init__(msg)
        self.tampered, self.bad, self.unavailable = tuple(tampered), tuple(bad), tuple(unavailable)


#: what a file not hashing to the signed index's entry is called (as ``kiln mirror sync``)
NOT_AS_INDEXED = "attestation does not match the sha256 in the signed index (tampered?)"


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


def _broken_claims(env: Envelope, keys: Sequence[PublicKey]) -> list[PublicKey]:
    """The keys among ``keys`` in whose name (a signature's ``keyid``) ``env`` carries a
    signature that is not valid by that key: the statement or the signature was changed
    after signing, or another key signed and wrote that key's id. (A keyid is only a
    hint for verifying, ``dsse``; here it is what the envelope claims.)"""
    msg = env.pae()
    by_id = {keyid(k.key): k for k in keys}
    out: list[PublicKey] = []
    for s in env.signatures:
        k = by_id.get(s.keyid.lower())
        if k is not None and k not in out and not verify_raw(k.key, msg, s.sig):
            out.append(k)
    return out


def _signed_by(data: bytes, keys: Sequence[PublicKey]) -> set[bytes]:
    """The raw keys among ``keys`` that validly signed envelope ``data`` (none if it does
    not parse)."""
    try:
        env = Envelope.loads(data)
    except FormatError:
        return set()
    labelled = {f"{i}": k.key for i, k in enumerate(keys)}
    return {labelled[label] for label in signers(env, labelled)}


def _names(raw: set[bytes], keys: Sequence[PublicKey]) -> str:
    return ", ".join(sorted({repr(k.name) for k in keys if k.key in raw}))


def _attester_problem(
    cur: bytes, new: bytes, kind: str, builders: Sequence[PublicKey], attesters: Sequence[PublicKey]
) -> tuple[str | None, bool]:
    """``(why new, a signer_bound kind no builder key signed, may not replace the local
    cur, whether their times still matter)``. ``builders``: the trusted keys and the
    store's own. As ``kiln serve --attester-key`` (``attest_rules.signer_problem``): a
    local one a builder signed gives way only to a builder's; one attester A alone
    signed, to A's (the age rule decides); one several attesters signed, to a builder's.
    A local one no key known here signed gives way (module docstring)."""
    known = [*builders, *attesters]
    old_by, new_by = _signed_by(cur, known), _signed_by(new, known)
    if not old_by:
        return None, False
    if old_by & {k.key for k in builders}:
        return (
            f"the local one is signed by {_names(old_by, known)} (a trusted key or this store's own); one "
            f"signed only by attester key {_names(new_by, known)} does not replace it",
            True,
        )
    if len(old_by) != 1 or new_by != old_by:
        return (
            f"the local one is signed by attester key {_names(old_by, known)}; one signed by "
            f"{_names(new_by, known)} does not replace it (only a trusted key's, or that one attester's "
            "alone, does)",
            True,
        )
    return None, True


def _tampered(env: Envelope, keys: Sequence[PublicKey], trusted: Sequence[PublicKey]) -> str:
    """Why signed ``env``, which no key of ``keys`` validly signed, was tampered with:
    a signature in the name of a key of ``keys`` is not valid by it ("" if none is: its
    signers are unknown here)."""
    broken = _broken_claims(env, keys)
    who = ", ".join(
        f"{'trusted' if k in trusted else 'attester'} key {k.name!r} (keyid {keyid(k.key)[:16]}...)"
        for k in broken
    )
    return who and (
        f"its signature in the name of {who} does not verify (the statement or the signature was changed "
        "after signing, or another key signed in that key's name)"
    )


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
    attesters: Sequence[PublicKey] = (),
    any_signer: bool = False,
    listed: Mapping[str, Mapping[str, str]] | None = None,
) -> int:
    """Download the registry's attestations of ``paths`` (each valid in ``store``) and
    store those the local store lacks or holds in another version. Each file must hash
    to its listing entry and its subject must be the local path's name and NAR hash.
    Returns the number stored.

    Trust (``trusted``, else ``client.trusted``, the keys the substitution or copy
    trusts, and ``attesters``, keys trusted for attestations only): a fetched
    attestation is stored only if one of those keys validly signed it; it replaces a
    local one that such a key signed only if it is not older (``replaces``); a local one
    none of them signed gives way (a forged, future-dated statement must not pin
    itself); a provenance or SBOM only attesters signed replaces no local one a trusted
    key or the store's own key signed, nor another attester's (``_attester_problem``).
    One skipped for an unknown signer, for age or for those rules is said on stderr,
    with why; it is not an error. One that is bad — not as listed, of another path,
    unsigned, or signed in a judged key's name but not valid by it (tampered with) —
    is refused: after the good ones are stored, ``AttestationError`` names each (path,
    kind, why; "tampering found" leads when any was tampered with). ``any_signer``:
    store whatever is signed, by the age rule only — for a fresh temporary store whose
    policy then judges the signers (``admission``), never for a user's store.
    ``listed``: ``{hash part: {kind: sha256}}`` from a verified signed index, used
    instead of the registry's listings (module docstring). Refusals are raised as
    ``Refused``."""
    trusted = list(trusted if trusted is not None else (getattr(client, "trusted", None) or []))
    keys = [*trusted, *attesters]  # what a fetched one must be signed by
    # the "builders" (as kiln serve calls its --trusted-key keys): a local attestation is
    # kept (when newer) if one of them signed it, or the store's own build key: a path
    # built here carries this store's provenance, not the registry's
    builders = trusted + _own_keys(store)
    paths = sorted(set(paths))
    if not paths:
        return 0
    # the listings first (one batched request): most paths have none, and looking up
    # thousands of local infos for nothing costs more than the request
    hps = [_hp(p) for p in paths]
    if listed is None:
        remote = await listings(client, hps)
    else:
        remote = {h: dict(kinds) for h in hps if (kinds := listed.get(h))}
    infos = {p: i for p in paths if remote.get(_hp(p)) and (i := store.query(p)) is not None}
    if not infos:
        return 0
    errors: list[str] = []
    lost: set[str] = set()  # of ``errors``: files not received (``Refused.unavailable``)
    tampered: list[str] = []
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
        if listed is not None and isinstance(result, bytes) and sha256_hex(result) != want:
            errors.append(f"{p}: {kind} {NOT_AS_INDEXED}")
            return
        try:
            data = listed_bytes(client, kind, want, result)
        except KilnError as e:
            errors.append(f"{p}: {e}")
            if not isinstance(result, bytes):  # (not received: a transfer error, or missing there)
                lost.add(errors[-1])
            return
        base, nar_hex = p.rsplit("/", 1)[1], infos[p].nar_hash.hex
        try:
            env = check_envelope(data, kind, base, nar_hex, None)
        except KilnError as e:
            with suppress(FormatError):
                if not Envelope.loads(data).signatures:  # (of the right path or not)
                    tampered.append(
                        f"{p} {kind}: tampered with: it has no signature, and no registry admits an unsigned "
                        f"attestation ({e})"
                    )
                    return
            errors.append(f"{p}: {e}")
            return
        if not any_signer:
            why = _trusted_by(data, kind, base, nar_hex, keys)
            if why:
                how = _tampered(env, keys, trusted)
                if how:  # a claim of a signer trusted here that is false: not a stranger's
                    tampered.append(f"{p} {kind}: tampered with: {how}")
                else:  # (an unknown signer's: a rebuilder's, say; the verifier's policy decides)
                    skipped.append(f"{p} {kind}: not signed by a trusted key ({why})")
                return
        times = True  # (any_signer: the age rule only)
        if not any_signer and cur_bytes is not None:
            if attesters and signer_bound(kind) and not _signed_by(data, builders):
                barred, times = _attester_problem(cur_bytes, data, kind, builders, attesters)
                if barred is not None:
                    skipped.append(f"{p} {kind}: {barred}")
                    return
            else:
                # the local one's age counts if a key that judges this one could sign it
                # signed it: a builder's provenance or SBOM replaces an attester's whatever
                # their times (as kiln serve), a VSA is its one signer's
                judges = builders if signer_bound(kind) else [*builders, *attesters]
                times = not _trusted_by(cur_bytes, kind, base, nar_hex, judges)
        older = replaces(cur_bytes, data, kind) if times else None
        if older is not None:
            skipped.append(f"{p} {kind}: the local one is newer ({older})")
            return  # ours is newer and trusted: a registry cannot roll it back
        try:
            group.add(p, kind, env)
        except KilnError as e:
            errors.append(f"{p}: {kind}: {e}")
            lost.add(errors[-1])

    with group:  # (committed also when the transfer fails: what was checked is stored)
        await fetch_many(client, list(todo), got, jobs=jobs)
    stored = len(group.written)
    shown = redact_urls(client.url)
    for line in sorted(skipped)[:20]:
        print(f"warning: attestation from {shown} skipped: {line}", file=sys.stderr)
    if len(skipped) > 20:
        print(f"warning: ... and {len(skipped) - 20} more attestation(s) skipped", file=sys.stderr)
    if tampered or errors:
        refused = sorted(tampered) + errors
        head = f"{len(refused)} attestation(s) from {shown} refused"
        if tampered:
            head = f"tampering found: {head}, {len(tampered)} of them tampered with"
        raise Refused(
            head
            + ":\n  "
            + "\n  ".join(refused[:20])
            + (f"\n  ... and {len(refused) - 20} more" if len(refused) > 20 else ""),
            sorted(tampered),
            [e for e in errors if e not in lost],
            [e for e in errors if e in lost],
        )
    return stored


def fetch_attestations_sync(
    url: str,
    store: Any,
    paths: Iterable[str],
    token: str | None = None,
    *,
    trusted: list[PublicKey] | None = None,
    attesters: Sequence[PublicKey] = (),
) -> int:
    """``fetch_attestations`` from the registry at ``url`` (only what ``trusted`` or
    ``attesters`` keys signed), for synchronous library callers (the CLI's build loop
    uses its own session: ``buildglue``). Same contract and errors."""
    from .client import open_client

    async def run() -> int:
        async with open_client(url, token, create=False) as client:
            return await fetch_attestations(
                client, store, list(paths), trusted=trusted or [], attesters=attesters
            )

    return run_async(run())
