"""Nix's base-32 encoding ("nix32").

Invariants:
- Alphabet ``0123456789abcdfghijklmnpqrsvwxyz`` (no e, o, u, t).
- Length for n bytes is ceil(n*8/5); the encoding starts from the *last* 5-bit group,
  i.e. character 0 holds the most significant bits of the little-endian bit string.
- ``decode(encode(b)) == b``; decode rejects characters outside the alphabet and
  encodings whose unused high bits are non-zero (so every byte string has exactly one
  encoding).
"""

from __future__ import annotations

from .errors import FormatError

ALPHABET = "0123456789abcdfghijklmnpqrsvwxyz"
_INDEX = {c: i for i, c in enumerate(ALPHABET)}
# Characters outside the alphabet map to "w", which int(..., 32) rejects and we test for.
_TO_BASE32 = {ord(c): "0123456789abcdefghijklmnopqrstuv"[i] for i, c in enumerate(ALPHABET)} | {
    ord(c): "w" for c in "etou"
}


def encoded_len(nbytes: int) -> int:
    """Length of the nix32 encoding of ``nbytes`` bytes."""
    return (nbytes * 8 - 1) // 5 + 1 if nbytes else 0


# Two digits at a time: (n & 1023) -> the pair of characters for those 10 bits.
_PAIRS = [ALPHABET[i >> 5] + ALPHABET[i & 31] for i in range(1024)]


def encode(data: bytes) -> str:
    """Encode ``data`` the way Nix's ``printHash32`` does."""
    n = int.from_bytes(data, "little")
    length = encoded_len(len(data))
    out = []
    for _ in range(length >> 1):
        out.append(_PAIRS[n & 1023])
        n >>= 10
    if length & 1:
        out.append(ALPHABET[n & 31])
    return "".join(reversed(out))


def decode(text: str, nbytes: int | None = None) -> bytes:
    """Decode nix32 ``text``; ``nbytes`` defaults to the length implied by ``text``."""
    if nbytes is None:
        nbytes = len(text) * 5 // 8
    if len(text) != encoded_len(nbytes):
        raise FormatError(f"nix32 string {text!r} has length {len(text)}, expected {encoded_len(nbytes)}")
    digits = text.translate(_TO_BASE32)  # nix32 digits -> Python's int(..., 32) digits
    if digits and not digits.isalnum() or not digits.isascii() or digits != digits.lower() or "w" in digits:
        bad = next((c for c in text if c not in _INDEX), text[:1])
        raise FormatError(f"invalid character {bad!r} in nix32 string {text!r}")
    n = int(digits, 32) if digits else 0
    if n >> (nbytes * 8):
        raise FormatError(f"nix32 string {text!r} has non-zero padding bits")
    return n.to_bytes(nbytes, "little")


def is_valid(text: str, nbytes: int) -> bool:
    """True when ``text`` is a canonical nix32 encoding of ``nbytes`` bytes."""
    try:
        decode(text, nbytes)
    except FormatError:
        return False
    return True
