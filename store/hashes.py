"""Hash values and their textual forms.

A ``Hash`` is an algorithm name plus raw digest bytes. It prints and parses in the forms
Nix accepts:

=============  ===========================================  ==================
form           example                                      produced by
=============  ===========================================  ==================
prefixed nix32 ``sha256:1b8m03r63zqhnjf7l5wnldhh7c134ap5vpj0850``  narinfo, ``nix-hash --base32``
base16         ``sha256:31e0...516b`` or bare hex            ``sha256sum``
SRI            ``sha256-MeBmE3qWJnbon2nRtlOC3pWn7...=``       ``nix hash``
bare nix32     ``1b8m03r63zq...``                           recipes
=============  ===========================================  ==================

Parsing is strict: the digest length must match the algorithm, and the error says what
was expected and what was found.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass

from . import nixbase32
from .errors import FormatError

DIGEST_SIZES = {"md5": 16, "sha1": 20, "sha256": 32, "sha512": 64}


@dataclass(frozen=True, slots=True)
class Hash:
    """A digest with its algorithm. ``digest`` is the raw bytes."""

    algo: str
    digest: bytes

    def __post_init__(self) -> None:
        size = DIGEST_SIZES.get(self.algo)
        if size is None:
            raise FormatError(f"unknown hash algorithm {self.algo!r} (known: {', '.join(DIGEST_SIZES)})")
        if len(self.digest) != size:
            raise FormatError(f"{self.algo} digest must be {size} bytes, got {len(self.digest)}")

    @property
    def hex(self) -> str:
        return self.digest.hex()

    @property
    def nix32(self) -> str:
        return nixbase32.encode(self.digest)

    @property
    def sri(self) -> str:
        return f"{self.algo}-{base64.b64encode(self.digest).decode()}"

    def to_nix32(self) -> str:
        """``algo:nix32`` as written in narinfo files."""
        return f"{self.algo}:{self.nix32}"

    def to_hex(self) -> str:
        """``algo:hex``."""
        return f"{self.algo}:{self.hex}"

    def __str__(self) -> str:
        return self.to_nix32()

    @classmethod
    def sha256_of(cls, data: bytes) -> Hash:
        return cls("sha256", hashlib.sha256(data).digest())

    @classmethod
    def parse(cls, text: str, algo: str | None = None) -> Hash:
        """Parse any accepted form. ``algo`` is required for bare (unprefixed) digests and,
        when given, must agree with a prefix."""
        text = text.strip()
        body = text
        found_algo: str | None = None
        sri = False
        for name in DIGEST_SIZES:
            if text.startswith(name + ":"):
                found_algo, body = name, text[len(name) + 1 :]
                break
            if text.startswith(name + "-"):
                found_algo, body, sri = name, text[len(name) + 1 :], True
                break
        if found_algo and algo and found_algo != algo:
            raise FormatError(f"expected a {algo} hash, found a {found_algo} hash: {text!r}")
        algo = found_algo or algo
        if algo is None:
            raise FormatError(f"hash {text!r} has no algorithm prefix (write e.g. 'sha256:...')")
        size = DIGEST_SIZES.get(algo)
        if size is None:
            raise FormatError(f"unknown hash algorithm {algo!r}")
        if sri:
            try:
                digest = base64.b64decode(body, validate=True)
            except ValueError as e:  # binascii.Error, or a non-ASCII str
                raise FormatError(f"invalid base64 in SRI hash {text!r}: {e}") from None
            if len(digest) != size:
                raise FormatError(f"SRI {algo} hash {text!r} decodes to {len(digest)} bytes, expected {size}")
            return cls(algo, digest)
        if len(body) == size * 2:
            try:
                return cls(algo, bytes.fromhex(body))
            except ValueError:
                raise FormatError(f"invalid hex digit in {algo} hash {text!r}") from None
        if len(body) == nixbase32.encoded_len(size):
            return cls(algo, nixbase32.decode(body, size))
        if len(body) == len(base64.b64encode(b"\0" * size)):
            try:
                return cls(algo, base64.b64decode(body, validate=True))
            except ValueError:  # binascii.Error, or a non-ASCII str
                pass
        raise FormatError(
            f"{algo} hash {text!r} has {len(body)} characters; expected {size * 2} (hex), "
            f"{nixbase32.encoded_len(size)} (nix32) or an SRI '{algo}-<base64>' string"
        )
