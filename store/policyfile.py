"""The policy file, read into a ``policy.Policy`` (what the fields mean, and how a path is
checked against them: ``policy``). TOML; unknown tables or keys are errors, so a typo
never weakens a policy::

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
    max_age     = "90d"            # provenance finishedOn no older than this (s/m/h/d/w)
    reproduced_max_age = "30d"     # a rebuilder's PASSED VSA counts for reproduced only if
                                   # its timeVerified is no older than this (needs reproduced)
    reproduced_same_inputs = true  # ... and only if it rebuilt from the inputs the verified
                                   # provenance names, with the same digests (needs
                                   # reproduced and a provenance key)
    clean_source = true            # the provenance records the recipe repository's git
                                   # commit and a clean tree (kiln build --require-clean)

Parsing is strict: an unknown table or setting, a value of the wrong type, a key that is
neither a public key nor a key file, or a policy no path could ever pass
(``_check_satisfiable``) is a ``PolicyError`` naming where it is.
"""

from __future__ import annotations

import hashlib
import re
import tomllib
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from .errors import FormatError
from .intoto import parse_time
from .keyfiles import load_public_key
from .policy import Policy, PolicyError, Revocation
from .signing import PublicKey, key_text_hint

_SECTIONS = {"keys", "revoked", "require"}
_KEY_PURPOSES = {"signing", "provenance", "rebuilders"}
_REQUIRE = {
    "signatures",
    "provenance",
    "sbom",
    "reproduced",
    "builder_ids",
    "max_age",
    "reproduced_max_age",
    "reproduced_same_inputs",
    "clean_source",
}
_REVOKED = {"key", "revoked_at", "compromised", "reason"}
_AGE_RE = re.compile(r"^\s*(\d+)\s*([smhdw]?)\s*\Z")
_AGE_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}


def parse_age(value: Any, what: str = "max_age") -> timedelta:
    """``"90d"``, ``"12h"``, ``"30m"``, ``"3600s"``, ``"2w"`` or an integer of seconds;
    ``what`` names the setting in errors."""
    if isinstance(value, int) and not isinstance(value, bool) and value > 0:
        try:
            return timedelta(seconds=value)
        except OverflowError:
            raise PolicyError(f"{what} {value!r} is too large") from None
    m = _AGE_RE.match(value) if isinstance(value, str) else None
    if not m or int(m.group(1)) <= 0:
        raise PolicyError(f"{what} must be a positive duration like '90d', '12h' or 3600, found {value!r}")
    try:
        return timedelta(seconds=int(m.group(1)) * _AGE_UNITS[m.group(2)])
    except OverflowError:
        raise PolicyError(f"{what} {value!r} is too large") from None


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
    """A policy time, in UTC (what is shown and compared is then the same instant)."""
    if isinstance(v, datetime):
        if v.tzinfo is None:
            raise PolicyError(f"{where} needs a time zone (write e.g. 2026-01-01T00:00:00Z)")
    elif isinstance(v, str):
        try:
            v = parse_time(v)
        except FormatError as e:
            raise PolicyError(f"{where}: {e}") from None
    else:
        raise PolicyError(f"{where} must be a date-time like 2026-01-01T00:00:00Z, found {v!r}")
    try:
        return v.astimezone(UTC)
    except (OverflowError, ValueError):  # 9999-12-31T23:59:59-01:00 is past year 9999 in UTC
        raise PolicyError(f"{where}: {v.isoformat()} is out of range in UTC") from None


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
        max_age=parse_age(req["max_age"], f"{source} [require] max_age") if "max_age" in req else None,
        reproduced_max_age=(
            parse_age(req["reproduced_max_age"], f"{source} [require] reproduced_max_age")
            if "reproduced_max_age" in req
            else None
        ),
        reproduced_same_inputs=_bool(
            req.get("reproduced_same_inputs", False), f"{source} [require] reproduced_same_inputs"
        ),
        clean_source=_bool(req.get("clean_source", False), f"{source} [require] clean_source"),
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
    if p.reproduced_max_age is not None and p.reproduced == 0:
        # (it would bound nothing: refused, so a policy meant to need rebuilders says so)
        raise PolicyError(
            f"{p.source}: sets reproduced_max_age, which bounds the age of the VSAs counted for "
            "reproduced, but requires no reproduction (reproduced = 0)"
        )
    if p.reproduced_same_inputs and (p.reproduced == 0 or not p.provenance):
        # (the inputs are compared with a verified provenance's: without both it bounds nothing)
        raise PolicyError(
            f"{p.source}: sets reproduced_same_inputs, which compares rebuilders' inputs with the "
            "verified provenance's, but "
            + (
                "requires no reproduction (reproduced = 0)"
                if p.reproduced == 0
                else "trusts no provenance key"
            )
        )
    if p.reproduced > independent:
        raise PolicyError(
            f"{p.source}: requires {p.reproduced} rebuilder(s) but trusts {independent} independent of the "
            f"provenance keys ({len(rebuilders)} rebuilder key(s), a builder cannot vouch for itself)"
        )
    if (
        p.require_provenance or p.require_sbom or p.builder_ids or p.max_age is not None or p.clean_source
    ) and not p.provenance:
        raise PolicyError(
            f"{p.source}: requires provenance/SBOM attestations (or checks builder ids, age or a clean "
            "source commit) but trusts no provenance key"
        )
    bound = [p.bound_ids(k.key) for k in p.provenance]
    if (
        p.builder_ids
        and bound
        and all(ids is not None and not set(ids) & set(p.builder_ids) for ids in bound)
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
