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

Secret key files are written 0600 through a temporary file in the same directory and
hard-linked into place (never replacing an existing key unless asked), so a crash never
leaves a partial key and a key is never world-readable for an instant.
"""

from __future__ import annotations

import base64
import functools
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass

import nacl.exceptions
import nacl.signing

from .errors import FormatError, KilnError
from .pathinfo import PathInfo


def _check_name(name: str, what: str) -> str:
    if not name or ":" in name or any(c.isspace() for c in name):
        raise FormatError(f"{what} name {name!r} must be non-empty, without ':' or whitespace")
    return name


def _split(text: str, what: str, size: int) -> tuple[str, bytes]:
    name, sep, b64 = text.strip().partition(":")
    if not sep:
        raise FormatError(f"{what} must look like '<name>:<base64>', found no ':'")
    _check_name(name, what)
    try:
        raw = base64.b64decode(b64, validate=True)
    except ValueError:  # binascii.Error, or a non-ASCII str
        raise FormatError(f"{what} {name!r}: invalid base64") from None
    if len(raw) != size:
        raise FormatError(f"{what} {name!r}: expected {size} bytes, found {len(raw)}")
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
            raise FormatError(f"secret key {self.name!r}: public half does not match the seed")

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
    """Whether ``text`` could be (part of) a secret key: ``name:`` followed by more
    base64 than a public key has (44 characters). Such text is never echoed, even when it
    does not parse: a key that lost its padding or a few characters still holds the seed."""
    _, colon, rest = text.strip().partition(":")
    b64 = rest.strip().rstrip("=")
    return bool(colon) and len(b64) > 44 and all(c.isalnum() or c in "+/" for c in b64)


def key_text_hint(text: object) -> str:
    """``text`` as an error message may show it: a secret key, or anything that may be
    one (``may_be_secret``), is never echoed (it ends up in CI logs); anything else is
    shown, shortened."""
    if isinstance(text, str):
        if may_be_secret(text):
            return "a secret key or part of one (not shown; give its public half, see 'kiln key public')"
        return repr(text) if len(text) <= 80 else repr(text[:77] + "...")
    return repr(text)


def load_secret_key(path: str | os.PathLike) -> SecretKey:
    """Read a secret key file (Nix format). Warns nothing, prints nothing. A file that
    group or others may read is refused (as ssh does): the key signs paths and
    attestations, and a copy readable by other users is a leaked key."""
    try:
        mode = os.stat(path).st_mode
    except FileNotFoundError:
        raise FormatError(f"{os.fspath(path)}: no such secret key file") from None
    if mode & 0o077 and _is_public_key_file(path):  # the usual mix-up: say that, not chmod
        raise FormatError(f"{os.fspath(path)} is a public key; signing needs the secret key (NAME.sec)")
    if mode & 0o077:
        raise FormatError(
            f"secret key file {os.fspath(path)} is accessible by group/others (mode {mode & 0o777:o}); "
            f"run: chmod 600 {os.fspath(path)}"
        )
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise FormatError(f"{os.fspath(path)}: not a secret key file (non-ASCII content)") from None
    try:
        return SecretKey.parse(text)
    except FormatError as e:
        if _is_public_key_file(path):
            raise FormatError(
                f"{os.fspath(path)} is a public key; signing needs the secret key (NAME.sec)"
            ) from None
        raise FormatError(f"{os.fspath(path)}: {e}") from None


def _is_public_key_file(path: str | os.PathLike) -> bool:
    """Whether ``path`` holds a public key (read at most a line's worth)."""
    try:
        with open(path, "rb") as f:
            head = f.read(200)
        PublicKey.parse(head.decode("ascii"))
        return True
    except (OSError, UnicodeDecodeError, FormatError):
        return False


def load_public_key(path: str | os.PathLike) -> PublicKey:
    """Read a public key file (Nix format)."""
    try:
        with open(path, encoding="ascii") as f:
            text = f.read()
    except UnicodeDecodeError:
        raise FormatError(f"{os.fspath(path)}: not a public key file (non-ASCII content)") from None
    try:
        return PublicKey.parse(text)
    except FormatError as e:
        raise FormatError(f"{os.fspath(path)}: {e}") from None


def _write_atomic(path: str | os.PathLike, text: str, mode: int, overwrite: bool) -> None:
    path = os.fspath(path)
    if os.path.isdir(path):  # else the error would name the temp file renamed over it
        raise KilnError(f"{path} is a directory; name the key file to write")
    d = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".key-", dir=d)  # mkstemp creates it 0600
    try:
        os.fchmod(fd, mode)
        os.write(fd, text.encode())
        os.fsync(fd)
        os.close(fd)
        fd = -1
        if overwrite:
            os.replace(tmp, path)
        else:
            try:
                os.link(tmp, path)  # atomic create-if-absent
            except FileExistsError:
                raise KilnError(f"{path} already exists; refusing to overwrite a key file") from None
            os.unlink(tmp)
        dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    finally:
        if fd >= 0:
            os.close(fd)
        if os.path.lexists(tmp):
            os.unlink(tmp)


def write_secret_key(path: str | os.PathLike, key: SecretKey, *, overwrite: bool = False) -> None:
    """Create ``path`` (mode 0600) holding ``key``; atomic, refuses to replace an
    existing file unless ``overwrite``."""
    _write_atomic(path, key.to_text(), 0o600, overwrite)


def write_public_key(path: str | os.PathLike, key: PublicKey, *, overwrite: bool = False) -> None:
    """Create ``path`` (mode 0644) holding ``key``."""
    _write_atomic(path, key.to_text(), 0o644, overwrite)
