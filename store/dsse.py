"""DSSE (Dead Simple Signing Envelope) v1 with ed25519 keys.

Theory of operation
-------------------
A signature covers ``PAE(payloadType, payload)``::

    "DSSEv1" SP LEN(type) SP type SP LEN(body) SP body      (LEN = decimal byte length)

so the payload type cannot be swapped without breaking every signature. The JSON
envelope carries the payload in base64 and a list of ``{keyid, sig}``.

Invariants
----------
- ``keyid`` is the lowercase hex SHA-256 of the raw 32-byte ed25519 public key. It is only
  a hint: verification tries every trusted key against every signature and never trusts
  the keyid for a decision (DSSE protocol, step 2).
- Verification order follows the spec: signatures first, *then* the payload type, then
  the caller parses the payload. A threshold counts **distinct** trusted keys.
- Both the standard and the URL-safe base64 alphabets are accepted on input; output is
  standard base64 with padding.
- Signing goes through a ``Signer`` (an in-process ed25519 key, or an external command
  for KMS/HSM: ``signcmd.CommandSigner``, outside this pure module); every signature an
  external command returns is verified before use, so a misconfigured signer cannot
  produce an envelope that later fails verification.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

import nacl.exceptions
import nacl.signing

from .errors import FormatError, KilnError

PAYLOAD_TYPE = "application/vnd.in-toto+json"


class DsseError(KilnError):
    """An envelope failed verification (bad signature, threshold, payload type)."""


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-Authentication Encoding: the exact bytes a DSSE signature covers."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %b %d %b" % (len(t), t, len(payload), payload)


def keyid(public_key: bytes) -> str:
    """The keyid kiln emits: hex SHA-256 of the raw 32-byte ed25519 public key."""
    if len(public_key) != 32:
        raise FormatError(f"ed25519 public key must be 32 bytes, got {len(public_key)}")
    return hashlib.sha256(public_key).hexdigest()


def b64decode(text: str) -> bytes:
    """Decode standard or URL-safe base64, padded or not (DSSE requires both)."""
    s = text.strip().replace("-", "+").replace("_", "/")
    s += "=" * (-len(s) % 4)
    try:
        return base64.b64decode(s, validate=True)
    except (binascii.Error, ValueError) as e:
        raise FormatError(f"invalid base64 in DSSE envelope: {e}") from None


def b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


@dataclass(frozen=True, slots=True)
class Signature:
    """One entry of ``signatures``. ``keyid`` may be empty (the spec allows omitting it)."""

    sig: bytes
    keyid: str = ""


@dataclass(frozen=True, slots=True)
class Envelope:
    """A DSSE envelope. ``payload`` is the raw serialized body (not base64)."""

    payload_type: str
    payload: bytes
    signatures: tuple[Signature, ...] = ()

    def pae(self) -> bytes:
        return pae(self.payload_type, self.payload)

    def to_dict(self) -> dict[str, Any]:
        sigs = []
        for s in self.signatures:
            d = {"keyid": s.keyid, "sig": b64encode(s.sig)} if s.keyid else {"sig": b64encode(s.sig)}
            sigs.append(d)
        return {"payload": b64encode(self.payload), "payloadType": self.payload_type, "signatures": sigs}

    def dumps(self) -> str:
        """Canonical JSON text (sorted keys, compact) with a trailing newline."""
        return json.dumps(self.to_dict(), sort_keys=True, separators=(",", ":")) + "\n"

    @classmethod
    def from_dict(cls, d: Any) -> Envelope:
        """Parse the JSON envelope form; raise ``FormatError`` on anything malformed."""
        if not isinstance(d, dict):
            raise FormatError(f"DSSE envelope must be a JSON object, found {type(d).__name__}")
        payload, ptype, sigs = d.get("payload"), d.get("payloadType"), d.get("signatures")
        if not isinstance(payload, str) or not isinstance(ptype, str):
            raise FormatError("DSSE envelope needs string fields 'payload' and 'payloadType'")
        if not isinstance(sigs, list):
            raise FormatError("DSSE envelope field 'signatures' must be a list")
        out = []
        for i, s in enumerate(sigs):
            if not isinstance(s, dict) or not isinstance(s.get("sig"), str):
                raise FormatError(f"DSSE signature #{i} must be an object with a string 'sig'")
            kid = s.get("keyid", "")
            if not isinstance(kid, str):
                raise FormatError(f"DSSE signature #{i}: 'keyid' must be a string")
            out.append(Signature(b64decode(s["sig"]), kid))
        return cls(ptype, b64decode(payload), tuple(out))

    @classmethod
    def loads(cls, text: str | bytes) -> Envelope:
        try:
            d = json.loads(text)
        except (ValueError, RecursionError) as e:  # (RecursionError: nesting too deep to parse)
            raise FormatError(f"DSSE envelope is not valid JSON: {e or 'nested too deep'}") from None
        return cls.from_dict(d)


# ---------------------------------------------------------------------------- signing


class Signer(Protocol):
    """Anything that can produce a raw 64-byte ed25519 signature for one public key."""

    @property
    def public_key(self) -> bytes: ...

    def sign(self, data: bytes) -> bytes: ...


@dataclass(frozen=True, slots=True)
class Ed25519Signer:
    """An in-process signer from a 32-byte seed (or a 64-byte seed+public secret key)."""

    secret: bytes = field(repr=False)  # never in a repr: tracebacks and logs show reprs
    # derived once: expanding the seed costs more than a signature of a small statement
    _key: nacl.signing.SigningKey = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if len(self.secret) not in (32, 64):
            raise FormatError(f"ed25519 secret key must be 32 or 64 bytes, got {len(self.secret)}")
        object.__setattr__(self, "_key", nacl.signing.SigningKey(self.secret[:32]))

    @property
    def public_key(self) -> bytes:
        return bytes(self._key.verify_key)

    def sign(self, data: bytes) -> bytes:
        return self._key.sign(data).signature


def sign(payload: bytes, signers: Iterable[Signer], payload_type: str = PAYLOAD_TYPE) -> Envelope:
    """Sign ``payload`` with every signer; keyids are always emitted."""
    msg = pae(payload_type, payload)
    sigs = tuple(Signature(s.sign(msg), keyid(s.public_key)) for s in signers)
    if not sigs:
        raise KilnError("cannot sign a DSSE envelope without a signer")
    return Envelope(payload_type, payload, sigs)


# ---------------------------------------------------------------------------- verifying


def verify_raw(public_key: bytes, data: bytes, sig: bytes) -> bool:
    """True iff ``sig`` is a valid ed25519 signature of ``data`` under ``public_key``."""
    if len(public_key) != 32 or len(sig) != 64:
        return False
    try:
        nacl.signing.VerifyKey(public_key).verify(data, sig)
    except (nacl.exceptions.BadSignatureError, nacl.exceptions.ValueError, ValueError):
        return False
    return True


def signers(env: Envelope, keys: Mapping[str, bytes]) -> list[str]:
    """Labels (keys of ``keys``) of every key that made a valid signature on ``env``,
    in ``keys`` order, one label per distinct key (the same key under two labels counts
    once). No threshold or payload-type check."""
    msg = env.pae()
    seen: set[bytes] = set()
    out = []
    for label, pk in keys.items():
        if pk not in seen and any(verify_raw(pk, msg, s.sig) for s in env.signatures):
            seen.add(pk)
            out.append(label)
    return out


@dataclass(frozen=True, slots=True)
class Verified:
    """A verified envelope: its payload and the labels of the trusted keys that signed."""

    payload_type: str
    payload: bytes
    signed_by: tuple[str, ...]


def verify(
    env: Envelope,
    trusted: Mapping[str, bytes],
    threshold: int = 1,
    payload_types: Sequence[str] = (PAYLOAD_TYPE,),
) -> Verified:
    """Verify ``env`` against ``trusted`` (label -> raw public key).

    Accept only when at least ``threshold`` distinct trusted keys signed, and only then
    check that the payload type is supported. Raise ``DsseError`` saying why otherwise."""
    if threshold < 1:
        raise ValueError("threshold must be at least 1")
    good = signers(env, trusted)
    if len(good) < threshold:
        n = len(env.signatures)
        raise DsseError(
            f"DSSE envelope has {len(good)} valid signature(s) from trusted keys, need {threshold} "
            f"({n} signature(s) present, {len(trusted)} trusted key(s))"
        )
    if env.payload_type not in payload_types:
        raise DsseError(
            f"unsupported DSSE payloadType {env.payload_type!r} (expected {', '.join(payload_types)})"
        )
    return Verified(env.payload_type, env.payload, tuple(good))
