"""Verification policy: which keys are trusted for what, and what a path must carry.

Policy file (TOML; unknown tables or keys are errors, so a typo never weakens a policy)::

    [keys]                         # public keys "name:base64", or paths to .pub files
    signing    = ["cache-1:..."]   # may sign store paths (narinfo-style Sig)
    provenance = [                 # may sign provenance and SBOM attestations
      "builder-1:...",             # ... claiming any builder id
      { key = "ci-1:...", builder_ids = ["https://ci.example/builders/v1"] },  # only these
    ]
    rebuilders = ["rb-a:...", "rb-b:..."]  # may sign "reproduced" VSAs

    [[revoked]]
    key = "builder-0:..."
    revoked_at = 2026-01-01T00:00:00Z
    compromised = true             # default: everything it ever signed is rejected
    reason = "laptop stolen"

    [require]
    signatures  = 1                # distinct trusted signing keys on the path
    provenance  = true
    sbom        = false
    reproduced  = 2                # distinct rebuilders with a PASSED VSA
    builder_ids = ["https://kiln.dev/builders/local/v1"]   # empty: any
    max_age     = "90d"            # provenance finishedOn no older than this (s/m/h/d)

Revocation semantics
--------------------
A revoked key never counts toward anything after ``revoked_at``. With
``compromised = true`` (the default) it is worse: any artifact or attestation carrying a
valid signature by it fails verification, whenever it claims to have been signed, because
whoever holds a stolen key can backdate. A retired, *not* compromised key still counts for
attestations whose signed time (provenance ``finishedOn``, VSA ``timeVerified``) is before
``revoked_at``. Store-path signatures carry no signed time, so a revoked key's path
signature never counts (re-sign paths with the new key when rotating).

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
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from .errors import FormatError, KilnError
from .intoto import parse_time
from .signing import PublicKey, key_text_hint, load_public_key


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
        return f"key {self.key.name!r} revoked ({what}) at {self.revoked_at:%Y-%m-%dT%H:%M:%SZ}{why}"


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
    source: str = "(built-in default: nothing required)"
    digest: str = field(default="", compare=False)

    def revocation(self, key: bytes) -> Revocation | None:
        """The strictest revocation entry for raw public key ``key``, if any: a key may be
        retired first and found compromised later (two entries); compromised wins, then
        the earliest ``revoked_at``."""
        found = [r for r in self.revoked if r.key.key == key]
        if not found:
            return None
        return min(found, key=lambda r: (not r.compromised, r.revoked_at))

    def may_claim(self, key: bytes, builder_id: str) -> tuple[bool, str]:
        """Whether provenance key ``key`` may claim builder id ``builder_id``: ``(ok,
        reason)``; the reason names the ids it is bound to."""
        bound = dict(self.key_builders).get(key)
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


_SECTIONS = {"keys", "revoked", "require"}
_KEY_PURPOSES = {"signing", "provenance", "rebuilders"}
_REQUIRE = {"signatures", "provenance", "sbom", "reproduced", "builder_ids", "max_age"}
_REVOKED = {"key", "revoked_at", "compromised", "reason"}
_AGE_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*\Z")
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(value: Any) -> timedelta:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"3600s"``, ``"2w"`` or an integer of seconds."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        try:
            return timedelta(seconds=value)
        except OverflowError:
            raise PolicyError(f"max_age {value!r} is too large") from None
    m = _AGE_RE.match(value) if isinstance(value, str) else None
    if not m or int(m.group(1)) <= 0:
        raise PolicyError(f"max_age must be a positive duration like '90d', '12h' or 3600, found {value!r}")
    try:
        return timedelta(seconds=int(m.group(1)) * _AGE_UNITS[m.group(2)])
    except OverflowError:
        raise PolicyError(f"max_age {value!r} is too large") from None


def _key(value: Any, where: str, base: Path) -> PublicKey:
    if not isinstance(value, str):
        raise PolicyError(
            f"{where}: expected a public key 'name:base64' or a key file path, found {key_text_hint(value)}"
        )
    try:
        return PublicKey.parse(value)
    except FormatError as first:
        f = Path(value) if Path(value).is_absolute() else base / value
        if not f.is_file():
            raise PolicyError(
                f"{where}: {key_text_hint(value)} is neither a public key ({first}) nor an existing key file"
            ) from None
        try:
            return load_public_key(f)
        except FormatError as e:
            raise PolicyError(f"{where}: {e}") from None


def _bound_key(value: dict, where: str, base: Path) -> tuple[PublicKey, list[str]]:
    """A provenance key written ``{ key = "...", builder_ids = ["..."] }``."""
    _unknown(value, {"key", "builder_ids"}, where)
    if "key" not in value or "builder_ids" not in value:
        raise PolicyError(f"{where}: a bound provenance key needs 'key' and 'builder_ids'")
    ids = value["builder_ids"]
    if not isinstance(ids, list) or not ids or not all(isinstance(x, str) and x for x in ids):
        raise PolicyError(f"{where}: builder_ids must be a non-empty list of builder id URIs")
    return _key(value["key"], f"{where} key", base), ids


def _unknown(got: dict, allowed: set[str], where: str) -> None:
    extra = sorted(set(got) - allowed)
    if extra:
        raise PolicyError(
            f"{where}: unknown setting(s) {', '.join(extra)} (allowed: {', '.join(sorted(allowed))})"
        )


def _int(v: Any, where: str) -> int:
    if isinstance(v, bool) or not isinstance(v, int) or v < 0:
        raise PolicyError(f"{where} must be a non-negative integer, found {v!r}")
    return v


def _bool(v: Any, where: str) -> bool:
    if not isinstance(v, bool):
        raise PolicyError(f"{where} must be true or false, found {v!r}")
    return v


def _time(v: Any, where: str) -> datetime:
    if isinstance(v, datetime):
        if v.tzinfo is None:
            raise PolicyError(f"{where} needs a time zone (write e.g. 2026-01-01T00:00:00Z)")
        return v
    if isinstance(v, str):
        try:
            return parse_time(v)
        except FormatError as e:
            raise PolicyError(f"{where}: {e}") from None
    raise PolicyError(f"{where} must be a date-time like 2026-01-01T00:00:00Z, found {v!r}")


def parse(text: str, *, base_dir: Path | None = None, source: str = "<policy>") -> Policy:
    """Parse policy ``text``; relative key file paths are relative to ``base_dir``."""
    base = base_dir or Path.cwd()
    try:
        data = tomllib.loads(text)
    except tomllib.TOMLDecodeError as e:
        raise PolicyError(f"{source}: invalid TOML: {e}") from None
    _unknown(data, _SECTIONS, source)
    keys = data.get("keys", {})
    if not isinstance(keys, dict):
        raise PolicyError(f"{source}: [keys] must be a table")
    _unknown(keys, _KEY_PURPOSES, f"{source} [keys]")
    by_purpose: dict[str, tuple[PublicKey, ...]] = {}
    bound: dict[bytes, list[str]] = {}  # provenance keys given with builder_ids
    free: set[bytes] = set()  # provenance keys given as plain strings
    for purpose in _KEY_PURPOSES:
        items = keys.get(purpose, [])
        if not isinstance(items, list):
            raise PolicyError(f"{source} [keys] {purpose} must be a list of keys")
        parsed = []
        for i, v in enumerate(items):
            where = f"{source} [keys] {purpose}[{i}]"
            if isinstance(v, dict) and purpose == "provenance":
                k, ids = _bound_key(v, where, base)
                have = bound.setdefault(k.key, [])
                have += [x for x in ids if x not in have]
            elif isinstance(v, dict):
                raise PolicyError(
                    f"{where}: only provenance keys can be bound to builder ids; write the key alone"
                )
            else:
                k = _key(v, where, base)
                if purpose == "provenance":
                    free.add(k.key)
            parsed.append(k)
        by_purpose[purpose] = tuple(parsed)
    both = [k for k in by_purpose["provenance"] if k.key in bound and k.key in free]
    if both:
        raise PolicyError(
            f"{source} [keys] provenance: key {both[0].name!r} is listed both bound to builder ids and "
            "plainly (which would let it claim any id): list it once"
        )
    key_builders = tuple((k, tuple(ids)) for k, ids in bound.items())
    revoked = []
    entries = data.get("revoked", [])
    if not isinstance(entries, list):
        raise PolicyError(f"{source}: revoked keys are written as [[revoked]] tables")
    for i, r in enumerate(entries):
        where = f"{source} [[revoked]] #{i + 1}"
        if not isinstance(r, dict) or "key" not in r or "revoked_at" not in r:
            raise PolicyError(f"{where}: needs 'key' and 'revoked_at'")
        _unknown(r, _REVOKED, where)
        revoked.append(
            Revocation(
                key=_key(r["key"], f"{where} key", base),
                revoked_at=_time(r["revoked_at"], f"{where} revoked_at"),
                compromised=_bool(r.get("compromised", True), f"{where} compromised"),
                reason=str(r.get("reason", "")),
            )
        )
    req = data.get("require", {})
    if not isinstance(req, dict):
        raise PolicyError(f"{source}: [require] must be a table")
    _unknown(req, _REQUIRE, f"{source} [require]")
    ids = req.get("builder_ids", [])
    if not isinstance(ids, list) or not all(isinstance(x, str) and x for x in ids):
        raise PolicyError(f"{source} [require] builder_ids must be a list of builder id URIs")
    pol = Policy(
        signing=by_purpose["signing"],
        provenance=by_purpose["provenance"],
        rebuilders=by_purpose["rebuilders"],
        revoked=tuple(revoked),
        signatures=_int(req.get("signatures", 0), f"{source} [require] signatures"),
        require_provenance=_bool(req.get("provenance", False), f"{source} [require] provenance"),
        require_sbom=_bool(req.get("sbom", False), f"{source} [require] sbom"),
        reproduced=_int(req.get("reproduced", 0), f"{source} [require] reproduced"),
        builder_ids=tuple(ids),
        key_builders=key_builders,
        max_age=parse_age(req["max_age"]) if "max_age" in req else None,
        source=source,
        digest=hashlib.sha256(text.encode()).hexdigest(),
    )
    _check_satisfiable(pol)
    return pol


def _check_satisfiable(p: Policy) -> None:
    """Refuse policies that can never pass: better a usage error now than a confusing
    failure on every path."""
    # distinct keys: the same key listed twice (under two names) is one signer
    signing = len({k.key for k in p.signing})
    rebuilders = {k.key for k in p.rebuilders}
    independent = len(rebuilders - {k.key for k in p.provenance})
    if p.signatures > signing:
        raise PolicyError(
            f"{p.source}: requires {p.signatures} signature(s) but trusts {signing} signing key(s)"
        )
    if p.reproduced > independent:
        raise PolicyError(
            f"{p.source}: requires {p.reproduced} rebuilder(s) but trusts {independent} independent of the "
            f"provenance keys ({len(rebuilders)} rebuilder key(s), a builder cannot vouch for itself)"
        )
    if (
        p.require_provenance or p.require_sbom or p.builder_ids or p.max_age is not None
    ) and not p.provenance:
        raise PolicyError(
            f"{p.source}: requires provenance/SBOM attestations (or checks builder ids or age) "
            "but trusts no provenance key"
        )
    bound = dict(p.key_builders)
    if (
        p.builder_ids
        and p.provenance
        and all(k.key in bound and not set(bound[k.key]) & set(p.builder_ids) for k in p.provenance)
    ):
        raise PolicyError(
            f"{p.source}: requires builder id(s) {', '.join(p.builder_ids)} but every provenance key "
            "is bound to other builder ids"
        )


def load(path: str | Path) -> Policy:
    """Read and parse a policy file."""
    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise PolicyError(f"cannot read policy file {p}: {e}") from None
    return parse(text, base_dir=p.resolve().parent, source=str(p))


# ---------------------------------------------------------------------------- evaluation


@dataclass(frozen=True, slots=True)
class Check:
    """One verification step. ``skipped``: nothing was required and nothing was there."""

    name: str
    ok: bool
    detail: str
    skipped: bool = False

    @property
    def status(self) -> str:
        return "skip" if self.skipped else ("pass" if self.ok else "FAIL")


@dataclass(frozen=True, slots=True)
class Report:
    """The outcome of ``verify_path``; ``ok`` iff every check passed (or was skipped)."""

    path: str
    policy: str
    checks: tuple[Check, ...]

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    def failures(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def lines(self) -> list[str]:
        return [f"{c.status:<4} {c.name}: {c.detail}" for c in self.checks]

    def to_dict(self) -> dict[str, Any]:
        return {
            "path": self.path,
            "policy": self.policy,
            "ok": self.ok,
            "checks": [
                {"name": c.name, "status": c.status.lower(), "ok": c.ok, "detail": c.detail}
                for c in self.checks
            ],
        }


def verify_path(
    store: Any, path: str, policy: Policy | None = None, *, now: datetime | None = None
) -> Report:
    """Verify valid store ``path`` in ``store`` (a ``LocalStore``) against ``policy``.

    Checks, in order: the path is valid; its object and its materialised tree both hash
    to the recorded NAR hash; path signatures (threshold of distinct trusted keys); the
    provenance attestation (signature, subject, builder id, age); the SBOM attestation;
    independent rebuilders' VSAs. Never raises for a failing artifact: every problem is a
    failed check. ``now`` overrides the clock (for max_age)."""
    from .policyeval import run_checks

    pol = policy or Policy()
    return Report(str(path), pol.source, tuple(run_checks(store, str(path), pol, now)))
