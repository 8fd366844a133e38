"""What a ``.deb`` is pinned to be: its package name, version and architecture.

Theory of operation
-------------------
A lock entry pins a ``.deb``'s bytes by sha256; what those bytes *are* is said by the
package's own control file (``Package``, ``Version``, ``Architecture``: a
``DebIdentity``, read by ``debcontrol``). A ``DebPin`` is what a lock says it should be,
and ``DebPin.mismatch`` compares the two.

A pin comes from a whole lock entry (``DebPin.of_entry``: the full version, epoch
included) or from a pool file name alone (``DebPin.of_pool_name``): Debian names pool
files ``<package>_<version>_<arch>.deb`` with the epoch dropped (``apt-get download``
writes it as ``%3a``), so such a pin checks the version without its epoch unless the name
carries one. A ``debian_rootfs`` toolchain's fetch derivations carry each entry's
``filename`` (in the fetch's ``debian:`` URL), sha256 and ``version`` (the full one,
since the SBOM needs the epoch: ``sbom.deb_package``), not its ``name`` or ``arch``; the
build's pin is the name's, with that version's epoch (``debinputs``).
``aptlock`` checks that a lock's fields agree with its file name, so both pins say the
same. Pure text: no I/O.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import unquote

from .errors import FormatError

if TYPE_CHECKING:
    from .aptlock import LockEntry


@dataclass(frozen=True, slots=True)
class DebIdentity:
    """What a package says it is: the ``Package``, ``Version`` and ``Architecture`` fields
    of its control file."""

    package: str
    version: str
    arch: str


def _without_epoch(version: str) -> str:
    """``version`` without a leading ``<epoch>:`` (Debian policy 5.6.12: the epoch is the
    part before the first colon, and upstream versions may hold colons only after one)."""
    return version.partition(":")[2] if ":" in version else version


def adds_epoch(pool_version: str, full: str) -> bool:
    """Whether ``full`` (a lock's version) is ``pool_version`` (a pool file name's, which
    Debian writes without the epoch) with an epoch: ``4:12.2.0-3`` for ``12.2.0-3``."""
    return ":" not in pool_version and ":" in full and _without_epoch(full) == pool_version


@dataclass(frozen=True, slots=True)
class DebPin:
    """What a ``.deb`` must say it is. ``source`` says where the pin came from (for
    messages); ``epoch_known`` is False for a pool file name without an epoch, whose
    version is then compared with the package's own without its epoch."""

    package: str
    version: str
    arch: str
    source: str
    epoch_known: bool = True

    @classmethod
    def of_entry(cls, entry: LockEntry) -> DebPin:
        """The pin of a whole lock entry (its full version)."""
        return cls(entry.name, entry.version, entry.arch, f"lock entry {entry.name!r}")

    @classmethod
    def of_pool_name(cls, filename: str) -> DebPin:
        """The pin a pool path (a lock ``filename``) says: its last component must be
        ``<package>_<version>_<arch>.deb`` (the version's epoch, if any, as ``%3a``);
        ``FormatError`` otherwise."""
        base = filename.rsplit("/", 1)[-1]
        parts = base.removesuffix(".deb").split("_")
        if not base.endswith(".deb") or len(parts) != 3 or not all(parts):
            raise FormatError(
                f"expected a .deb file name <package>_<version>_<arch>.deb, found {base!r} (in {filename!r})"
            )
        version = unquote(parts[1])  # as sbom.deb_package reads it
        return cls(parts[0], version, parts[2], f"file name {base!r}", epoch_known=":" in version)

    def mismatch(self, found: DebIdentity) -> str | None:
        """None if ``found`` is what this pin says; else each differing field as
        ``"expected Package 'a', found 'b'"``, joined with ``"; "``."""
        wrong = []
        if found.package != self.package:
            wrong.append(f"expected Package {self.package!r}, found {found.package!r}")
        if (found.version if self.epoch_known else _without_epoch(found.version)) != self.version:
            any_epoch = "" if self.epoch_known else " (any epoch)"
            wrong.append(f"expected Version {self.version!r}{any_epoch}, found {found.version!r}")
        if found.arch != self.arch:
            wrong.append(f"expected Architecture {self.arch!r}, found {found.arch!r}")
        return "; ".join(wrong) or None
