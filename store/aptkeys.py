"""Which keys verify a suite's Release: apt's trust, read from the machine (pure but for
reading keyring files).

Theory of operation
-------------------
apt trusts, for a ``deb`` sources entry, the keyrings its ``Signed-By`` names (files, or
an inline armored block) or, when it names none, its global keyrings
(``global_keyrings``: ``/etc/apt/trusted.gpg`` and ``trusted.gpg.d/*.{gpg,asc}``);
``Signed-By`` fingerprints narrow which of those keys' signatures count. Entries are
found by the list prefix of their (URI, suite) pairs (``source_prefixes``), as apt names
the files it downloads; entries of one suite that disagree are refused (``keys_for``).
``keyring_file`` turns a keyring spec into a binary file gpgv reads. Used by
``aptverify``.
"""

from __future__ import annotations

import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from .apt import AptError
from .aptrelease import dearmor
from .aptsources import SourceEntry, list_prefix, signed_by_parts
from .errors import FormatError

APT_TRUSTED = Path("/etc/apt/trusted.gpg")
APT_TRUSTED_DIR = Path("/etc/apt/trusted.gpg.d")


def global_keyrings(trusted: Path = APT_TRUSTED, trusted_dir: Path = APT_TRUSTED_DIR) -> list[str]:
    """apt's global trust: ``trusted.gpg`` and ``trusted.gpg.d/*.gpg``/``*.asc`` that exist."""
    out = [str(trusted)] if trusted.is_file() else []
    if trusted_dir.is_dir():
        out += [str(p) for p in sorted(trusted_dir.iterdir()) if p.suffix in (".gpg", ".asc") and p.is_file()]
    return out


@dataclass(frozen=True)
class SuiteKeys:
    """The keys a suite's Release is checked with: keyring files or inline key blocks, and
    the fingerprints whose signatures count (all, if none)."""

    keyrings: tuple[str, ...]
    fingerprints: tuple[str, ...] = ()


def source_prefixes(sources: list[SourceEntry]) -> dict[str, tuple[str, list[SourceEntry]]]:
    """The suite and ``deb`` entries of each list prefix their (URI, suite) pairs give."""
    out: dict[str, tuple[str, list[SourceEntry]]] = {}
    for e in sources:
        if "deb" in e.types:
            for u in e.uris:
                for suite in e.suites:
                    out.setdefault(list_prefix(u, suite), (suite, []))[1].append(e)
    return out


def keys_for(entries: list[SourceEntry], global_trust: list[str], where: str = "") -> SuiteKeys:
    """The keys apt would check the Release of a suite these entries name with: their
    ``Signed-By`` files (apt's global keyrings where it names no file) and fingerprints.
    ``AptError`` if the entries name different ``Signed-By`` (apt refuses that too: one
    would widen what the other pinned)."""
    if len({e.signed_by for e in entries}) > 1:
        raise AptError(
            f"{where}: the machine's apt sources give this suite conflicting Signed-By values "
            f"({' / '.join(' '.join(e.signed_by) or '(none)' for e in entries)}); apt refuses that too"
        )
    files, fingerprints = signed_by_parts(entries[0].signed_by) if entries else ((), ())
    return SuiteKeys(tuple(files) or tuple(global_trust), fingerprints)


def keyring_file(spec: str, tmp_dir: Path) -> Path | None:
    """A binary keyring file gpgv can read for a keyring spec: the file itself, or for an
    armored one (a ``*.asc`` file, an inline ``Signed-By`` block) its dearmored copy made
    in ``tmp_dir``. None if the path does not exist; ``AptError`` naming it if it is no
    OpenPGP keyring (apt's test: armored, or starting with a public key packet)."""
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" in spec:
        text, where = spec, "inline Signed-By key"
    else:
        path = Path(spec)
        if not path.is_file():
            return None
        data = read_bytes(path)
        if not data.lstrip().startswith(b"-----BEGIN PGP"):
            # (apt's test: a binary keyring starts with a public key packet)
            if data[:1] not in (b"\x98", b"\x99", b"\xc6"):
                raise AptError(f"{spec}: not an OpenPGP keyring (neither armored nor a public key packet)")
            return path.resolve()
        text, where = data.decode("ascii", errors="replace"), spec
    try:
        binary = dearmor(text, where)
    except FormatError as e:
        raise AptError(str(e)) from None
    fd, name = tempfile.mkstemp(dir=tmp_dir, suffix=".gpg")
    with os.fdopen(fd, "wb") as f:
        f.write(binary)
    return Path(name)


def read_bytes(path: Path) -> bytes:
    """``path``'s bytes; ``AptError`` naming it if it cannot be read."""
    try:
        return path.read_bytes()
    except OSError as e:
        raise AptError(f"cannot read {path}: {e.strerror or e}") from None
