"""The checks behind ``policy.verify_path``, one function per question.

Each check returns ``Check``s and never raises for a bad artifact: a tampered object, a
forged or misfiled attestation, a revoked signer are all *answers* (failed checks with a
reason), not errors. Attestation handling follows DSSE's order — find which recognised
keys signed, refuse compromised signers, and only then parse the payload — followed by
SLSA's: predicate type, subject digest, then expectations (builder id, age).

The compromised-key alarm (``policyalarm``) runs on every signature and attestation,
whether or not the policy trusts any key for that role.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

from . import attestations, dsse, nar
from .errors import FormatError, KilnError
from .intoto import (
    BUILD_TYPE,
    CYCLONEDX_TYPE,
    LEVEL_REPRODUCED,
    PROVENANCE_TYPE,
    SPDX_TYPE,
    VSA_TYPE,
    Statement,
    parse_statement,
    parse_time,
)
from .pathinfo import PathInfo
from .paths import StorePath
from .policy import Check, Policy
from .policyalarm import compromised_path_signer, compromised_signer
from .signing import PublicKey, valid_signers

KILN_EXTERNAL_PARAMETERS = {"recipeFile", "attribute", "parameters", "recipeRepository"}


def run_checks(store: Any, path: str, policy: Policy, now: datetime | None) -> list[Check]:
    now = now or datetime.now(UTC)
    info = store.query(path)
    if info is None:
        return [Check("valid", False, f"{path} is not a valid path in the store at {store.root}")]
    checks = [Check("valid", True, f"registered, NAR {info.nar_hash.to_hex()} ({info.nar_size} bytes)")]
    checks += _content(store, info)
    checks.append(_path_signatures(info, policy))
    prov, prov_signers = _provenance(store, info, policy, now)
    checks += prov
    checks.append(_sbom(store, info, policy, prov_signers))
    checks.append(_reproduced(store, info, policy, prov_signers, now))
    return checks


# ---------------------------------------------------------------------------- content


def _content(store: Any, info: PathInfo) -> list[Check]:
    """The compressed object and the materialised tree both against the recorded NAR hash."""
    out = []
    try:
        # (``nar`` checks the object's file hash and its NAR's hash and size against the
        # row as it goes, raising after the last chunk: hashing here again doubled the CPU)
        for _ in store.nar(info.path):
            pass
        out.append(Check("content", True, "stored object decompresses to the recorded NAR hash"))
    except (KilnError, OSError) as e:
        out.append(
            Check("content", False, f"stored object does not match the recorded NAR hash: {_one_line(e)}")
        )
    try:
        got, size = nar.hash_path(store.real_path(info.path))
        if (got, size) != (info.nar_hash, info.nar_size):
            raise KilnError(
                f"tree hashes to {got.to_hex()} ({size} bytes), recorded {info.nar_hash.to_hex()}"
            )
        out.append(Check("tree", True, "materialised tree hashes to the recorded NAR hash"))
    except (KilnError, OSError) as e:
        out.append(Check("tree", False, f"materialised tree was modified: {_one_line(e)}"))
    return out


def _one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


# ---------------------------------------------------------------------------- signatures


def _path_signatures(info: PathInfo, policy: Policy) -> Check:
    need = policy.signatures
    alarm = compromised_path_signer(info, policy)
    if alarm is not None:
        return Check("signatures", False, alarm)
    good: dict[bytes, str] = {}
    refused: list[str] = []
    trusted = {k.key for k in policy.signing}
    for k in _unique([*policy.signing, *(r.key for r in policy.revoked)]):
        if not valid_signers(info, [k]):
            continue
        r = policy.revocation(k.key)
        if r is not None and r.compromised:
            return Check("signatures", False, f"path is signed by {r.describe()}")
        ok, why = policy.counts(k.key, None)
        if not ok:
            refused.append(why)
        elif k.key in trusted:
            good[k.key] = k.name
    names = ", ".join(sorted(good.values())) or "none"
    present = len(info.sigs)
    extra = f"; not counted: {'; '.join(refused)}" if refused else ""
    if need == 0:
        return Check(
            "signatures", True, f"none required ({present} present, trusted: {names}){extra}", skipped=True
        )
    if len(good) >= need:
        return Check(
            "signatures", True, f"{len(good)} distinct trusted key(s) signed ({names}), need {need}{extra}"
        )
    return Check(
        "signatures",
        False,
        f"{len(good)} valid signature(s) by distinct trusted keys ({names}), need {need}; "
        f"{present} signature(s) present{extra}",
    )


def _unique(keys: list[PublicKey]) -> list[PublicKey]:
    seen: dict[bytes, PublicKey] = {}
    for k in keys:
        seen.setdefault(k.key, k)
    return list(seen.values())


# ---------------------------------------------------------------------------- attestations


def _attestation(
    env: dsse.Envelope,
    info: PathInfo,
    keys: tuple[PublicKey, ...],
    policy: Policy,
    types: tuple[str, ...],
    when_of: Callable[[Statement], datetime | None],
) -> tuple[str | None, Statement | None, list[PublicKey]]:
    """Verify one envelope for ``info``: ``(error or None, statement, counted signers)``."""
    cands = {dsse.keyid(k.key): k for k in _unique([*keys, *(r.key for r in policy.revoked)])}
    signed = [cands[kid] for kid in dsse.signers(env, {kid: k.key for kid, k in cands.items()})]
    if not signed:
        return f"no valid signature by a trusted key ({len(env.signatures)} signature(s) present)", None, []
    for k in signed:
        r = policy.revocation(k.key)
        if r is not None and r.compromised:
            return f"signed by {r.describe()}", None, []
    if env.payload_type != dsse.PAYLOAD_TYPE:
        return f"unsupported payloadType {env.payload_type!r}", None, []
    try:
        st = parse_statement(env.payload)
    except FormatError as e:
        return str(e), None, []
    if st.predicate_type not in types:
        return f"predicateType is {st.predicate_type!r}, expected {' or '.join(types)}", st, []
    base = StorePath.parse(info.path).base
    if not st.matches(base, info.nar_hash.hex):
        subs = ", ".join(f"{n or '_'} sha256:{d.get('sha256', '?')}" for n, d in st.subjects)
        return (
            f"wrong subject: attestation is for {subs}; this path is {base} sha256:{info.nar_hash.hex}",
            st,
            [],
        )
    try:
        when = when_of(st)
    except (FormatError, KeyError, TypeError, AttributeError):
        return "attestation has no valid timestamp", st, []
    trusted = {k.key for k in keys}
    good, refused = [], []
    for k in signed:
        ok, why = policy.counts(k.key, when)
        if not ok:
            refused.append(why)
        elif k.key in trusted:
            good.append(k)
    if not good:
        return "no valid signature by a trusted key" + (f" ({'; '.join(refused)})" if refused else ""), st, []
    return None, st, good


#: how far in the future a signed time may be (clocks differ a little, not by days)
CLOCK_SKEW = timedelta(minutes=5)
#: where an undated VSA stands among dated ones (see ``_reproduced``)
_OLDEST, _NEWEST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


def _dig(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...``, or None where a level is missing or not an object: a signed
    predicate of the wrong shape fails a check, it never raises."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def _finished_on(st: Statement) -> datetime | None:
    v = _dig(st.predicate, "runDetails", "metadata", "finishedOn")
    return parse_time(v) if isinstance(v, str) else None


def _provenance(
    store: Any, info: PathInfo, policy: Policy, now: datetime
) -> tuple[list[Check], list[PublicKey]]:
    required = policy.require_provenance or bool(policy.builder_ids) or policy.max_age is not None
    try:
        env = attestations.read(store, info.path, "provenance")
    except FormatError as e:
        return [Check("provenance", False, _one_line(e))], []
    if env is None:
        if required:
            return [
                Check("provenance", False, "required, but no provenance attestation is stored for this path")
            ], []
        return [Check("provenance", True, "not required and none stored", skipped=True)], []
    if not policy.provenance:
        stolen = compromised_signer(env, policy)  # the alarm runs whatever the policy trusts
        if stolen is not None:
            return [Check("provenance", False, f"signed by {stolen.describe()}")], []
        ok = not required
        return [Check("provenance", ok, "stored, but the policy trusts no provenance key", skipped=ok)], []
    err, st, good = _attestation(env, info, policy.provenance, policy, (PROVENANCE_TYPE,), _finished_on)
    if err is not None or st is None:
        return [Check("provenance", False, err or "invalid")], []
    builder = _dig(st.predicate, "runDetails", "builder", "id")
    builder = builder if isinstance(builder, str) else ""
    # a key bound to builder ids stands behind those claims only (policy module doc)
    claims = [(k, *policy.may_claim(k.key, builder)) for k in good]
    good = [k for k, ok, _ in claims if ok]
    if not good:
        why = "; ".join(f"{k.name} {reason}" for k, _, reason in claims)
        return [Check("provenance", False, f"no signer may claim this builder id: {why}")], []
    names = ", ".join(k.name for k in good)
    checks = [Check("provenance", True, f"SLSA provenance signed by {names}, subject matches the NAR hash")]
    if _dig(st.predicate, "buildDefinition", "buildType") == BUILD_TYPE:
        params = _dig(st.predicate, "buildDefinition", "externalParameters")
        extra = (
            sorted(set(params) - KILN_EXTERNAL_PARAMETERS)
            if isinstance(params, dict)
            else ["(not an object)"]
        )
        checks.append(
            Check("build-parameters", False, f"unrecognised externalParameters {', '.join(extra)}")
            if extra
            else Check("build-parameters", True, "externalParameters are the ones kiln records")
        )
    if policy.builder_ids:
        ok = builder in policy.builder_ids
        why = "is allowed" if ok else f"is not one of {', '.join(policy.builder_ids)}"
        checks.append(Check("builder", ok, f"builder id {builder!r} {why}"))
    if policy.max_age is not None:
        finished = _finished_on(st)
        if finished is None:
            checks.append(Check("age", False, "provenance has no finishedOn time; max_age cannot be checked"))
        elif finished > now + CLOCK_SKEW:
            checks.append(
                Check(
                    "age",
                    False,
                    f"provenance claims it finished in the future ({finished:%Y-%m-%dT%H:%M:%SZ})",
                )
            )
        else:
            age = now - finished
            ok = age <= policy.max_age
            what = "within" if ok else "expired: older than"
            checks.append(
                Check("age", ok, f"built {finished:%Y-%m-%dT%H:%M:%SZ}, {what} max age {policy.max_age}")
            )
    return checks, good


def _sbom(store: Any, info: PathInfo, policy: Policy, prov_signers: list[PublicKey]) -> Check:
    """The SBOM check. An SBOM names no builder, so a provenance key bound to builder ids
    counts on it only if it also counted on this path's provenance (whose builder id it
    may claim): otherwise a developer's key bound to its laptop builder could vouch for
    the SBOM of a path the CI builder made."""
    try:
        env = attestations.read(store, info.path, "sbom")
    except FormatError as e:
        return Check("sbom", False, _one_line(e))
    if env is None:
        if policy.require_sbom:
            return Check("sbom", False, "required, but no SBOM attestation is stored for this path")
        return Check("sbom", True, "not required and none stored", skipped=True)
    if not policy.provenance:
        stolen = compromised_signer(env, policy)
        if stolen is not None:
            return Check("sbom", False, f"signed by {stolen.describe()}")
        ok = not policy.require_sbom
        return Check("sbom", ok, "stored, but the policy trusts no provenance key to sign it", skipped=ok)
    err, _, good = _attestation(
        env, info, policy.provenance, policy, (CYCLONEDX_TYPE, SPDX_TYPE), lambda _: None
    )
    if err is not None:
        return Check("sbom", False, err)
    vouched = {k.key for k in prov_signers}
    counted = [k for k in good if policy.bound_ids(k.key) is None or k.key in vouched]
    if not counted:
        names = ", ".join(k.name for k in good)
        return Check(
            "sbom",
            False,
            f"SBOM signed only by {names}, bound to builder ids, and not a signer of this path's valid provenance",
        )
    return Check("sbom", True, f"SBOM signed by {', '.join(k.name for k in counted)}, subject matches")


def _vsa_time(st: Statement) -> datetime | None:
    v = st.predicate.get("timeVerified")
    return parse_time(v) if v is not None else None


def _vsas(store: Any, info: PathInfo) -> Iterator[tuple[str, dsse.Envelope | None, str]]:
    for kind in attestations.list(store, info.path):
        if kind.startswith("vsa-"):
            try:
                yield kind, attestations.read(store, info.path, kind), ""
            except FormatError as e:
                yield kind, None, _one_line(e)


def _reproduced(
    store: Any, info: PathInfo, policy: Policy, builders: list[PublicKey], now: datetime
) -> Check:
    need = policy.reproduced
    # Not independent: a key that signed this path's provenance, or that the policy
    # trusts for provenance at all (else deleting the provenance would make the builder
    # its own "independent" rebuilder).
    builder_keys = {k.key for k in builders} | {k.key for k in policy.provenance}
    latest: dict[bytes, tuple[datetime, bool, str]] = {}  # key -> (time, failed, name) of its newest verdict
    notes: list[str] = []
    # detectors (policy module doc): a VSA that a key this policy knows (a rebuilder or a
    # revoked key) validly signed but that is invalid, or any compromised key's, fails
    # the check; one nobody known signed is only noted (anyone can write one)
    known = {
        dsse.keyid(k.key): k.key for k in _unique([*policy.rebuilders, *(r.key for r in policy.revoked)])
    }
    bad: list[str] = []
    for kind, env, err in _vsas(store, info):
        if env is None:
            bad.append(f"{kind}: {err}")
            continue
        e, st, good = _attestation(env, info, policy.rebuilders, policy, (VSA_TYPE,), _vsa_time)
        if e is not None or st is None:
            (bad if dsse.signers(env, known) else notes).append(f"{kind}: {e}")
            continue
        levels = st.predicate.get("verifiedLevels")
        passed = (
            st.predicate.get("verificationResult") == "PASSED"
            and isinstance(levels, list)
            and LEVEL_REPRODUCED in levels
        )
        when = _vsa_time(st)
        if when is not None and when > now + CLOCK_SKEW:
            notes.append(f"{kind}: verified in the future ({when:%Y-%m-%dT%H:%M:%SZ}); ignored")
            continue
        if when is None:  # undated: fail closed (a FAILED overrides, a PASSED is oldest)
            when = _NEWEST if not passed else _OLDEST
        for k in good:
            # newest wins; at equal times a FAILED verdict beats a PASSED one
            if k.key not in latest or (when, not passed) > latest[k.key][:2]:
                latest[k.key] = (when, not passed, k.name)
    agree: dict[bytes, str] = {}
    # a stale or hostile source can replay a rebuilder's older genuine PASSED verdict
    # (policy module doc): with reproduced_max_age only a recent one counts
    max_age = policy.reproduced_max_age
    for key, (when, failed, name) in latest.items():
        if key in builder_keys:
            notes.append(f"{name} is a provenance key, so it is not independent")
        elif failed:
            notes.append(f"{name} reports the rebuild did NOT reproduce (its latest verdict)")
        elif max_age is not None and now - when > max_age:
            at = "is undated" if when == _OLDEST else f"was verified {when:%Y-%m-%dT%H:%M:%SZ}"
            notes.append(
                f"{name}'s latest verdict {at}, older than reproduced_max_age {max_age}: not counted"
            )
        else:
            agree[key] = name
    names = ", ".join(sorted(agree.values())) or "none"
    extra = f" ({'; '.join(notes)})" if notes else ""
    if bad:
        return Check("reproduced", False, f"invalid verification summary: {'; '.join(bad)}{extra}")
    if need == 0:
        return Check("reproduced", True, f"not required; reproduced by: {names}{extra}", skipped=True)
    ok = len(agree) >= need
    return Check(
        "reproduced", ok, f"reproduced by {len(agree)} independent rebuilder(s) ({names}), need {need}{extra}"
    )
