"""Reading the machine's apt sources: archive URLs, suites and the keys each is signed by.

Theory of operation
-------------------
kiln never writes an archive host into the repository: where ``debian:`` sources are
downloaded from (``archive_bases``) and which keys sign an archive's ``Release`` files
(``SourceEntry.signed_by``, used by ``aptverify``) are read at run time from the
machine's apt sources, in both of apt's formats: deb822 stanzas in
``/etc/apt/sources.list.d/*.sources`` and one-line ``deb [opt=val ...] URI suite comp...``
in ``/etc/apt/sources.list`` and ``sources.list.d/*.list``. A stanza with
``Enabled: no`` is skipped; an unreadable file is skipped (it is apt's problem, and must
not break a lock or a fetch).

``list_prefix`` is apt's ``URItoFileName``: the name prefix apt gives the files it keeps
in ``/var/lib/apt/lists`` for one suite of one archive, which is how a downloaded index
is matched back to the source (and so the keys) it came from.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

APT_SOURCES_LIST = Path("/etc/apt/sources.list")
APT_SOURCES_DIR = Path("/etc/apt/sources.list.d")


@dataclass(frozen=True)
class SourceEntry:
    """One stanza (or one line) of apt's sources. ``signed_by`` is the ``Signed-By``
    value split into keyring paths, or one inline armored key block; empty when the
    source names none (apt then trusts its global keyrings)."""

    types: tuple[str, ...]
    uris: tuple[str, ...]
    suites: tuple[str, ...]
    signed_by: tuple[str, ...] = ()


def _split_signed_by(value: str) -> tuple[str, ...]:
    value = value.strip()
    if "-----BEGIN PGP PUBLIC KEY BLOCK-----" in value:
        # deb822 allows the key itself; its lines come indented, an empty one as " ."
        lines = [ln.strip() for ln in value.splitlines()]
        return ("\n".join("" if ln == "." else ln for ln in lines),)
    return tuple(p for p in re.split(r"[,\s]+", value) if p)


def _deb822_sources(path: Path) -> Iterator[SourceEntry]:
    from debian.deb822 import Deb822

    with open(path, encoding="utf-8") as f:
        for para in Deb822.iter_paragraphs(f, use_apt_pkg=False):
            if para.get("Enabled", "yes").strip().lower() == "no":
                continue
            yield SourceEntry(
                tuple(para.get("Types", "").split()),
                tuple(para.get("URIs", "").split()),
                tuple(para.get("Suites", "").split()),
                _split_signed_by(para.get("Signed-By", "")),
            )


def _one_line_sources(path: Path) -> Iterator[SourceEntry]:
    for line in path.read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if not line:
            continue
        # "deb [opt=val ...] URI suite comp..." — options are bracketed
        options = " ".join(re.findall(r"\[([^\]]*)\]", line))
        words = re.sub(r"\[[^\]]*\]", " ", line).split()
        if len(words) < 2:
            continue
        signed_by: tuple[str, ...] = ()
        for opt in options.split():
            key, _, value = opt.partition("=")
            if key.lower() == "signed-by":
                signed_by = _split_signed_by(value)
        yield SourceEntry((words[0],), (words[1],), tuple(words[2:3]), signed_by)


def read_sources(
    sources_dir: Path = APT_SOURCES_DIR, sources_list: Path = APT_SOURCES_LIST
) -> list[SourceEntry]:
    """Every enabled entry of the machine's apt sources, in apt's order (sources.list,
    then sources.list.d's ``*.sources``, then its ``*.list``, each sorted by name)."""
    files: list[tuple[Path, bool]] = []
    if sources_list.is_file():
        files.append((sources_list, False))
    if sources_dir.is_dir():
        files += [(p, True) for p in sorted(sources_dir.glob("*.sources"))]
        files += [(p, False) for p in sorted(sources_dir.glob("*.list"))]
    out: list[SourceEntry] = []
    for path, deb822 in files:
        try:
            out += list(_deb822_sources(path) if deb822 else _one_line_sources(path))
        except (OSError, UnicodeDecodeError):
            continue  # an unreadable sources file is apt's problem, not a lock-breaker
    return out


def archive_bases(
    kind: str = "deb", sources_dir: Path = APT_SOURCES_DIR, sources_list: Path = APT_SOURCES_LIST
) -> list[str]:
    """Base URLs (no trailing slash) of the configured archives of type ``kind``, in
    configuration order, without duplicates. Only http(s) and file URIs are kept: those
    the fetcher speaks (an ``ftp:`` archive would only add a source bound to fail, see
    ``kiln.store.fetch``; ``mirror+http:``, ``tor+http:`` and the like need apt's own
    methods)."""
    found: list[str] = []
    for entry in read_sources(sources_dir, sources_list):
        if kind not in entry.types:
            continue
        for uri in entry.uris:
            uri = uri.rstrip("/")
            if re.match(r"^(https?|file):", uri) and uri not in found:
                found.append(uri)
    return found


# the characters apt's URItoFileName quotes as %xx (besides controls, space and non-ASCII)
_QUOTED = frozenset(b'\\|{}[]<>"^~_=!@#$%^&*')


def list_prefix(uri: str, suite: str) -> str:
    """The file-name prefix apt gives the lists of ``suite`` of the archive at ``uri``
    (``http://deb.debian.org/debian`` + ``bookworm`` →
    ``deb.debian.org_debian_dists_bookworm_``), as apt's ``URItoFileName``: the URL
    without scheme and credentials (up to the last ``@`` of the host part), an IPv6
    host without its brackets, quoted byte by byte (UTF-8), with ``/`` turned into
    ``_``. A flat repository's suite ends with ``/`` (``./``) and is joined to the URL
    directly, as apt does."""
    rest = re.sub(r"^[A-Za-z][A-Za-z0-9+.-]*:(//)?", "", uri)
    host, slash, path = rest.partition("/")
    host = host.rsplit("@", 1)[-1].replace("[", "").replace("]", "")
    rest = (host + slash + path).rstrip("/") + "/"
    rest += suite if suite.endswith("/") else f"dists/{suite}/"
    quoted = "".join(
        f"%{b:02x}" if b in _QUOTED or b <= 0x20 or b >= 0x7F else chr(b) for b in rest.encode("utf-8")
    )
    return quoted.replace("/", "_")


def signed_by_parts(signed_by: tuple[str, ...]) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """A ``Signed-By`` split as apt reads it: (keyring files and inline key blocks, key
    fingerprints). An item that is not an absolute path or a key block is a fingerprint
    (upper case; a trailing ``!`` kept: that exact key, not its primary's subkeys)."""
    files = tuple(k for k in signed_by if k.startswith("/") or "\n" in k)
    fingerprints = tuple(k.upper() for k in signed_by if not (k.startswith("/") or "\n" in k))
    return files, fingerprints
