"""Reading the machine's apt configuration and metadata: archive base URLs and package indexes.

Theory of operation
-------------------
kiln never writes an archive host into the repository. The places a ``debian:<pool path>``
source can be downloaded from are read *at run time* from the machine's own apt sources
(``/etc/apt/sources.list.d/*.sources`` in deb822 form, and the one-line
``/etc/apt/sources.list``), see ``archive_bases``.

``kiln lock debian`` resolves a closure against the indexes apt has already downloaded
(``/var/lib/apt/lists/*_Packages``, possibly compressed; apt's own ``apt-helper cat-file``
is used for lz4, the standard library and ``zstandard`` for the rest). The index is scanned
once with a cheap field scan; only the stanzas of packages that end up in the closure are
parsed with python-debian's ``debian.deb822.Packages`` (relations, version constraints).

Resolution rules (documented in docs/toolchain.md):

- the candidate of a name is, as apt picks it with default pins, its highest version (dpkg
  ordering) of the wanted architecture or ``all`` among the indexes of the highest
  priority: 500, or 1 for a suite whose Release file says ``NotAutomatic: yes`` (100 with
  ``ButAutomaticUpgrades: yes``), so backports are taken only for what nothing else has;
- ``Depends`` and ``Pre-Depends`` are followed; ``Recommends``/``Suggests`` are not;
- for an alternative list ``a | b | c`` the dependency is satisfied if any alternative is
  already chosen with a version that meets its constraint (by name, or by a ``Provides``,
  which for a versioned dependency must itself carry a version that meets it, as Debian
  policy 7.5 says); otherwise the first satisfiable alternative is chosen: a real package
  whose candidate meets the constraint, else a virtual name provided by some candidate
  (the provider already chosen, else the first by name);
- excluded names are never chosen; a dependency whose alternatives are all excluded is
  dropped (and reported), one that cannot be satisfied at all is an error.

The result is a sorted tuple of ``LockEntry`` values (the lock records).
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import re
import subprocess
import sys
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path

from .errors import FormatError, KilnError

APT_LISTS = Path("/var/lib/apt/lists")
APT_SOURCES_LIST = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")


class AptError(KilnError):
    """The apt metadata is missing or cannot satisfy a request."""


@dataclass(frozen=True, slots=True)
class LockEntry:
    """One pinned .deb: what ``kiln lock debian`` writes and ``debian_rootfs`` fetches."""

    name: str
    version: str
    arch: str
    sha256: str
    filename: str
    size: int


# --- sources ---------------------------------------------------------------------------


def _deb822_sources(path: Path) -> Iterator[tuple[list[str], list[str]]]:
    """(types, uris) of each stanza of a ``.sources`` file."""
    from debian.deb822 import Deb822

    with open(path, encoding="utf-8") as f:
        for para in Deb822.iter_paragraphs(f, use_apt_pkg=False):
            if para.get("Enabled", "yes").strip().lower() == "no":
                continue
            yield para.get("Types", "").split(), para.get("URIs", "").split()


def _one_line_sources(path: Path) -> Iterator[tuple[list[str], list[str]]]:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        # "deb [opt=val ...] URI suite comp..." — options are bracketed
        line = re.sub(r"\[[^\]]*\]", " ", line)
        words = line.split()
        if len(words) >= 2:
            yield [words[0]], [words[1]]


def archive_bases(
    kind: str = "deb", sources_dir: Path = APT_SOURCES_DIR, sources_list: Path = APT_SOURCES_LIST
) -> list[str]:
    """Base URLs (no trailing slash) of the configured archives of type ``kind``, in
    configuration order, without duplicates. Only http(s), file and ftp URIs are kept."""
    found: list[str] = []
    files: list[tuple[Path, bool]] = []
    if sources_list.is_file():
        files.append((sources_list, False))
    if sources_dir.is_dir():
        files += [(p, True) for p in sorted(sources_dir.glob("*.sources"))]
        files += [(p, False) for p in sorted(sources_dir.glob("*.list"))]
    for path, deb822 in files:
        try:
            entries = _deb822_sources(path) if deb822 else _one_line_sources(path)
            for types, uris in entries:
                if kind not in types:
                    continue
                for uri in uris:
                    uri = uri.rstrip("/")
                    if re.match(r"^(https?|ftp|file):", uri) and uri not in found:
                        found.append(uri)
        except (OSError, UnicodeDecodeError):
            continue  # an unreadable sources file is apt's problem, not a lock-breaker
    return found


# --- indexes ---------------------------------------------------------------------------

_INDEX_SUFFIXES = ("", ".lz4", ".gz", ".xz", ".bz2", ".zst")


def index_files(lists_dir: Path = APT_LISTS) -> list[Path]:
    """The binary ``Packages`` indexes apt has downloaded, sorted by file name."""
    out = []
    for p in sorted(lists_dir.glob("*_Packages*")):
        suffix = p.name.split("_Packages", 1)[1]
        if suffix in _INDEX_SUFFIXES and p.is_file():
            out.append(p)
    return out


def read_index(path: Path) -> str:
    """The text of one (possibly compressed) index file."""
    name = path.name
    if name.endswith(".lz4"):
        # apt's own helper knows every compressor apt uses; no lz4 binding needed
        proc = subprocess.run(["/usr/lib/apt/apt-helper", "cat-file", str(path)], capture_output=True)
        if proc.returncode != 0:
            raise AptError(f"cannot decompress {path}: {proc.stderr.decode(errors='replace').strip()}")
        data = proc.stdout
    elif name.endswith(".gz"):
        data = gzip.decompress(path.read_bytes())
    elif name.endswith(".xz"):
        data = lzma.decompress(path.read_bytes())
    elif name.endswith(".bz2"):
        data = bz2.decompress(path.read_bytes())
    elif name.endswith(".zst"):
        import zstandard

        with open(path, "rb") as f:
            data = zstandard.ZstdDecompressor().stream_reader(f).read()
    else:
        data = path.read_bytes()
    return data.decode("utf-8", errors="replace")


def _field(stanza: str, key: str) -> str:
    """The one-line value of ``key`` in a raw stanza ("" if absent). Plain string search:
    this runs for every stanza of a 50 MB index."""
    if stanza.startswith(key + ":"):
        i = len(key) + 1
    else:
        i = stanza.find("\n" + key + ":")
        if i < 0:
            return ""
        i += len(key) + 2
    j = stanza.find("\n", i)
    return stanza[i : j if j >= 0 else len(stanza)].strip()


#: apt's default pin priorities
PRIORITY_DEFAULT, PRIORITY_UPGRADES_ONLY, PRIORITY_NOT_AUTOMATIC = 500, 100, 1
_VERSION_RE = re.compile(r"^(\d+:)?[0-9][A-Za-z0-9.+~:-]*\Z")
_PROVIDE_RE = re.compile(r"^\s*([^\s(]+)\s*(?:\(\s*=\s*([^)\s]+)\s*\))?\s*\Z")


def release_priority(index: Path) -> int:
    """The default pin priority of the suite an index belongs to, from apt's Release file
    beside it (the longest ``*_InRelease``/``*_Release`` whose name prefixes the index's)."""
    best: Path | None = None
    for rel in index.parent.glob("*Release"):
        stem = rel.name.removesuffix("InRelease").removesuffix("Release")
        if (
            stem.endswith("_")
            and index.name.startswith(stem)
            and (best is None or len(rel.name) > len(best.name))
        ):
            best = rel
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
    if fields.get("notautomatic") == "yes":
        return (
            PRIORITY_UPGRADES_ONLY if fields.get("butautomaticupgrades") == "yes" else PRIORITY_NOT_AUTOMATIC
        )
    return PRIORITY_DEFAULT


class AptIndex:
    """Candidates by name and providers of virtual names, for one architecture.

    ``stanzas`` are raw stanzas, or ``(stanza, priority)`` pairs (plain ones have the
    default priority 500)."""

    def __init__(self, stanzas: Iterable[str | tuple[str, int]], arch: str = "amd64") -> None:
        from debian.debian_support import version_compare

        self.arch = arch
        self._raw: dict[str, tuple[str, str, int]] = {}
        for item in stanzas:
            stanza, prio = (item, PRIORITY_DEFAULT) if isinstance(item, str) else item
            stanza = stanza.strip("\n")
            name = _field(stanza, "Package")
            if not name or _field(stanza, "Architecture") not in (arch, "all"):
                continue
            version = _field(stanza, "Version")
            if not _VERSION_RE.match(version):
                raise FormatError(f"package {name}: bad or missing Version {version!r}")
            best = self._raw.get(name)
            if best is None or (prio, 0) > (best[2], version_compare(best[0], version)):
                self._raw[name] = (version, stanza, prio)
        # virtual name -> [(candidate providing it, provided version or None)], from
        # candidates only, as apt does
        self.providers: dict[str, list[tuple[str, str | None]]] = {}
        #: the reverse: candidate -> [(virtual name, provided version or None)]
        self.provides: dict[str, list[tuple[str, str | None]]] = {}
        for name, (_, stanza, _) in sorted(self._raw.items()):
            for item in _field(stanza, "Provides").split(","):
                m = _PROVIDE_RE.match(item)
                if m:
                    self.providers.setdefault(m.group(1), []).append((name, m.group(2)))
                    self.provides.setdefault(name, []).append((m.group(1), m.group(2)))
        self._parsed: dict[str, object] = {}

    @classmethod
    def load(cls, lists_dir: Path = APT_LISTS, arch: str = "amd64") -> AptIndex:
        files = index_files(lists_dir)
        if not files:
            raise AptError(f"no package indexes in {lists_dir} (run 'apt-get update' first)")
        current = [files[0]]

        def stanzas() -> Iterator[tuple[str, int]]:
            for f in files:
                current[0] = f
                prio = release_priority(f)
                for s in read_index(f).split("\n\n"):
                    yield s, prio

        try:
            return cls(stanzas(), arch)
        except FormatError as e:
            raise FormatError(f"{current[0]}: {e}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._raw

    def package(self, name: str):
        """The parsed candidate stanza (``debian.deb822.Packages``) of ``name``."""
        from debian.deb822 import Packages

        if name not in self._parsed:
            self._parsed[name] = Packages(self._raw[name][1])
        return self._parsed[name]

    def version(self, name: str) -> str:
        return self._raw[name][0]

    def entry(self, name: str) -> LockEntry:
        p = self.package(name)
        missing = [k for k in ("SHA256", "Filename", "Size") if not p.get(k)]
        if missing:
            raise FormatError(f"index stanza of {name} lacks {', '.join(missing)}")
        if not p["Size"].isdigit():
            raise FormatError(f"index stanza of {name}: Size must be a number of bytes, found {p['Size']!r}")
        return LockEntry(
            name=name,
            version=p["Version"],
            arch=p["Architecture"],
            sha256=p["SHA256"],
            filename=p["Filename"],
            size=int(p["Size"]),
        )


# --- resolution ------------------------------------------------------------------------


def _satisfies(version: str, rel: dict) -> bool:
    from debian.debian_support import version_compare

    constraint = rel.get("version")
    if not constraint:
        return True
    op, want = constraint
    c = version_compare(version, want)
    # "<" and ">" are the obsolete spellings of "<=" and ">=" (Debian policy 7.1)
    ok = {"<<": c < 0, "<=": c <= 0, "<": c <= 0, "=": c == 0, ">=": c >= 0, ">": c >= 0, ">>": c > 0}.get(op)
    if ok is None:
        raise FormatError(f"unknown version relation {op!r} in ({op} {want})")
    return ok


def _rel_text(alts: list[dict]) -> str:
    """``a (>= 1) | b`` as Debian writes it."""
    out = []
    for a in alts:
        v = a.get("version")
        out.append(f"{a['name']} ({v[0]} {v[1]})" if v else a["name"])
    return " | ".join(out)


def resolve(
    index: AptIndex, roots: list[str], exclude: Iterable[str] = (), warn=None
) -> tuple[LockEntry, ...]:
    """The closure of ``roots`` under Depends + Pre-Depends (rules in the module docstring),
    sorted by name."""
    warn = warn or (lambda msg: print(f"warning: {msg}", file=sys.stderr))
    excluded = set(exclude)
    chosen: dict[str, None] = {}
    provided: dict[str, list[str | None]] = {}  # virtual name -> versions chosen packages provide
    queue: list[str] = []

    def choose(name: str) -> None:
        if name in chosen:
            return
        chosen[name] = None
        queue.append(name)
        for virt, ver in index.provides.get(name, []):
            provided.setdefault(virt, []).append(ver)

    def satisfied(alt: dict) -> bool:
        if alt["name"] in chosen and _satisfies(index.version(alt["name"]), alt):
            return True
        vers = provided.get(alt["name"], [])
        if alt.get("version") is None:
            return bool(vers)
        return any(v is not None and _satisfies(v, alt) for v in vers)

    for root in roots:
        if root in excluded:
            raise AptError(f"package {root!r} is both requested and excluded")
        if root not in index:
            via = [p for p, _ in index.providers.get(root, []) if p not in excluded]
            if not via:
                why = (
                    "only excluded packages provide it"
                    if index.providers.get(root)
                    else "no package by that name"
                )
                raise AptError(f"cannot lock {root!r}: {why} in the apt indexes")
            root = via[0]
        choose(root)

    while queue:
        name = queue.pop(0)
        pkg = index.package(name)
        for field in ("pre-depends", "depends"):
            for alts in pkg.relations[field]:
                if any(satisfied(a) for a in alts):
                    continue
                pick = _first_satisfiable(index, alts, excluded, chosen)
                text = _rel_text(alts)
                if pick is None:
                    if all(a["name"] in excluded for a in alts):
                        warn(f"{name}: dependency '{text}' dropped (excluded)")
                        continue
                    have = [f"{a['name']} {index.version(a['name'])}" for a in alts if a["name"] in chosen]
                    extra = f" ({', '.join(have)} already chosen)" if have else ""
                    raise AptError(f"{name} {index.version(name)}: cannot satisfy dependency '{text}'{extra}")
                choose(pick)
    return tuple(index.entry(n) for n in sorted(chosen))


def _first_satisfiable(index: AptIndex, alts: list[dict], excluded: set[str], chosen: dict) -> str | None:
    for alt in alts:
        name = alt["name"]
        if name in excluded:
            continue
        if name in index and _satisfies(index.version(name), alt):
            return name
        # a virtual name: an unversioned dependency takes any provider, a versioned one only
        # a provider whose Provides carries a version that meets it; a chosen one first
        fits = [
            p
            for p, ver in index.providers.get(name, [])
            if p not in excluded
            and (alt.get("version") is None or (ver is not None and _satisfies(ver, alt)))
        ]
        if fits:
            return next((p for p in fits if p in chosen), fits[0])
    return None


# --- lock file rendering ---------------------------------------------------------------

LOCK_FIELDS = ("name", "version", "arch", "sha256", "filename", "size")


def _q(s: str) -> str:
    return '"' + s.replace("\\", "\\\\").replace('"', '\\"').replace("$", "\\$") + '"'


def render_lock(entries: Iterable[LockEntry], header: str = "") -> str:
    """The lock as a ``.recipe`` file binding ``debian_lock`` to a list of records, one
    record per line. This and ``parse_lock`` are the only places that know the syntax."""
    lines = [f"# {line}".rstrip() for line in header.splitlines()]
    lines.append("let debian_lock = [")
    for e in entries:
        lines.append(
            f"  {{ name = {_q(e.name)}, version = {_q(e.version)}, arch = {_q(e.arch)}, "
            f"sha256 = {_q(e.sha256)}, filename = {_q(e.filename)}, size = {e.size} }},"
        )
    lines.append("]")
    return "\n".join(lines) + "\n"


_RECORD = re.compile(r"\{([^{}]*)\}")
_PAIR = re.compile(r'([a-z0-9_]+)\s*[=:]\s*(?:"((?:[^"\\]|\\.)*)"|([0-9]+))')


def parse_lock(text: str) -> tuple[LockEntry, ...]:
    """Read back what ``render_lock`` writes (without the recipe evaluator, so shell
    fixtures can use it). Comments are ignored; each ``{...}`` is one entry."""
    text = re.sub(r"(?m)^\s*#.*$", "", text)
    out = []
    for m in _RECORD.finditer(text):
        fields: dict[str, str] = {}
        for key, s, n in _PAIR.findall(m.group(1)):
            fields[key] = n or re.sub(r"\\(.)", r"\1", s)
        missing = [k for k in LOCK_FIELDS if k not in fields]
        if missing:
            raise FormatError(f"lock record {m.group(0)[:80]!r} lacks {', '.join(missing)}")
        out.append(LockEntry(**{k: (int(fields[k]) if k == "size" else fields[k]) for k in LOCK_FIELDS}))
    if not out:
        raise FormatError("no lock records found (expected 'let debian_lock = [ { name = ..., ... } ]')")
    return tuple(out)
