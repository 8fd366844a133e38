"""apt's ``Release`` files, gpgv's status lines and OpenPGP armor: pure parsing, no I/O.

Theory of operation
-------------------
A suite of a Debian archive is described by one ``Release`` file (clear-signed as
``InRelease``, or beside a detached ``Release.gpg``) whose ``SHA256`` field lists every
index of the suite by path relative to the suite (``main/binary-amd64/Packages``), with
its size. apt checks the signature, then each downloaded index against that list;
``aptverify`` does the same with these pieces:

- ``parse_release`` reads the signed text (never the file around a clear-signed block:
  text outside the signature is not signed) into a ``Release``;
- ``clearsigned_problem`` refuses an ``InRelease`` that is not exactly one clear-signed
  text (gpgv would verify the first of two blocks; apt splits the file itself, more
  strictly still: kiln allows blank lines around the block, and reads only what gpgv
  says was signed);
- ``good_signers`` reads ``gpgv --status-fd`` output as apt does: a signature counts when
  gpgv reports both ``GOODSIG`` and ``VALIDSIG`` for it, with a digest apt does not call
  weak (MD5, SHA-1, RIPEMD-160); any ``BADSIG``, ``ERROR`` or ``NODATA`` refuses the
  whole file; a signature by an expired, revoked or unknown key counts for nothing
  (``EXPKEYSIG``, ``REVKEYSIG``, ``ERRSIG``/``NO_PUBKEY`` never come with ``GOODSIG``);
  ``Signatures.by`` keeps those by a source's ``Signed-By`` fingerprints;
- ``dearmor`` turns an ASCII-armored key (apt's ``*.asc`` keyrings, an inline
  ``Signed-By`` block) into the binary keyring gpgv reads, checking the armor's CRC-24.
"""

from __future__ import annotations

import base64
import re
from dataclasses import dataclass, field
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

from .aptfields import fields as fields_of
from .errors import FormatError


@dataclass(frozen=True)
class Release:
    """What kiln uses of a suite's Release file. ``sha256`` maps an index's path within the
    suite to its (hex digest, size); ``valid_until`` is None when the file sets none;
    ``not_automatic``/``but_automatic_upgrades`` set the suite's pin priority."""

    suite: str
    sha256: dict[str, tuple[str, int]] = field(hash=False)
    valid_until: datetime | None = None
    not_automatic: bool = False
    but_automatic_upgrades: bool = False
    #: its ``Suite`` and ``Codename`` (a source names the suite by either)
    names: tuple[str, ...] = ()
    #: its ``Date`` (when the archive made it), None if it has none
    date: datetime | None = None


_HASH_LINE = re.compile(r"^([0-9a-fA-F]{64})\s+(\d+)\s+(\S+)$")


def parse_release(text: str, where: str) -> Release:
    """The ``Release`` read from a (signed) Release text. ``FormatError`` prefixed with
    ``where`` for a field given twice, a malformed ``SHA256`` line or ``Valid-Until``, or
    a Release listing no SHA256 hash at all (apt refuses those too)."""
    fields = fields_of(text.strip("\n"), where)
    sha256: dict[str, tuple[str, int]] = {}
    for n, line in enumerate(fields.get("sha256", "").splitlines()):
        line = line.strip()
        if not line:
            continue
        m = _HASH_LINE.match(line)
        if m is None:
            raise FormatError(
                f"{where}: SHA256 line {n}: expected '<64 hex digits> <size> <path>', found {line[:80]!r}"
            )
        sha256[m.group(3)] = (m.group(1).lower(), int(m.group(2)))
    if not sha256:
        raise FormatError(f"{where}: no SHA256 hashes (apt refuses a Release without them too)")
    valid_until = _date(fields, "valid-until", where)
    suite = (fields.get("codename") or fields.get("suite") or "").strip()
    suites = tuple(v for v in (fields.get("suite", "").strip(), fields.get("codename", "").strip()) if v)

    def yes(name: str) -> bool:
        return fields.get(name, "").strip().lower() == "yes"

    flags = yes("notautomatic"), yes("butautomaticupgrades")
    return Release(suite, sha256, valid_until, *flags, suites, _date(fields, "date", where))


def _date(fields: dict[str, str], name: str, where: str) -> datetime | None:
    """The RFC 2822 date of field ``name`` in UTC, None if absent."""
    if name not in fields:
        return None
    value = fields[name].strip()
    label = {"date": "Date", "valid-until": "Valid-Until"}[name]
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        raise FormatError(f"{where}: {label}: expected an RFC 2822 date, found {value!r}") from None
    if when.tzinfo is None:
        raise FormatError(f"{where}: {label}: expected a date with a time zone, found {value!r}")
    return when.astimezone(UTC)


#: OpenPGP hash algorithm ids apt counts as weak for signing Release files
WEAK_DIGESTS = {"1": "MD5", "2": "SHA1", "3": "RIPEMD160"}


