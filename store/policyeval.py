"""The checks behind ``policy.verify_path``, one function per question (the provenance
ones: ``policyprov``).

Each check returns ``Check``s and never raises for a bad artifact: a tampered object, a
forged or misfiled attestation, a revoked signer are all *answers* (failed checks with a
reason), not errors. Attestation handling follows DSSE's order — find which recognised
keys signed, refuse compromised signers, and only then parse the payload — followed by
SLSA's: predicate type, subject digest, then expectations (builder id, age):
``policyattest.verify_envelope``.

What cannot be read is no answer about the artifact: a check whose object, tree or
attestation file is missing or unreadable (an ``OSError``; the ``StoreError`` of an
object gone) fails *unchecked* (``Check.unchecked``), so ``kiln verify`` tells "this is
bad" from "I could not tell". A file that is there but wrong (a digest mismatch, an
attestation that does not parse) is a verdict.

The compromised-key alarm (``policyalarm``) runs on every signature and attestation,
whether or not the policy trusts any key for that role.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from . import attestations, dsse, nar
from .errors import FormatError, KilnError, StoreError
from .intoto import CYCLONEDX_TYPE, LEVEL_REPRODUCED, SPDX_TYPE, VSA_TYPE, Statement, parse_time
from .pathinfo import PathInfo
from .policy import UNAVAILABLE, Check, Policy
from .policyalarm import compromised_path_signer, compromised_signer
from .policyattest import CLOCK_SKEW, one_line, unique_keys, verify_envelope
from .policyprov import provenance_checks
from .provsummary import ProvenanceSummary
from .signing import PublicKey, present_signers, valid_signers
from .vsainputs import compare, digests

__all__ = ["CLOCK_SKEW", "run_checks"]  # (CLOCK_SKEW: what registry.attest_rules imports from here)


def run_checks(
    store: Any, path: str, policy: Policy, now: datetime | None
) -> tuple[list[Check], ProvenanceSummary | None]:
    """The checks of ``path`` (``policy.verify_path``), and the summary of its own
    provenance for the report (``policyprov``), if any."""
    now = now or datetime.now(UTC)
    info = store.query(path)
    if info is None:
        why = f"{path} is not a valid path in the store at {store.root}"
        return [Check("valid", False, why, unchecked=UNAVAILABLE)], None
    checks = [Check("valid", True, f"registered, NAR {info.nar_hash.to_nix32()} ({info.nar_size} bytes)")]
    checks += _content(store, info)
    checks.append(_path_signatures(info, policy))
    prov, prov_signers, summary = provenance_checks(store, info, policy, now)
    checks += prov
    checks.append(_sbom(store, info, policy, prov_signers))
    prov_inputs = summary.dependencies if summary is not None and summary.verified else None
    checks.append(_reproduced(store, info, policy, prov_signers, now, prov_inputs))
    return checks, summary


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
    except (StoreError, OSError) as e:  # (missing, unreadable: the StoreError names the object)
        why = f"cannot read the stored object: {one_line(e)}"
        out.append(Check("content", False, why, unchecked=UNAVAILABLE))
    except KilnError as e:  # (a HashMismatch: corrupt)
        out.append(
            Check("content", False, f"stored object does not match the recorded NAR hash: {one_line(e)}")
        )
    try:
        got, size = nar.hash_path(store.real_path(info.path))
        if (got, size) != (info.nar_hash, info.nar_size):
            raise KilnError(
                f"tree hashes to {got.to_nix32()} ({size} bytes), recorded {info.nar_hash.to_nix32()}"
            )
        out.append(Check("tree", True, "materialised tree hashes to the recorded NAR hash"))
    except OSError as e:
        why = f"cannot read the materialised tree: {one_line(e)}"
        out.append(Check("tree", False, why, unchecked=UNAVAILABLE))
    except KilnError as e:
        out.append(Check("tree", False, f"materialised tree was modified: {one_line(e)}"))
    return out


# ---------------------------------------------------------------------------- signatures


def _path_signatures(info: PathInfo, policy: Policy) -> Check:
    need = policy.signatures
    alarm = compromised_path_signer(info, policy)
    if alarm is not None:
        return Check("signatures", False, alarm)
    good: dict[bytes, str] = {}
    refused: list[str] = []
    trusted = {k.key for k in policy.signing}
    for k in unique_keys([*policy.signing, *(r.key for r in policy.revoked)]):
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
        f"{present} signature(s) present: {present_signers(info, policy.signing)}{extra}",
    )


#: where an undated VSA stands among dated ones (see ``_reproduced``)
_OLDEST, _NEWEST = datetime.min.replace(tzinfo=UTC), datetime.max.replace(tzinfo=UTC)


def _sbom(store: Any, info: PathInfo, policy: Policy, prov_signers: list[PublicKey]) -> Check:
    """The SBOM check. An SBOM names no builder, so a provenance key bound to builder ids
    counts on it only if it also counted on this path's provenance (whose builder id it
    may claim): otherwise a developer's key bound to its laptop builder could vouch for
    the SBOM of a path the CI builder made."""
    try:
        env = attestations.read(store, info.path, "sbom")
    except FormatError as e:
        return Check("sbom", False, one_line(e))
    except OSError as e:
        return Check("sbom", False, f"cannot read the stored SBOM: {one_line(e)}", unchecked=UNAVAILABLE)
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
    err, _, good = verify_envelope(
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


def _vsas(store: Any, info: PathInfo) -> list[tuple[str, dsse.Envelope | None, str]]:
    """Every stored VSA: ``(kind, envelope or None, why not)``; ``OSError`` if the
    attestations cannot be listed or one cannot be read."""
    out: list[tuple[str, dsse.Envelope | None, str]] = []
    for kind in attestations.list(store, info.path):
        if kind.startswith("vsa-"):
            try:
                out.append((kind, attestations.read(store, info.path, kind), ""))
            except FormatError as e:
                out.append((kind, None, one_line(e)))
    return out


def _inputs(st: Statement) -> dict[str, str] | None:
    """The inputs a VSA records (``kiln_rebuild.inputs``); None: none, or unreadable."""
    ext = st.predicate.get("kiln_rebuild")
    return digests(ext.get("inputs")) if isinstance(ext, dict) else None


def _inputs_note(
    name: str, inputs: dict[str, str] | None, prov: dict[str, str] | None, required: bool
) -> str:
    """What to say of a PASSED verdict's inputs against the provenance's ("" for
    nothing); under ``reproduced_same_inputs`` any note means the verdict is not counted.
    Without the requirement only a difference is worth a note (older verdicts record no
    inputs)."""
    if prov is None:
        return (
            f"{name}'s PASSED: no verified provenance records inputs to compare with: not counted"
            if required
            else ""
        )
    if inputs is None:
        return f"{name}'s PASSED records no inputs (or none readable): not counted" if required else ""
    diff = compare(prov, inputs)
    if not diff:
        return ""
    counted = ": not counted" if required else ""
    return f"{name} rebuilt from inputs other than the provenance's ({diff.describe()}){counted}"


def _reproduced(
    store: Any,
    info: PathInfo,
    policy: Policy,
    builders: list[PublicKey],
    now: datetime,
    prov_inputs: dict[str, str] | None = None,
) -> Check:
    """``prov_inputs``: the verified provenance's dependencies (``vsainputs.digests``),
    which each counted PASSED's recorded inputs are compared with."""
    need = policy.reproduced
    # Not independent: a key that signed this path's provenance, or that the policy
    # trusts for provenance at all (else deleting the provenance would make the builder
    # its own "independent" rebuilder).
    builder_keys = {k.key for k in builders} | {k.key for k in policy.provenance}
    # key -> (time, failed, name, recorded inputs) of its newest verdict
    latest: dict[bytes, tuple[datetime, bool, str, dict[str, str] | None]] = {}
    notes: list[str] = []
    # detectors (policy module doc): a VSA that a key this policy knows (a rebuilder or a
    # revoked key) validly signed but that is invalid, or any compromised key's, fails
    # the check; one nobody known signed is only noted (anyone can write one)
    known = {
        dsse.keyid(k.key): k.key for k in unique_keys([*policy.rebuilders, *(r.key for r in policy.revoked)])
    }
    bad: list[str] = []
    try:
        vsas = _vsas(store, info)
    except OSError as e:  # (not even the alarm could run)
        why = f"cannot read the stored verification summaries: {one_line(e)}"
        return Check("reproduced", False, why, unchecked=UNAVAILABLE)
    for kind, env, err in vsas:
        if env is None:
            bad.append(f"{kind}: {err}")
            continue
        problem, st, good = verify_envelope(env, info, policy.rebuilders, policy, (VSA_TYPE,), _vsa_time)
        if problem is not None or st is None:
            (bad if dsse.signers(env, known) else notes).append(f"{kind}: {problem}")
            continue
        levels = st.predicate.get("verifiedLevels")
        passed = (
            st.predicate.get("verificationResult") == "PASSED"
            and isinstance(levels, list)
            and LEVEL_REPRODUCED in levels
        )
        when = _vsa_time(st)
        if when is not None and when > now + CLOCK_SKEW:
            # fail closed: a future time is not believed, but only a PASSED gains by being
            # ignored (its key's older PASSED would count); a FAILED counts as the newest
            # verdict any believed time can carry, so no PASSED of its key is newer
            if passed:
                notes.append(f"{kind}: verified in the future ({when:%Y-%m-%dT%H:%M:%SZ}); ignored")
                continue
            notes.append(
                f"{kind}: FAILED verified in the future ({when:%Y-%m-%dT%H:%M:%SZ}); counted as of now"
            )
            when = now + CLOCK_SKEW
        if when is None:  # undated: fail closed (a FAILED overrides, a PASSED is oldest)
            when = _NEWEST if not passed else _OLDEST
        for k in good:
            # newest wins; at equal times a FAILED verdict beats a PASSED one
            if k.key not in latest or (when, not passed) > latest[k.key][:2]:
                latest[k.key] = (when, not passed, k.name, _inputs(st))
    agree: dict[bytes, str] = {}
    # a stale or hostile source can replay a rebuilder's older genuine PASSED verdict
    # (policy module doc): with reproduced_max_age only a recent one counts
    max_age = policy.reproduced_max_age
    for key, (when, failed, name, inputs) in latest.items():
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
            why = _inputs_note(name, inputs, prov_inputs, policy.reproduced_same_inputs)
            if why:
                notes.append(why)
            if not (why and policy.reproduced_same_inputs):
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
