"""Verification policy: which keys are trusted for what, and what a path must carry.

The policy file and its parsing: ``policyfile`` (``parse`` and ``load`` are re-exported
here). Evaluation: ``policyeval``.

Revocation semantics
--------------------
A revoked key never counts toward anything after ``revoked_at``. With
``compromised = true`` (the default) it is worse: any artifact or attestation carrying a
valid signature by it fails verification, whenever it claims to have been signed, because
whoever holds a stolen key can backdate. A retired, *not* compromised key still counts for
attestations whose signed time (provenance ``finishedOn``, VSA ``timeVerified``) is before
``revoked_at``. Store-path signatures carry no signed time, so a revoked key's path
signature never counts (re-sign paths with the new key when rotating).

Freshness of rebuilders' verdicts
---------------------------------
One verdict per (path, rebuilder key) is stored, and registries and stores refuse to roll
a newer one back; but a stale or hostile mirror can still serve an older genuine
PASSED VSA where the rebuilder has since signed FAILED. ``[require] reproduced_max_age``
bounds that replay: a PASSED verdict whose signed ``timeVerified`` is older (or that has
no time) does not count, so rebuilders must re-attest within that window.

Builder ids and keys
--------------------
A provenance statement names the builder that made the path (``runDetails.builder.id``)
and the key that signed it stands behind that claim. ``[require] builder_ids`` limits the
ids any path may have; a provenance key written as ``{ key, builder_ids }`` may only
claim those ids, so trust is in the (key, builder id) pair: a developer's key cannot
pass its laptop builds off as the CI builder's. A key listed as a plain string may claim
any id; a key bound in several entries may claim any of their ids; a key both bound and
plain (under any names) is an error. An SBOM names no builder: a bound key counts on
one only where it counted on the path's provenance.

Evaluation
----------
``verify_path(store, path, policy)`` returns a ``Report``: one ``Check`` per question, in
a fixed order, each pass/fail with the reason. Requirements are monotonic in the in-toto
sense (only valid evidence satisfies them, so stripping attestations never helps); two
detectors fail on presence: an invalid attestation, and a compromised key's signature.
DSSE envelopes are verified before their payload is believed; a payload's subject must
name this path and carry its recorded NAR sha256.

Verdicts and checks that could not run
--------------------------------------
A failed check is either a *verdict* (the artifact failed it: a digest that does not
match, a missing or invalid signature, a policy requirement not met) or *unchecked*
(``Check.unchecked``): the check could not be run, because what it reads is missing or
unreadable (a path not in the store, an object or tree that cannot be read) or, for a
registry, because the registry could not be asked (``TRANSIENT``: unreachable, 5xx;
``UNAVAILABLE``: any other refusal). An unchecked check never passes; ``Report.verdict``
says which it was, a verdict winning over an unchecked check: ``PASSED``, ``REJECTED``,
``UNCHECKED`` or ``TEMPFAIL`` (every unchecked check transient: asking again later may
answer). ``kiln verify`` exits 0, 1, 3 and 75 for them.

Source commit
-------------
``[require] clean_source`` holds only if the path's valid provenance records the git
commit of the recipe's repository and that the tree had no uncommitted changes (what
``kiln build --require-clean`` makes sure of; ``policyprov``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from .errors import KilnError
from .provsummary import ProvenanceSummary
from .signing import PublicKey

#: what a report names as its policy when none was given (``kiln verify`` without
#: ``--policy``: content only, no signature required)
DEFAULT_SOURCE = "(built-in default: nothing required)"


class PolicyError(KilnError):
    """The policy file is unreadable or invalid (a usage error: exit status 2)."""


@dataclass(frozen=True, slots=True)
class Revocation:
    key: PublicKey
    revoked_at: datetime
    compromised: bool = True
    reason: str = ""

    def describe(self) -> str:
        what = "compromised" if self.compromised else "retired"
        why = f": {self.reason}" if self.reason else ""
        when = self.revoked_at.astimezone(UTC).isoformat().replace("+00:00", "Z")  # (%Y drops a year's zeros)
        return f"key {self.key.name!r} revoked ({what}) at {when}{why}"


@dataclass(frozen=True, slots=True)
class Policy:
    signing: tuple[PublicKey, ...] = ()
    provenance: tuple[PublicKey, ...] = ()
    rebuilders: tuple[PublicKey, ...] = ()
    revoked: tuple[Revocation, ...] = ()
    signatures: int = 0
    require_provenance: bool = False
    require_sbom: bool = False
    reproduced: int = 0
    builder_ids: tuple[str, ...] = ()
    #: provenance keys bound to builder ids: (raw key, the ids it may claim); keys not
    #: here may claim any id
    key_builders: tuple[tuple[bytes, tuple[str, ...]], ...] = ()
    max_age: timedelta | None = None
    #: a rebuilder's PASSED verdict counts for ``reproduced`` only if its signed
    #: ``timeVerified`` is no older than this (None: any age)
    reproduced_max_age: timedelta | None = None
    #: a rebuilder's PASSED verdict counts for ``reproduced`` only if it records the inputs
    #: it rebuilt from and they are the verified provenance's (``vsainputs``)
    reproduced_same_inputs: bool = False
    #: the provenance must record a git commit of the recipe's repository, and a clean tree
    clean_source: bool = False
    source: str = DEFAULT_SOURCE
    digest: str = field(default="", compare=False)

    def revocation(self, key: bytes) -> Revocation | None:
        """The strictest revocation entry for raw public key ``key``, if any: a key may be
        retired first and found compromised later (two entries); compromised wins, then
        the earliest ``revoked_at``."""
        found = [r for r in self.revoked if r.key.key == key]
        if not found:
            return None
        return min(found, key=lambda r: (not r.compromised, r.revoked_at))

    def bound_ids(self, key: bytes) -> tuple[str, ...] | None:
        """The builder ids raw provenance key ``key`` is bound to; None: any id."""
        return next((ids for k, ids in self.key_builders if k == key), None)

    def may_claim(self, key: bytes, builder_id: str) -> tuple[bool, str]:
        """Whether provenance key ``key`` may claim builder id ``builder_id``: ``(ok,
        reason)``; the reason names the ids it is bound to."""
        bound = self.bound_ids(key)
        if bound is None or builder_id in bound:
            return True, ""
        return False, f"may only claim builder id(s) {', '.join(bound)}, not {builder_id!r}"

    def counts(self, key: bytes, signed_at: datetime | None) -> tuple[bool, str]:
        """Whether a valid signature by raw ``key``, made at ``signed_at`` (``None``:
        unknown), may count. Returns ``(ok, reason)``; the reason explains a refusal."""
        r = self.revocation(key)
        if r is None:
            return True, ""
        if r.compromised:
            return False, r.describe()
        if signed_at is None:
            return False, f"{r.describe()}; this signature carries no signed time"
        if signed_at >= r.revoked_at:
            return False, f"{r.describe()}; signed at {signed_at:%Y-%m-%dT%H:%M:%SZ}"
        return True, ""


# ---------------------------------------------------------------------------- evaluation


#: ``Check.unchecked``: the check could not be run (something missing or unreadable, a
#: registry that refused); ``TRANSIENT``: it could not be run now (a registry unreachable
#: or answering 5xx), so a later attempt may answer
UNAVAILABLE = "unavailable"
TRANSIENT = "transient"

#: ``Report.verdict`` values (module doc), strictest first as ``combined`` orders them
REJECTED, UNCHECKED, TEMPFAIL, PASSED = "rejected", "unchecked", "tempfail", "passed"
_RANK = {REJECTED: 0, UNCHECKED: 1, TEMPFAIL: 2, PASSED: 3}
#: a failed check's ``unchecked`` -> the verdict it alone would give
_VERDICT_OF = {"": REJECTED, UNAVAILABLE: UNCHECKED, TRANSIENT: TEMPFAIL}


@dataclass(frozen=True, slots=True)
class Check:
    """One verification step. ``skipped``: nothing was required and nothing was there.
    ``unchecked`` (only on a failed check): why it could not be run, ``UNAVAILABLE`` or
    ``TRANSIENT``; "" when it ran and this is its verdict."""

    name: str
    ok: bool
    detail: str
    skipped: bool = False
    unchecked: str = ""

    @property
    def status(self) -> str:
        return "skip" if self.skipped else ("pass" if self.ok else "FAIL")


def combined(verdicts: list[str]) -> str:
    """The verdict of several: any rejection wins, then a permanent ``UNCHECKED`` (asking
    again cannot answer it all), then ``TEMPFAIL``; ``PASSED`` only if all passed."""
    return min(verdicts, key=_RANK.__getitem__, default=PASSED)


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of ``verify_path``; ``ok`` iff every check passed (or was skipped).
    ``provenance``: what the path's provenance records (``provsummary``), when it has
    one that is its own (verified, or stored where the policy trusts no provenance key)."""

    path: str
    policy: str
    checks: tuple[Check, ...]
    provenance: ProvenanceSummary | None = None

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def verdict(self) -> str:
        """``PASSED``, ``REJECTED`` (a check failed), ``UNCHECKED`` or ``TEMPFAIL`` (no
        check failed, but some could not be run: module doc)."""
        kinds = {_VERDICT_OF.get(c.unchecked, UNCHECKED) for c in self.failures()}
        return combined(list(kinds))

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def lines(self) -> list[str]:
        return [f"{c.status:<4} {c.name}: {c.detail}" for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "policy": self.policy,
            "ok": self.ok,
            "verdict": self.verdict,
            "checks": [
                {
                    "name": c.name,
                    "status": c.status.lower(),
                    "ok": c.ok,
                    "detail": c.detail,
                    "unchecked": c.unchecked or None,
                }
                for c in self.checks
            ],
            "provenance": self.provenance.to_dict() if self.provenance is not None else None,
        }


def verify_path(
    store: Any, path: str, policy: Policy | None = None, *, now: datetime | None = None
) -> Report:
    """Verify valid store ``path`` in ``store`` (a ``LocalStore``) against ``policy``.

    Checks, in order: the path is valid; its object and its materialised tree both hash
    to the recorded NAR hash; path signatures (threshold of distinct trusted keys); the
    provenance attestation (signature, subject, builder id, age); the SBOM attestation;
    independent rebuilders' VSAs. Never raises for a failing artifact: every problem is a
    failed check (one that could not be run says so: ``Check.unchecked``). ``now``
    overrides the clock (for max_age)."""
    from .policyeval import run_checks

    pol = policy or Policy()
    checks, summary = run_checks(store, str(path), pol, now)
    return Report(str(path), pol.source, tuple(checks), summary)


# the file format (it imports the values above)
from .policyfile import load as load  # noqa: E402
from .policyfile import parse as parse  # noqa: E402
