"""ed25519 signing keys and store-path signatures in Nix's text formats.

Formats (identical to ``nix key generate-secret`` / ``nix store sign``):

- secret key: ``<name>:<base64 of 64 bytes>`` (the 32-byte seed followed by the 32-byte
  public key, libsodium's secret-key layout);
- public key: ``<name>:<base64 of 32 bytes>``;
- signature: ``<name>:<base64 of the 64-byte detached signature>``.

A path is signed over ``PathInfo.fingerprint()`` (``1;path;narHash;narSize;refs``).
ed25519 is deterministic, so kiln's signature for a path equals Nix's for the same key.

Trust is by key *name*: a signature counts for a trusted key when the names match and the
signature verifies against that key's bytes. ``valid_signers`` returns the set of names
of distinct trusted keys with a valid signature; thresholds compare against its size, so
one key signing twice never counts twice.

Parse errors never quote the text they fail on, only a key's name when it is a plausible
one (``showable_name``): handed the wrong file (``--key .env``), the text before its first
``:`` is that file's tokens and passwords.

Reading and writing key files is ``keyfiles``'s: this module does no I/O.
"""

from __future__ import annotations

import base64
import functools
import re
from collections.abc import Iterable
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from .errors import FormatError, looks_like_key
from .pathinfo import PathInfo

#: what a key name may be for an error message to show it: Nix's names are like
#: ``cache.nixos.org-1`` and kiln's ``kiln-user@host-1``; ``=``, ``/`` and quotes are
#: left out, as the start of a ``.env`` line (``TOKEN=value``) or a URL would have them
_SHOWABLE_NAME = re.compile(r"[A-Za-z0-9._@+~-]{1,64}")
#: a run that random tokens have and names do not: long, mixing upper, lower and digits
_TOKENISH = re.compile(r"(?=[A-Za-z0-9]*[A-Z])(?=[A-Za-z0-9]*[a-z])(?=[A-Za-z0-9]*[0-9])[A-Za-z0-9]{16,}")


def showable_name(name: str) -> bool:
    """Whether an error message may show ``name`` (the text before a key's first ``:``):
    only a plausible key name. A key file's parse error must not print the file: given the
    wrong file (``--key .env``), the text before its first ``:`` is whatever it holds
    (tokens, passwords, a whole key without its name)."""
    return bool(_SHOWABLE_NAME.fullmatch(name)) and not _TOKENISH.search(name) and not looks_like_key(name)


def name_hint(name: str) -> str:
    """``name`` quoted if ``showable_name``, else only its size."""
    if showable_name(name):
        return repr(name)
    return f"({_size(name)}; not shown)"


def _size(text: str) -> str:
    lines = text.count("\n") + 1
    return f"{len(text)} character{'s' * (len(text) != 1)}, {lines} line{'s' * (lines != 1)}"


def _labelled(what: str, name: str) -> str:
    """``secret key 'ci-1'``, or without the name if it is not ``showable_name``."""
    return f"{what} {name!r}" if showable_name(name) else f"{what} (its name: {_size(name)}; not shown)"


def _check_name(name: str, what: str) -> str:
    if not name or ":" in name or any(c.isspace() for c in name):
        raise FormatError(f"{what} name {name_hint(name)} must be non-empty, without ':' or whitespace")
    return name


def _split(text: str, what: str, size: int) -> tuple[str, bytes]:
    name, sep, b64 = text.strip().partition(":")
    if not sep:
        raise FormatError(f"{what} must look like '<name>:<base64>', found no ':'")
    if not name:
        raise FormatError(f"{what} name must be non-empty, without ':' or whitespace")
    if any(c.isspace() for c in name):  # (so never showable: another file's lines, most likely)
        raise FormatError(
            f"{what}: the text before the first ':' is not a key name ({_size(name)}; not shown): "
            "a key name must be non-empty, without ':' or whitespace"
        )
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII str
        raise FormatError(f"{_labelled(what, name)}: invalid base64") from None
    if len(raw) != size:
        raise FormatError(f"{_labelled(what, name)}: expected {size} bytes, found {len(raw)}")
    return name, raw


def _b64(raw: bytes) -> str:
    return base64.b64encode(raw).decode()


@dataclass(frozen=True, slots=True)
class PublicKey:
    """A named ed25519 verify key."""

    name: str
    key: bytes  # 32 bytes

    @classmethod
    def parse(cls, text: str) -> PublicKey:
        name, raw = _split(text, "public key", 32)
        return cls(name, raw)

    def to_text(self) -> str:
        return f"{self.name}:{_b64(self.key)}"

    def __str__(self) -> str:
        return self.to_text()

    def verify(self, data: bytes, sig_text: str) -> bool:
        """True iff ``sig_text`` is ``<this name>:<base64 sig>`` and the signature over
        ``data`` verifies. Malformed signatures are simply invalid (False)."""
        name, sep, b64 = sig_text.strip().partition(":")
        if not sep or name != self.name:
            return False
        try:
            sig = base64.b64decode(b64, validate=True)
        except ValueError:  # binascii.Error, or a non-ASCII str
            return False
        if len(sig) != 64:
            return False
        try:
            _verify_key(self.key).verify(data, sig)
        except (nacl.exceptions.BadSignatureError, ValueError):
            return False
        return True


