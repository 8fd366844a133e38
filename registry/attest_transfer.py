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

Many uploads at once (``POST /attestation-upload-batch``, ``file://`` pushes) go through
``attest_batch.admit_many``: each judged by the same ``check_upload`` and
``check_replace`` as ``admit``, all written under one lock with one barrier.

Transfer (in batches where the registry can: ``attest_wire``): ``push_attestations``
uploads what the registry lacks (by comparing listings);
``fetch_attestations`` (``attest_fetch``) downloads a registry's attestations for paths that are valid in a
local store, checks each file against the listing's sha256 and its subject against the
*local* ``PathInfo`` (so an attestation can never attach to other content), and stores
it (``attestgroup.GroupWriter``: one group sync) only if a key the fetch trusts (the substitution's or
copy's trusted keys) signed it, and then not over a local one such a key signed that is
newer (the same age rule as admission); a local one that no trusted key signed gives
way. So a registry can neither plant a forged attestation in a store nor displace a
trusted one. Whether an attestation's signer counts for a requirement stays the
verifier's policy (``kiln verify``).
"""

from __future__ import annotations

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
from .storage import Durability, Storage

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


def listing_body(kinds: dict[str, str]) -> bytes:
    """The bytes of ``<h>.att/index.json`` for ``kinds``."""
    return json.dumps({"kinds": kinds}, sort_keys=True, separators=(",", ":")).encode() + b"\n"


def stored_kinds(storage: Storage, hash_part: str) -> dict[str, str]:
    """``{kind: sha256}`` of the files in ``<h>.att/`` (the caller holds ``LOCK_KEY``)."""
    kinds = {}
    for key in storage.list(f"{hash_part}.att/"):
        kind = layout.att_kind_of_key(key)
        data = storage.read(key) if kind else None
        if kind and data is not None:
            kinds[kind] = sha256_hex(data)
    return kinds


def rebuild_listing(storage: Storage, hash_part: str, *, durable: Durability = None) -> dict[str, str]:
    """Rewrite ``<h>.att/index.json`` from the directory's files (under a lock shared by
    every server process, so a concurrent upload's entry is never lost). ``durable``
    as for ``Storage.put_bytes`` (False: the caller's barrier follows)."""
    with dir_lock(storage, LOCK_KEY):
        kinds = stored_kinds(storage, hash_part)
        storage.put_bytes(layout.att_listing_key(hash_part), listing_body(kinds), durable=durable)
        return kinds


def check_upload(
    storage: Storage,
    store_dir: str,
    hash_part: str,
    kind: str,
    data: bytes,
    trusted: list[PublicKey] | None,
    attesters: Sequence[PublicKey],
    now: datetime,
) -> tuple[int, str] | None:
    """``admit``'s checks of an upload on its own (None: it passes them): its size, the
    path's published narinfo, ``check_envelope`` (signers: ``trusted`` and ``attesters``,
    not judged when ``trusted`` is None) and ``future_problem``."""
    if len(data) > MAX_ATTESTATION:
        return 413, f"error: attestation over {MAX_ATTESTATION} bytes"
    text = storage.read(layout.narinfo_key(hash_part))
    if text is None:
        return 409, f"error: no narinfo is published for {hash_part}; push the path before its attestations"
    keys = None if trusted is None else [*trusted, *attesters]
    try:
        info = ni.parse(text.decode(), store_dir)
        check_envelope(data, kind, info.path.rsplit("/", 1)[1], info.nar_hash.hex, keys)
    except AttestationError as e:
        return e.status, f"error: {e}"
    except (KilnError, UnicodeDecodeError) as e:
        return 400, f"error: {e}"
    why = future_problem(data, kind, now)
    if why is not None:
        return 400, f"error: {why}"
    return None


def check_replace(
    old: bytes | None,
    data: bytes,
    kind: str,
    trusted: list[PublicKey] | None,
    attesters: Sequence[PublicKey],
    now: datetime,
) -> tuple[int, str] | None:
    """What ``admit`` answers for ``data`` where ``old`` is stored (read under
    ``LOCK_KEY``): 200 when identical, ``may_replace``'s refusal, or None: write it."""
    if old == data:
        return 200, "already published"
    refused = may_replace(old, data, kind, trusted=trusted, attesters=attesters, now=now)
    if refused is not None:
        return refused[0], f"error: {refused[1]}"
    return None


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
    stored one. Returns ``(HTTP status, message)``; writes nothing unless 2xx. (Many at
    once, under one lock and one barrier: ``attest_batch.admit_many``.)"""
    now = now or datetime.now(UTC)
    refused = check_upload(storage, store_dir, hash_part, kind, data, trusted, attesters, now)
    if refused is not None:
        return refused
    key = layout.att_key(hash_part, kind)
    with dir_lock(storage, LOCK_KEY):  # the check and the write together: no older one slips in between
        decided = check_replace(storage.read(key), data, kind, trusted, attesters, now)
        if decided is not None:
            return decided
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
    failure of the push. Any other error is raised. Against ``kiln serve`` they go
    in ``POST /attestation-upload-batch`` requests (``attest_wire.upload_many``)."""
    from .attest_wire import upload_many

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
    answers = await upload_many(client, [(_hp(p), kind, data) for p, kind, data in todo], jobs)
    refused = [f"{p} {kind}: {e}" for (p, kind, _), e in zip(todo, answers, strict=True) if e is not None]
    return len(todo) - len(refused), sorted(refused)


def listed_bytes(client: Any, kind: str, want: str, data: bytes | None | KilnError) -> bytes:
    """``data``, the ``kind`` file a listing says hashes to ``want``, as fetched from
    ``client`` (``attest_wire``'s result: None when missing there, or the error that
    stopped it); ``KilnError`` if it is not what was listed."""
    if isinstance(data, KilnError):
        raise data
    if data is None:
        raise KilnError(f"{kind} is listed but missing at {client.url}")
    if sha256_hex(data) != want:
        raise KilnError(f"{kind} does not hash to its listing entry at {client.url}")
    return data


#: attestations fetched, then uploaded, at a time by ``relay_attestations``
RELAY_GROUP = 1000


async def relay_attestations(
    src: Any, dst: Any, subjects: dict[str, str], jobs: int = 8
) -> tuple[int, list[str]]:
    """Copy the attestations of ``subjects`` (path -> NAR hash, hex, from a narinfo the
    caller verified) from registry ``src`` to ``dst``, whose narinfos must already be
    published: those ``dst`` lacks or holds in another version. Each file must hash to
    ``src``'s listing entry and name its path and NAR hash before it is uploaded;
    ``dst`` then admits it by its own rules. Returns the number copied and ``"path
    kind: why"`` for each file one side refused (evidence not copied, not a failure of
    the copy); any other error is raised. Both sides in batches where they can
    (``attest_wire``), ``RELAY_GROUP`` files at a time."""
    from .attest_wire import fetch_many, upload_many

    hps = {_hp(p): p for p in subjects}
    remote = await listings(src, sorted(hps))
    if not remote:
        return 0, []
    there = await listings(dst, sorted(h for h in hps if h in remote))
    todo: dict[tuple[str, str], str] = {}
    problems: list[str] = []
    for h in sorted(remote):
        for kind, sha in sorted(remote[h].items()) if h in hps else ():
            if there.get(h, {}).get(kind) == sha:
                continue
            try:
                attestations.check_kind(kind)
            except FormatError as e:
                problems.append(f"{hps[h]} {kind[:80]!r}: {e}")
                continue
            todo[(h, kind)] = sha
    ready: list[tuple[str, str, bytes]] = []

    def got(h: str, kind: str, data: bytes | None | KilnError) -> None:
        p = hps[h]
        if isinstance(data, RegistryError) and data.status not in REFUSED:
            raise data
        try:
            ok = listed_bytes(src, kind, todo[(h, kind)], data)
            check_envelope(ok, kind, p.rsplit("/", 1)[1], subjects[p], None)
        except KilnError as e:  # missing, not what was listed, not an attestation of this path
            problems.append(f"{p} {kind}: {e}")
            return
        ready.append((h, kind, ok))

    copied = 0
    pairs = list(todo)
    for i in range(0, len(pairs), RELAY_GROUP):
        ready.clear()
        await fetch_many(src, pairs[i : i + RELAY_GROUP], got, jobs=jobs)
        answers = await upload_many(dst, ready, jobs)
        for (h, kind, _), why in zip(ready, answers, strict=True):
            if why is None:
                copied += 1
            else:
                problems.append(f"{hps[h]} {kind}: {why}")
    return copied, sorted(problems)


# (the client side that stores into a local store lives in ``attest_fetch``)
