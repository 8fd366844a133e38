"""Attestations on the wire: registry admission, listings, push and fetch.

A registry keeps a path's attestations beside its narinfo (see ``layout``)::

    <hashpart>.att/<kind>.dsse.json   the DSSE envelope, byte-for-byte as uploaded
    <hashpart>.att/index.json         {"kinds": {kind: sha256 hex of that file}}

The listing is a plain file so a static web server can serve the layout read-only; it
is rewritten (atomically, under ``.kiln/att.lock``) from the directory's contents after
every accepted upload, so concurrent uploads by several server processes cannot lose an
entry.

Admission (``admit``, used by ``PUT`` on the server and by ``file://`` clients): the
path's narinfo must be published; the envelope must parse, carry an in-toto statement
whose subject names the path *and* the published NarHash, have a predicate type that
fits its kind (``provenance`` → SLSA provenance, ``sbom`` → CycloneDX/SPDX, ``vsa-*`` →
a VSA signed by the key whose keyid prefix the kind names), and — when the caller gives
trusted keys — a valid DSSE signature by one of them; a signed time (``finishedOn``,
``timeVerified``) no more than the clock skew in the future. It replaces the stored one
of its kind only under ``attest_rules``: its signed time is not older (``replaces``: a
rebuilder's newer FAILED verdict cannot be overwritten by re-uploading its genuine older
PASSED one), and a provenance or SBOM only when a trusted (builder) key signed it or,
without one, exactly one known key, the one that alone signed the stored one (an
``--attester-key``, meant for rebuilders' VSAs, cannot overwrite the builder's: the
table is in ``attest_rules``). Anything else is a 4xx answer; nothing is written.

Transfer: ``push_attestations`` uploads what the registry lacks (by comparing listings);
``fetch_attestations`` (``attest_fetch``) downloads a registry's attestations for paths that are valid in a
local store, checks each file against the listing's sha256 and its subject against the
*local* ``PathInfo`` (so an attestation can never attach to other content), and stores
it with ``attestations.write`` only if a key the fetch trusts (the substitution's or
copy's trusted keys) signed it, and then not over a local one such a key signed that is
newer (the same age rule as admission); a local one that no trusted key signed gives
way. So a registry can neither plant a forged attestation in a store nor displace a
trusted one. Whether an attestation's signer counts for a requirement stays the
verifier's policy (``kiln verify``).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from kiln.store import attestations
from kiln.store import narinfo as ni
from kiln.store.dsse import DsseError, Envelope, keyid
from kiln.store.dsse import verify as dsse_verify
from kiln.store.errors import FormatError, KilnError
from kiln.store.intoto import CYCLONEDX_TYPE, PROVENANCE_TYPE, SPDX_TYPE, VSA_TYPE, parse_statement
from kiln.store.signing import PublicKey

from . import layout
from .attest_rules import future_problem, may_replace
from .attest_rules import replaces as replaces  # (``attest_fetch`` applies the same age rule)
from .client import RegistryError
from .dirlock import dir_lock
from .storage import Storage

MAX_ATTESTATION = 4 << 20
LOCK_KEY = ".kiln/att.lock"
_PREDICATES = {"provenance": (PROVENANCE_TYPE,), "sbom": (CYCLONEDX_TYPE, SPDX_TYPE), "vsa": (VSA_TYPE,)}


class AttestationError(KilnError):
    """An attestation was refused (malformed, wrong subject, untrusted signer)."""

    def __init__(self, msg: str, status: int = 400) -> None:
        super().__init__(msg)
        self.status = status


#: answers that refuse one attestation (not trusted, a subject it disagrees with, no such
#: path there, too big): that file stays behind with a warning; anything else is an error
REFUSED = (400, 403, 409, 413)


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def check_envelope(
    data: bytes, kind: str, base: str, nar_sha256_hex: str, trusted: list[PublicKey] | None
) -> Envelope:
    """Parse ``data`` as the ``kind`` attestation of the path with base name ``base`` and
    NAR sha256 ``nar_sha256_hex``; with ``trusted`` (possibly empty) also require a valid
    signature by one of those keys. Raise ``AttestationError`` saying why not."""
    try:
        attestations.check_kind(kind)
        env = Envelope.loads(data)
        st = parse_statement(env.payload)
    except FormatError as e:
        raise AttestationError(f"{kind} attestation of {base}: {e}") from None
    if not st.matches(base, nar_sha256_hex):
        subs = ", ".join(f"{n or '(unnamed)'} sha256:{d.get('sha256', '?')[:16]}..." for n, d in st.subjects)
        raise AttestationError(
            f"{kind} attestation does not name {base} with NAR sha256:{nar_sha256_hex} (its subjects: {subs})"
        )
    family = kind.split("-", 1)[0]
    wanted = _PREDICATES.get(family)
    if wanted is not None and st.predicate_type not in wanted:
        raise AttestationError(f"{kind} attestation of {base} has predicate type {st.predicate_type!r}")
    if not env.signatures:
        raise AttestationError(f"{kind} attestation of {base} is unsigned", 403)
    if trusted is not None:
        keys = {f"{k.name}#{i}": k.key for i, k in enumerate(trusted)}  # names need not be unique
        if family == "vsa" and kind.startswith("vsa-"):
            keys = {n: k for n, k in keys.items() if keyid(k)[:16] == kind[4:]}
        try:
            dsse_verify(env, keys, 1, (env.payload_type,))
        except DsseError as e:
            raise AttestationError(
                f"{kind} attestation of {base}: not signed by a trusted key ({e})", 403
            ) from None
    return env


# ------------------------------------------------------------------ registry side


def listing(storage: Storage, hash_part: str) -> dict[str, str]:
    """``{kind: sha256}`` of a path's attestations in a registry directory ({} if none)."""
    return layout.parse_att_listing(storage.read(layout.att_listing_key(hash_part)))