@dataclass(frozen=True, slots=True, repr=False)
class SecretKey:
    """A named ed25519 signing key. ``repr`` never shows the key material."""

    name: str
    key: bytes  # 64 bytes: seed + public key

    def __post_init__(self) -> None:
        seed, pub = self.key[:32], self.key[32:]
        if len(self.key) != 64 or bytes(nacl.signing.SigningKey(seed).verify_key) != pub:
            raise FormatError(f"{_labelled('secret key', self.name)}: public half does not match the seed")

    def __repr__(self) -> str:
        return f"SecretKey(name={self.name!r}, public={_b64(self.key[32:])!r})"

    @classmethod
    def generate(cls, name: str) -> SecretKey:
        _check_name(name, "key")
        sk = nacl.signing.SigningKey.generate()
        return cls(name, bytes(sk) + bytes(sk.verify_key))

    @classmethod
    def parse(cls, text: str) -> SecretKey:
        name, raw = _split(text, "secret key", 64)
        return cls(name, raw)

    def to_text(self) -> str:
        return f"{self.name}:{_b64(self.key)}"

    def public(self) -> PublicKey:
        return PublicKey(self.name, self.key[32:])

    def sign(self, data: bytes) -> str:
        """Detached signature over ``data`` as ``<name>:<base64>``."""
        sig = nacl.signing.SigningKey(self.key[:32]).sign(data).signature
        return f"{self.name}:{_b64(sig)}"


def sign_info(info: PathInfo, key: SecretKey) -> str:
    """The signature of ``key`` over the path's fingerprint (what goes in a ``Sig:`` line)."""
    return key.sign(info.fingerprint())


@functools.lru_cache(maxsize=64)
def _verify_key(key: bytes) -> nacl.signing.VerifyKey:
    """One VerifyKey per public key (checking thousands of narinfos reuses it)."""
    return nacl.signing.VerifyKey(key)


def valid_signers(info: PathInfo, trusted: Iterable[PublicKey]) -> set[str]:
    """Names of the distinct trusted keys that have a valid signature in ``info.sigs``.

    Distinct by *key*, not by name: one key listed under two names (and signing under
    both) counts once, so it cannot meet a threshold of two on its own."""
    by_name: dict[str, list[PublicKey]] = {}
    for k in trusted:
        by_name.setdefault(k.name, []).append(k)
    if not by_name or not info.sigs:
        return set()
    fp = info.fingerprint()
    ok: dict[bytes, str] = {}  # raw key -> the first name it validly signed under
    for sig in info.sigs:
        name = sig.partition(":")[0]
        for k in by_name.get(name, ()):
            if k.key not in ok and k.verify(fp, sig):
                ok[k.key] = name
    return set(ok.values())


def may_be_secret(text: str) -> bool:
    """Whether ``text``, given as a key or a key's file, could hold (part of) a secret key
    (``errors.looks_like_key``, a heuristic). Such text is never echoed, even when it does
    not parse: a key that lost its padding or a few characters still holds the seed."""
    return looks_like_key(text)


def key_text_hint(text: object) -> str:
    """``text`` as an error message may show it: a secret key, or anything that may be
    one (``may_be_secret``), is never echoed (it ends up in CI logs); anything else is
    shown, shortened."""
    if isinstance(text, str):
        if may_be_secret(text):
            return "a secret key or part of one (not shown; give its public half, see 'kiln key public')"
        return repr(text) if len(text) <= 80 else repr(text[:40] + "...")
    return repr(text)


def present_signers(info: PathInfo, trusted: Iterable[PublicKey]) -> str:
    """The signatures ``info`` carries, by key name, each with why it counts or not for
    ``trusted``: ``"rel-1 (valid), dev-1 (not a trusted key)"``; a signature under a
    trusted key's name that does not verify says so (the narinfo changed after it was
    signed, or the signature is forged); ``"none"`` without signatures. For failure
    messages: "1 signature present" did not say whose."""
    trusted = list(trusted)
    good, names = valid_signers(info, trusted), {k.name for k in trusted}
    parts = []
    for n in dict.fromkeys(s.partition(":")[0] for s in info.sigs):
        if n in good:
            parts.append(f"{n} (valid)")
        elif n in names:
            parts.append(
                f"{n} (a trusted key's name, but the signature does not verify: changed after signing, or forged)"
            )
        else:
            parts.append(f"{n} (not a trusted key)")
    return ", ".join(parts) or "none"
