"""Reading the package indexes apt downloaded into candidates for a lock.

Theory of operation
-------------------
The machine's apt sources (archive URLs for ``debian:`` sources, ``archive_bases``, and
the keys each archive is signed by) are read by ``aptsources``.

``kiln lock debian`` resolves a closure against the indexes apt has already downloaded
(``/var/lib/apt/lists/*_Packages``, possibly compressed, read by ``aptfile``: apt's own
``apt-helper cat-file`` for lz4, ``gzip`` and ``debstreams.Streams`` for the rest, so a
cut or corrupt file is an ``AptError`` naming it, never a silently shorter index, and
none is decompressed past ``aptfile.MAX_INDEX_BYTES``). ``AptIndex.load`` hands each
index's bytes to a ``check`` before reading them: the command's is ``aptverify``'s, which
verifies them against their suite's signed ``Release`` file as ``apt-get update`` did.

Every stanza is scanned once with one regex (field names case-insensitive; a field given
twice is a ``FormatError``, as deb822 and a first-match scan would read it two ways); only
the stanzas of packages that end up in the closure are parsed with python-debian's
``debian.deb822.Packages``.
Versions (``Version``, and those in ``Provides``) must be what dpkg accepts
(``valid_version``): python-debian raises ``ValueError`` comparing some others.

Candidates (``AptIndex``) follow apt's default pins:

the candidate of a name is its highest version (dpkg ordering) of the wanted architecture
or ``all`` among the indexes of the highest priority: 500, or 1 for a suite whose Release
file says ``NotAutomatic: yes`` (100 with ``ButAutomaticUpgrades: yes``), so backports
are taken only for what nothing else has.

Resolving a closure against an ``AptIndex`` is in ``aptresolve``; the lock file format of
its result (``LockEntry`` records) is in ``aptlock``, whose names are re-exported here.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

from .aptfields import fields as fields_of
from .aptfields import valid_version as valid_version  # re-exported: aptresolve and tests import it here
from .aptfile import AptError as AptError
from .aptfile import read_index_bytes as read_index_bytes
from .aptlock import (
    LOCK_FIELDS,
    LockEntry,
    check_entry,
    entry_problem,
    lock_value_problem,
    parse_lock,
    read_lock,
    render_lock,
)
from .aptsources import archive_bases as archive_bases  # re-exported: fetch and tests use it here
from .errors import FormatError

if TYPE_CHECKING:
    from debian.deb822 import Packages

APT_LISTS = Path("/var/lib/apt/lists")


class IndexVerifier(Protocol):
    """What ``AptIndex.load`` asks of a verifier (``aptverify.ListsVerifier``)."""

    def check(self, index: Path, data: bytes) -> None: ...

    def priority(self, index: Path) -> int: ...


# --- indexes ---------------------------------------------------------------------------

INDEX_SUFFIXES = ("", ".lz4", ".gz", ".xz", ".bz2", ".zst")


def index_files(lists_dir: Path = APT_LISTS) -> list[Path]:
    """The binary ``Packages`` indexes apt has downloaded, sorted by file name."""
    out = []
    for p in sorted(lists_dir.glob("*_Packages*")):
        suffix = p.name.split("_Packages", 1)[1]
        if suffix in INDEX_SUFFIXES and p.is_file():
            out.append(p)
    return out


def read_index(path: Path) -> str:
    """The text of one (possibly compressed) index file (``read_index_bytes``)."""
    return read_index_bytes(path).decode("utf-8", errors="replace")


#: apt's default pin priorities
PRIORITY_DEFAULT, PRIORITY_UPGRADES_ONLY, PRIORITY_NOT_AUTOMATIC = 500, 100, 1


_PACKAGE_RE = re.compile(r"^package[ \t]*:[ \t]*(\S+)", re.I | re.M)
_PROVIDE_RE = re.compile(r"^\s*([^\s(]+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?\s*\Z")


def release_stem(release: Path) -> str:
    """The list prefix a Release file shares with its suite's indexes (its name without
    ``InRelease``/``Release``): the same for both forms."""
    return release.name.removesuffix("InRelease").removesuffix("Release")


def release_file(index: Path) -> Path | None:
    """apt's Release file of the suite an index belongs to: the ``*_InRelease`` or
    ``*_Release`` beside it with the longest name whose stem prefixes the index's name
    (so ``InRelease`` over ``Release``, as apt prefers it); None if there is none."""
    best: Path | None = None
    for rel in index.parent.glob("*Release"):
        stem = release_stem(rel)
        if (
            stem.endswith("_")
            and index.name.startswith(stem)
            and (best is None or len(rel.name) > len(best.name))
        ):
            best = rel
    return best


def pin_priority(not_automatic: bool, but_automatic_upgrades: bool) -> int:
    """apt's default pin priority of a suite whose Release says so."""
    if not_automatic:
        return PRIORITY_UPGRADES_ONLY if but_automatic_upgrades else PRIORITY_NOT_AUTOMATIC
    return PRIORITY_DEFAULT