def rebuild_listing(storage: Storage, hash_part: str) -> dict[str, str]:
    """Rewrite ``<h>.att/index.json`` from the directory's files (under a lock shared by
    every server process, so a concurrent upload's entry is never lost)."""
    with dir_lock(storage, LOCK_KEY):
        kinds = {}
        for key in storage.list(f"{hash_part}.att/"):
            kind = layout.att_kind_of_key(key)
            data = storage.read(key) if kind else None
            if kind and data is not None:
                kinds[kind] = sha256_hex(data)
        body = json.dumps({"kinds": kinds}, sort_keys=True, separators=(",", ":")).encode() + b"\n"
        storage.put_bytes(layout.att_listing_key(hash_part), body)
        return kinds


def admit(
    storage: Storage,
    store_dir: str,
    hash_part: str,
    kind: str,
    data: bytes,
    trusted: list[PublicKey] | None,
    attesters: Sequence[PublicKey] = (),
    *,
    now: datetime | None = None,
) -> tuple[int, str]:
    """Admit one uploaded attestation into a registry directory (see module docstring):
    signed by one of ``trusted`` (the registry's builder keys) or ``attesters`` (None:
    the caller owns the directory and signers are not judged), no signed time past
    ``now`` (default: the clock) plus the skew, and ``attest_rules.may_replace`` of the
    stored one. Returns ``(HTTP status, message)``; writes nothing unless 2xx."""
    if len(data) > MAX_ATTESTATION:
        return 413, f"error: attestation over {MAX_ATTESTATION} bytes"
    text = storage.read(layout.narinfo_key(hash_part))
    if text is None:
        return 409, f"error: no narinfo is published for {hash_part}; push the path before its attestations"
    now = now or datetime.now(UTC)
    keys = None if trusted is None else [*trusted, *attesters]
    try:
        info = ni.parse(text.decode(), store_dir)
        check_envelope(data, kind, info.path.rsplit("/", 1)[1], info.nar_hash.hex, keys)
    except AttestationError as e:
        return e.status, f"error: {e}"
    except KilnError as e:
        return 400, f"error: {e}"
    why = future_problem(data, kind, now)
    if why is not None:
        return 400, f"error: {why}"
    key = layout.att_key(hash_part, kind)
    with dir_lock(storage, LOCK_KEY):  # the check and the write together: no older one slips in between
        old = storage.read(key)
        if old == data:
            return 200, "already published"
        refused = may_replace(old, data, kind, trusted=trusted, attesters=attesters, now=now)
        if refused is not None:
            return refused[0], f"error: {refused[1]}"
        storage.put_bytes(key, data)
    rebuild_listing(storage, hash_part)
    return 201, "published"


# ------------------------------------------------------------------ client side


async def listings(client: Any, hash_parts: list[str]) -> dict[str, dict[str, str]]:
    """``{hash part: {kind: sha256}}`` for paths with attestations at ``client``'s registry
    (batched where the server supports it, else one listing GET per path)."""
    return await client.attestation_listings(hash_parts)