@dataclass(frozen=True)
class Signatures:
    """What gpgv said of a signed file: the (signing key, primary key) fingerprints of the
    good signatures, and why each other signature did not count (for the error)."""

    good: tuple[tuple[str, str], ...]
    other: tuple[str, ...]

    def by(self, allowed: tuple[str, ...]) -> tuple[str, ...]:
        """The primary fingerprints of the good signatures by keys in ``allowed`` (apt's
        ``Signed-By`` fingerprints: a primary key's counts for its subkeys; one ending in
        ``!`` only for that exact key); every good one if ``allowed`` is empty."""
        out = []
        for fpr, primary in self.good:
            if not allowed or fpr + "!" in allowed or fpr in allowed or primary in allowed:
                out.append(primary)
        return tuple(dict.fromkeys(out))


_WHY = {"EXPKEYSIG": "expired key", "REVKEYSIG": "revoked key", "EXPSIG": "expired signature"}


def good_signers(status: str) -> Signatures:
    """The signatures gpgv's ``--status-fd`` lines report (see the module docstring).
    ``FormatError`` if any signature is bad, or gpgv reports an error or no signed data
    (``ERROR``, ``NODATA``: several plaintexts, say): apt refuses the file then, even
    when another signature is good."""
    good: list[tuple[str, str]] = []
    other: list[str] = []
    goodsig = None  # long key id of the current signature's GOODSIG
    noted = False  # the current signature's failure is already in ``other``
    for line in status.splitlines():
        words = line.split()
        if len(words) < 2 or words[0] != "[GNUPG:]":
            continue
        kind, args = words[1], words[2:]
        if kind == "NEWSIG":
            goodsig, noted = None, False
        elif kind == "BADSIG":
            raise FormatError(f"bad signature by key {args[0] if args else '?'}: the file was altered")
        elif kind in ("ERROR", "NODATA"):
            raise FormatError(f"gpgv: {kind} {' '.join(args)} (not one well-formed signed text)")
        elif kind == "GOODSIG" and args:
            goodsig = args[0].upper()
        elif kind == "VALIDSIG" and len(args) >= 10:
            fpr, digest, primary = args[0].upper(), args[7], args[9].upper()
            if goodsig is None or not fpr.endswith(goodsig):
                if not noted:
                    other.append(f"key {fpr}: valid but not good")
            elif digest in WEAK_DIGESTS:
                other.append(f"key {fpr}: weak digest {WEAK_DIGESTS[digest]}")
            else:
                good.append((fpr, primary))
        elif kind in _WHY and args:
            other.append(f"key {args[0]}: {_WHY[kind]}")
            noted = True
        elif kind == "NO_PUBKEY" and args:
            other.append(f"key {args[0]}: not in the trusted keyrings")
    return Signatures(tuple(dict.fromkeys(good)), tuple(dict.fromkeys(other)))


_CLEARSIGNED = re.compile(
    rb"\A(?:[ \t]*\r?\n)*-----BEGIN PGP SIGNED MESSAGE-----\r?\n"
    rb"(?:(?!-----BEGIN PGP ).*\n)*?"
    rb"-----BEGIN PGP SIGNATURE-----\r?\n"
    rb"(?:(?!-----(?:BEGIN|END) PGP ).*\n)*?"
    rb"-----END PGP SIGNATURE-----[ \t]*(?:\r?\n[ \t]*)*\Z"
)


def clearsigned_problem(data: bytes) -> str | None:
    """Why ``data`` is not exactly one clear-signed text (nothing but blank lines before
    it or after its signature, no second block, no
    armored message instead), or None."""
    if _CLEARSIGNED.match(data) is None:
        return "not exactly one clear-signed text (apt refuses other data around or inside it)"
    return None


_ARMOR_RE = re.compile(
    # (a header line has one way to match: its name holds no ':' — else a failed match
    # would retry every split of every header, exponentially)
    r"-----BEGIN PGP PUBLIC KEY BLOCK-----\r?\n(?:[^\n:]*:[^\n]*\n)*[ \t]*\r?\n(.*?)-----END PGP PUBLIC KEY BLOCK-----",
    re.S,
)


def _crc24(data: bytes) -> int:
    crc = 0xB704CE
    for byte in data:
        crc ^= byte << 16
        for _ in range(8):
            crc <<= 1
            if crc & 0x1000000:
                crc ^= 0x1864CFB
    return crc & 0xFFFFFF


def dearmor(text: str, where: str) -> bytes:
    """The binary keyring of every armored public key block in ``text``, concatenated.
    ``FormatError`` naming ``where`` if there is none, or a block's base64 or CRC-24 is
    wrong."""
    out = b""
    for n, m in enumerate(_ARMOR_RE.finditer(text), 1):
        body, crc = [], None
        for line in m.group(1).split():
            if line.startswith("="):
                crc = line[1:]
            else:
                body.append(line)
        try:
            data = base64.b64decode("".join(body), validate=True)
            expected = int.from_bytes(base64.b64decode(crc, validate=True), "big") if crc else None
        except ValueError as e:
            raise FormatError(f"{where}: key block {n}: bad base64 ({e})") from None
        if expected is not None and expected != _crc24(data):
            raise FormatError(
                f"{where}: key block {n}: CRC-24 {expected:06x} expected, found {_crc24(data):06x}"
            )
        out += data
    if not out:
        raise FormatError(f"{where}: no armored public key block")
    return out