def release_priority(index: Path) -> int:
    """The default pin priority of the suite an index belongs to, read (unverified) from
    its ``release_file``; 500 if there is none."""
    best = release_file(index)
    if best is None:
        return PRIORITY_DEFAULT
    try:
        text = best.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return PRIORITY_DEFAULT
    fields = {
        k.strip().lower(): v.strip().lower()
        for k, _, v in (ln.partition(":") for ln in text.splitlines()[:80])
    }
    return pin_priority(fields.get("notautomatic") == "yes", fields.get("butautomaticupgrades") == "yes")


#: the index field each lock field comes from
_INDEX_KEYS = {
    "name": "Package",
    "version": "Version",
    "arch": "Architecture",
    "sha256": "SHA256",
    "filename": "Filename",
    "size": "Size",
}


def _where(source: str) -> str:
    """The prefix naming the index file an error is in (none if unknown)."""
    return f"{source}: " if source else ""


class AptIndex:
    """Candidates by name and providers of virtual names, for one architecture.

    ``stanzas`` are raw stanzas, ``(stanza, priority)`` pairs or ``(stanza, priority,
    index file)`` triples (plain ones have the default priority 500; the file, if given,
    is named in errors about the stanza)."""

    def __init__(
        self, stanzas: Iterable[str | tuple[str, int] | tuple[str, int, str]], arch: str = "amd64"
    ) -> None:
        from debian.debian_support import version_compare

        self.arch = arch
        self.arch_packages = 0  # stanzas of exactly ``arch`` (not "all"): none means a wrong arch
        # name -> (version, stanza, priority, index file or "", Provides)
        self._raw: dict[str, tuple[str, str, int, str, str]] = {}
        # name -> why a stanza of it cannot be read (a field twice, a version dpkg refuses):
        # said when the package is used (``_usable``), so one bad stanza of an unrelated
        # package, or of another architecture, in a third-party list does not refuse every lock
        self._bad: dict[str, str] = {}
        for item in stanzas:
            if isinstance(item, str):
                stanza, prio, source = item, PRIORITY_DEFAULT, ""
            else:
                stanza, prio, source = item[0], item[1], item[2] if len(item) > 2 else ""
            stanza = stanza.strip("\n")
            try:
                fields = fields_of(stanza)
            except FormatError as e:
                if (m := _PACKAGE_RE.search(stanza)) is not None:
                    self._bad.setdefault(m.group(1), f"{_where(source)}{e}")
                continue
            name = fields.get("package", "").strip()
            pkg_arch = fields.get("architecture", "").strip()
            if not name or pkg_arch not in (arch, "all"):
                continue
            self.arch_packages += pkg_arch == arch
            version = fields.get("version", "").strip()
            if not valid_version(version):
                self._bad.setdefault(
                    name, f"{_where(source)}package {name}: bad or missing Version {version!r}"
                )
                continue
            best = self._raw.get(name)
            if best is None or (prio, 0) > (best[2], version_compare(best[0], version)):
                self._raw[name] = (version, stanza, prio, source, fields.get("provides", ""))
        # virtual name -> [(candidate providing it, provided version or None)], from
        # candidates only, as apt does
        self.providers: dict[str, list[tuple[str, str | None]]] = {}
        #: the reverse: candidate -> [(virtual name, provided version or None)]
        self.provides: dict[str, list[tuple[str, str | None]]] = {}
        for name, (version, _, _, source, provides) in sorted(self._raw.items()):
            for item in provides.split(","):
                m = _PROVIDE_RE.match(item)
                if not m:
                    continue
                if m.group(2) is not None and not valid_version(m.group(2)):
                    self._bad.setdefault(
                        name,
                        f"{_where(source)}package {name} {version}: Provides {item.strip()!r}: "
                        f"expected a Debian version after '=', found {m.group(2)!r}",
                    )  # (still listed as a provider: choosing it says why it cannot be)
                self.providers.setdefault(m.group(1), []).append((name, m.group(2)))
                self.provides.setdefault(name, []).append((m.group(1), m.group(2)))
        self._parsed: dict[str, Packages] = {}

    @classmethod
    def load(
        cls,
        lists_dir: Path = APT_LISTS,
        arch: str = "amd64",
        verifier: IndexVerifier | None = None,
    ) -> AptIndex:
        """The candidates of every index in ``lists_dir``. A ``verifier`` sees each index's
        decompressed bytes before they are read (and raises to refuse them), and then
        gives its suite's pin priority (from the Release it verified); without one, the
        priority is ``release_priority``'s."""
        files = index_files(lists_dir)
        if not files:
            raise AptError(f"no package indexes in {lists_dir} (run 'apt-get update' first)")

        def stanzas() -> Iterator[tuple[str, int, str]]:
            for f in files:
                data = read_index_bytes(f)
                if verifier is not None:
                    verifier.check(f, data)
                prio = release_priority(f) if verifier is None else verifier.priority(f)
                for s in data.decode("utf-8", errors="replace").split("\n\n"):
                    yield s, prio, str(f)

        index = cls(stanzas(), arch)  # (its errors name the file)
        if not index.arch_packages:
            raise AptError(f"no packages for architecture {arch!r} in the apt indexes of {lists_dir}")
        return index

    def __contains__(self, name: str) -> bool:
        return name in self._raw or name in self._bad

    def _usable(self, name: str) -> None:
        """``FormatError`` if a stanza of ``name`` could not be read (``_bad``)."""
        if name in self._bad:
            raise FormatError(self._bad[name])

    def package(self, name: str) -> Packages:
        """The parsed candidate stanza (``debian.deb822.Packages``) of ``name``."""
        from debian.deb822 import Packages

        self._usable(name)
        if name not in self._parsed:
            self._parsed[name] = Packages(self._raw[name][1])
        return self._parsed[name]

    def version(self, name: str) -> str:
        self._usable(name)
        return self._raw[name][0]

    def where(self, name: str) -> str:
        """``"<index file>: "`` for errors about ``name``'s candidate ("" if unknown)."""
        return _where(self._raw[name][3])

    def entry(self, name: str) -> LockEntry:
        """The lock entry of ``name``'s candidate. A stanza lacking a field or with a value
        the lock would refuse (``aptlock.lock_value_problem``, or a ``Filename`` that does
        not name the package, ``aptlock.entry_problem``) is a ``FormatError`` naming the
        index file (when known), the package, its version and the field."""
        p = self.package(name)
        where = f"{self.where(name)}index stanza of {name} {self.version(name)}"
        missing = [k for k in ("SHA256", "Filename", "Size") if not p.get(k)]
        if missing:
            raise FormatError(f"{where} lacks {', '.join(missing)}")
        if not p["Size"].isdigit():
            raise FormatError(f"{where}: Size must be a number of bytes, found {p['Size']!r}")
        values = {
            "name": name,
            "version": p["Version"],
            "arch": p["Architecture"],
            "sha256": p["SHA256"],
            "filename": p["Filename"],
            "size": int(p["Size"]),
        }
        for key, value in values.items():
            problem = lock_value_problem(key, value)
            if problem:
                raise FormatError(f"{where}: {_INDEX_KEYS[key]}: {problem}")
        problem = entry_problem(name, p["Version"], p["Architecture"], p["Filename"])
        if problem:  # the build checks the .deb against its file name: it must name the package
            raise FormatError(f"{where}: Filename: {problem}")
        return LockEntry(**values)


__all__ = [
    "APT_LISTS",
    "LOCK_FIELDS",
    "AptError",
    "AptIndex",
    "LockEntry",
    "archive_bases",
    "check_entry",
    "entry_problem",
    "index_files",
    "lock_value_problem",
    "parse_lock",
    "read_index",
    "read_index_bytes",
    "read_lock",
    "release_file",
    "release_stem",
    "release_priority",
    "render_lock",
]