def _hp(path: str) -> str:
    return path.rsplit("/", 1)[1][:32]


def _local_files(store: Any, path: str) -> dict[str, bytes]:
    out = {}
    for kind, env in attestations.read_all(store, path).items():
        out[kind] = env.dumps().encode()
    return out


async def push_attestations(
    client: Any, store: Any, paths: Iterable[str], jobs: int = 8
) -> tuple[int, list[str]]:
    """Upload every attestation of ``paths`` (valid in ``store``) that the registry lacks or
    holds in another version; their narinfos must already be published. Returns the
    number uploaded and ``"path kind: why"`` for each the registry refused (not signed
    by a key it trusts, a subject it disagrees with): evidence it does not take, not a
    failure of the push. Any other error is raised."""
    local = {p: f for p in paths if (f := _local_files(store, p))}
    if not local:
        return 0, []
    remote = await listings(client, [_hp(p) for p in local])
    todo = [
        (p, kind, data)
        for p, files in local.items()
        for kind, data in files.items()
        if remote.get(_hp(p), {}).get(kind) != sha256_hex(data)
    ]
    sem = asyncio.Semaphore(jobs)
    refused: list[str] = []

    async def up(p: str, kind: str, data: bytes) -> None:
        async with sem:
            try:
                await client.put_bytes(layout.att_key(_hp(p), kind), data)
            except RegistryError as e:
                if e.status not in REFUSED:
                    raise
                refused.append(f"{p} {kind}: {e}")

    await asyncio.gather(*(up(*t) for t in todo))
    return len(todo) - len(refused), sorted(refused)


async def _get_listed(client: Any, path: str, kind: str, want: str, sem: asyncio.Semaphore) -> bytes:
    """The ``kind`` attestation of ``path`` at ``client``, which its listing says hashes to
    ``want`` (sha256 hex); ``KilnError`` if it is missing or hashes otherwise."""
    async with sem:
        data = await client.get(layout.att_key(_hp(path), kind))
    if data is None:
        raise KilnError(f"{kind} is listed but missing at {client.url}")
    if sha256_hex(data) != want:
        raise KilnError(f"{kind} does not hash to its listing entry at {client.url}")
    return data


async def relay_attestations(
    src: Any, dst: Any, subjects: dict[str, str], jobs: int = 8
) -> tuple[int, list[str]]:
    """Copy the attestations of ``subjects`` (path -> NAR hash, hex, from a narinfo the
    caller verified) from registry ``src`` to ``dst``, whose narinfos must already be
    published: those ``dst`` lacks or holds in another version. Each file must hash to
    ``src``'s listing entry and name its path and NAR hash before it is uploaded;
    ``dst`` then admits it by its own rules. Returns the number copied and ``"path
    kind: why"`` for each file one side refused (evidence not copied, not a failure of
    the copy); any other error is raised."""
    hps = {_hp(p): p for p in subjects}
    remote = await listings(src, sorted(hps))
    if not remote:
        return 0, []
    there = await listings(dst, sorted(h for h in hps if h in remote))
    todo = [
        (hps[h], kind, sha)
        for h in sorted(remote)
        if h in hps
        for kind, sha in sorted(remote[h].items())
        if there.get(h, {}).get(kind) != sha
    ]
    sem = asyncio.Semaphore(jobs)
    problems: list[str] = []
    copied = 0

    async def one(p: str, kind: str, want: str) -> None:
        nonlocal copied
        try:
            attestations.check_kind(kind)
        except FormatError as e:
            problems.append(f"{p} {kind[:80]!r}: {e}")
            return
        try:
            data = await _get_listed(src, p, kind, want, sem)
            check_envelope(data, kind, p.rsplit("/", 1)[1], subjects[p], None)
            async with sem:
                await dst.put_bytes(layout.att_key(_hp(p), kind), data)
        except RegistryError as e:
            if e.status not in REFUSED:
                raise
            problems.append(f"{p} {kind}: {e}")
            return
        except KilnError as e:  # missing, not what was listed, not an attestation of this path
            problems.append(f"{p} {kind}: {e}")
            return
        copied += 1

    await asyncio.gather(*(one(*t) for t in todo))
    return copied, sorted(problems)


# (the client side that stores into a local store lives in ``attest_fetch``)
