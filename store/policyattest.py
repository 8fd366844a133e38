"""Verifying one attestation envelope for ``policy.verify_path`` (``verify_envelope``), and
the small helpers every attestation check shares (``policyeval``, ``policyprov``).

The order is DSSE's, then SLSA's: find which recognised keys validly signed, refuse a
compromised signer, and only then parse the payload; then its predicate type, its
subject (this path's base name and recorded NAR sha256), its signed time, and which of
the signers count at that time (revocation). Nothing here raises for a bad envelope:
the reason comes back as text, for a failed check.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime, timedelta
from typing import Any

from . import dsse
from .errors import FormatError
from .intoto import Statement, parse_statement
from .pathinfo import PathInfo
from .paths import StorePath
from .policy import Policy
from .signing import PublicKey

#: how far in the future a signed time may be (clocks differ a little, not by days)
CLOCK_SKEW = timedelta(minutes=5)


def one_line(e: BaseException) -> str:
    return " ".join(str(e).split())


def unique_keys(keys: list[PublicKey]) -> list[PublicKey]:
    """``keys`` without repeats of one raw key (the first name kept)."""
    seen: dict[bytes, PublicKey] = {}
    for k in keys:
        seen.setdefault(k.key, k)
    return list(seen.values())


def dig(obj: Any, *keys: str) -> Any:
    """``obj[k1][k2]...``, or None where a level is missing or not an object: a signed
    predicate of the wrong shape fails a check, it never raises."""
    for k in keys:
        if not isinstance(obj, dict):
            return None
        obj = obj.get(k)
    return obj


def verify_envelope(
    env: dsse.Envelope,
    info: PathInfo,
    keys: tuple[PublicKey, ...],
    policy: Policy,
    types: tuple[str, ...],
    when_of: Callable[[Statement], datetime | None],
) -> tuple[str | None, Statement | None, list[PublicKey]]:
    """Verify one envelope for ``info``: ``(error or None, statement, counted signers)``."""
    cands = {dsse.keyid(k.key): k for k in unique_keys([*keys, *(r.key for r in policy.revoked)])}
    signed = [cands[kid] for kid in dsse.signers(env, {kid: k.key for kid, k in cands.items()})]
    if not signed:
        found = [
            f"{cands[sg.keyid].name} (a trusted key's keyid, but the signature does not verify: changed "
            "after signing, or forged)"
            if sg.keyid in cands
            else f"keyid {sg.keyid[:16] or '(none)'} (not a trusted key)"
            for sg in env.signatures
        ]
        return (
            f"no valid signature by a trusted key ({len(env.signatures)} signature(s) present: "
            f"{', '.join(found) or 'none'})",
            None,
            [],
        )
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
