"""The provenance checks of ``policy.verify_path`` (``provenance_checks``), and what the
report shows of the provenance (``provsummary``).

Checks, in order, each only after the one before it held: ``provenance`` (a stored
SLSA provenance, signed by a trusted provenance key that may claim its builder id, whose
subject is this path: ``policyattest.verify_envelope``); ``build-parameters`` (kiln's own
build type records only the externalParameters kiln writes); ``builder`` (``[require]
builder_ids``); ``age`` (``[require] max_age``); ``source`` (``[require]
clean_source``: the recipe repository's git commit is recorded and its tree was clean).

A statement is summarised for the report only when it is this path's own: verified, or
(where the policy trusts no provenance key, so none could be) with a subject naming this
path and no compromised signer; never when its verification failed.
"""

from __future__ import annotations

import re
from datetime import datetime
from typing import Any

from . import attestations, dsse
from .errors import FormatError
from .intoto import BUILD_TYPE, PROVENANCE_TYPE, Statement, parse_statement, parse_time
from .pathinfo import PathInfo
from .paths import StorePath
from .policy import UNAVAILABLE, Check, Policy
from .policyalarm import compromised_signer
from .policyattest import CLOCK_SKEW, dig, one_line, verify_envelope
from .provsummary import ProvenanceSummary, summarize
from .signing import PublicKey

KILN_EXTERNAL_PARAMETERS = {"recipeFile", "attribute", "parameters", "recipeRepository"}
#: a git commit id: sha1 (40 hex digits) or sha256 (64)
_COMMIT = re.compile(r"[0-9a-f]{40}(?:[0-9a-f]{24})?\Z")


def finished_on(st: Statement) -> datetime | None:
    v = dig(st.predicate, "runDetails", "metadata", "finishedOn")
    return parse_time(v) if isinstance(v, str) else None


def provenance_checks(
    store: Any, info: PathInfo, policy: Policy, now: datetime
) -> tuple[list[Check], list[PublicKey], ProvenanceSummary | None]:
    """The provenance checks (module doc), the keys that counted as its signers, and the
    summary of the statement, if it is this path's own (module doc)."""
    required = (
        policy.require_provenance
        or bool(policy.builder_ids)
        or policy.max_age is not None
        or policy.clean_source
    )
    try:
        env = attestations.read(store, info.path, "provenance")
    except FormatError as e:
        return [Check("provenance", False, one_line(e))], [], None
    except OSError as e:
        why = f"cannot read the stored provenance: {one_line(e)}"
        return [Check("provenance", False, why, unchecked=UNAVAILABLE)], [], None
    if env is None:
        if required:
            return (
                [
                    Check(
                        "provenance", False, "required, but no provenance attestation is stored for this path"
                    )
                ],
                [],
                None,
            )
        return [Check("provenance", True, "not required and none stored", skipped=True)], [], None
    if not policy.provenance:
        stolen = compromised_signer(env, policy)  # the alarm runs whatever the policy trusts
        if stolen is not None:
            return [Check("provenance", False, f"signed by {stolen.describe()}")], [], None
        ok = not required
        check = Check("provenance", ok, "stored, but the policy trusts no provenance key", skipped=ok)
        return [check], [], _unverified(env, info)
    err, st, good = verify_envelope(env, info, policy.provenance, policy, (PROVENANCE_TYPE,), finished_on)
    if err is not None or st is None:
        return [Check("provenance", False, err or "invalid")], [], None
    builder = dig(st.predicate, "runDetails", "builder", "id")
    builder = builder if isinstance(builder, str) else ""
    # a key bound to builder ids stands behind those claims only (policy module doc)
    claims = [(k, *policy.may_claim(k.key, builder)) for k in good]
    good = [k for k, ok, _ in claims if ok]
    if not good:
        why = "; ".join(f"{k.name} {reason}" for k, _, reason in claims)
        return [Check("provenance", False, f"no signer may claim this builder id: {why}")], [], None
    names = ", ".join(k.name for k in good)
    checks = [Check("provenance", True, f"SLSA provenance signed by {names}, subject matches the NAR hash")]
    if dig(st.predicate, "buildDefinition", "buildType") == BUILD_TYPE:
        params = dig(st.predicate, "buildDefinition", "externalParameters")
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
        checks.append(_age(st, policy, now))
    if policy.clean_source:
        checks.append(source_check(st))
    summary = summarize(st, verified=True, signed_by=tuple(k.name for k in good))
    return checks, good, summary


def _age(st: Statement, policy: Policy, now: datetime) -> Check:
    assert policy.max_age is not None
    finished = finished_on(st)
    if finished is None:
        return Check("age", False, "provenance has no finishedOn time; max_age cannot be checked")
    if finished > now + CLOCK_SKEW:
        return Check(
            "age", False, f"provenance claims it finished in the future ({finished:%Y-%m-%dT%H:%M:%SZ})"
        )
    ok = now - finished <= policy.max_age
    what = "within" if ok else "expired: older than"
    return Check("age", ok, f"built {finished:%Y-%m-%dT%H:%M:%SZ}, {what} max age {policy.max_age}")


def _said(v: Any) -> str:
    """A value from the statement, quoted and cut short (it is outside input): past 160
    characters its middle is left out, so a long path keeps its file name."""
    text = repr(v)
    return text if len(text) <= 160 else text[:80] + "..." + text[-77:]


def source_check(st: Statement) -> Check:
    """``[require] clean_source``: the (verified) provenance records the git commit of the
    recipe's repository (``recipeRepository.commit``, a commit id) and that its tree was
    clean (``dirty`` false); the failure says what was recorded instead."""
    ext = dig(st.predicate, "buildDefinition", "externalParameters")
    recipe = dig(ext, "recipeFile")
    what = f"recipe {_said(recipe)}" if isinstance(recipe, str) else "the recipe"
    repo = dig(ext, "recipeRepository")
    if not isinstance(repo, dict):
        kind = dig(st.predicate, "buildDefinition", "buildType")
        return Check(
            "source",
            False,
            f"required a clean source commit, but the provenance (build type {_said(kind)}) records no "
            "recipeRepository",
        )
    commit, dirty = repo.get("commit"), repo.get("dirty")
    if commit is None:
        return Check(
            "source",
            False,
            f"required a clean source commit, but the provenance records none: {what} was not in a git "
            "repository when it was built",
        )
    if not isinstance(commit, str) or not _COMMIT.match(commit):
        return Check(
            "source", False, f"required a clean source commit, but the provenance records {_said(commit)}"
        )
    if dirty is True:
        return Check(
            "source",
            False,
            f"required a clean source commit, but {what} was built from git commit {commit} with "
            "uncommitted changes (dirty tree)",
        )
    if dirty is not False:
        return Check(
            "source",
            False,
            f"required a clean source commit, but the provenance records git commit {commit} and not "
            f"whether the tree was clean (dirty: {_said(dirty)})",
        )
    return Check("source", True, f"{what} built from git commit {commit}, clean tree")


def _unverified(env: dsse.Envelope, info: PathInfo) -> ProvenanceSummary | None:
    """The summary of a provenance nobody could verify (the policy trusts no provenance
    key), if its statement is about this path; else None."""
    if env.payload_type != dsse.PAYLOAD_TYPE:
        return None
    try:
        st = parse_statement(env.payload)
    except FormatError:
        return None
    if st.predicate_type != PROVENANCE_TYPE or not st.matches(
        StorePath.parse(info.path).base, info.nar_hash.hex
    ):
        return None
    return summarize(st, verified=False)
