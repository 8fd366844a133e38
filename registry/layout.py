"""Names inside a registry: the one place that knows how keys (relative paths) are spelled.

A registry is a flat key space that is also a plain directory any static web server can
serve read-only::

    nix-cache-info                      StoreDir / WantMassQuery / Priority
    <hashpart>.narinfo                  Nix narinfo text (Compression: zstd, URL: nar/..., Sig: ...)
    nar/<nix32 filehash>.nar.zst        the zstd-compressed NAR
    blobs/sha256:<hex filehash>         the same bytes (a hard link), addressed by digest
    <hashpart>.att/<kind>.dsse.json     one DSSE attestation of the path (kind: provenance,
                                        sbom, vsa-<keyid16>), see ``attest_transfer``
    <hashpart>.att/index.json           listing {"kinds": {kind: sha256 of the file}}
    index/root.json, index/<v>.root.json            signed root metadata (key rotation chain)
    index/timestamp.json, index/<v>.snapshot.json   signed freshness metadata
    index/<v>.index.json                             signed list of every published path
    .kiln/...                           private server state (token hashes); never served

Only zstd: a narinfo is served only with ``Compression: zstd`` (``served_narinfo``), and
an upload of another file Nix writes (``nar/<nix32>.nar.xz`` and other compressions,
``<hash>.ls`` listings) is refused with a reason (``refused_upload``), not a 404.

Invariants: every key produced or accepted here matches one of the regular expressions
below, so a key can never escape the registry directory (no ``..``, no absolute paths,
no hidden files outside ``.kiln``), and a parsed key tells what kind of object it names.
"""

from __future__ import annotations

import re

from kiln.store.errors import KilnError
from kiln.store.hashes import Hash

CACHE_INFO = "nix-cache-info"
PRIVATE_DIR = ".kiln"

HASH_PART_RE = re.compile(r"^[0-9a-df-np-sv-z]{32}\Z")
_NARINFO_RE = re.compile(r"^([0-9a-df-np-sv-z]{32})\.narinfo\Z")
_NAR_RE = re.compile(r"^nar/([0-9a-df-np-sv-z]{52})\.nar\.zst\Z")
_BLOB_RE = re.compile(r"^blobs/sha256:([0-9a-f]{64})\Z")
_INDEX_RE = re.compile(r"^index/(root|timestamp|snapshot|[1-9][0-9]{0,9}\.(?:root|snapshot|index))\.json\Z")
_ATT_RE = re.compile(r"^([0-9a-df-np-sv-z]{32})\.att/(?:[a-z0-9][a-z0-9_-]{0,63}\.dsse|index)\.json\Z")
_ATT_DIR_RE = re.compile(r"^([0-9a-df-np-sv-z]{32})\.att/?\Z")
#: what ``nix copy --to`` writes that kiln does not store: a NAR in another compression
#: (xz, Nix's default; bzip2; none: ``.nar``), a file listing (``write-nar-listing=true``)
_FOREIGN_NAR_RE = re.compile(r"^nar/[0-9a-df-np-sv-z]{52}\.nar(?:\.[A-Za-z0-9]{1,8})?\Z")
_LISTING_RE = re.compile(r"^[0-9a-df-np-sv-z]{32}\.ls\Z")
#: how a zstd narinfo spells it (kiln and Nix render ``Compression`` as the third line)
_ZSTD_LINE = b"\nCompression: zstd\n"
_COMPRESSION_RE = re.compile(rb"(?:\A|\n)Compression: ([^\n]*)")
#: how to make a Nix binary cache kiln serves and reads
ZSTD_HINT = (
    "re-create it in a new, empty directory with nix copy --to 'file://NEWDIR?compression=zstd' "
    "(nix copy skips a path whose narinfo is there already)"
)
ATT_SUFFIX = ".dsse.json"
ATT_LISTING = "index.json"

#: ``GET narinfo-closure/<h>[,<h>...]`` (kiln servers, ``closureapi``): the narinfos of
#: the closure of at most ``CLOSURE_ROOTS`` paths, as far as one answer holds them
CLOSURE_PREFIX = "narinfo-closure/"
CLOSURE_ROOTS = 64
_CLOSURE_RE = re.compile(r"^narinfo-closure/([0-9a-df-np-sv-z]{32}(?:,[0-9a-df-np-sv-z]{32}){0,63})\Z")


def closure_key(hash_parts: list[str]) -> str:
    """The key of the closure answer for ``hash_parts`` (1 to ``CLOSURE_ROOTS`` of them)."""
    assert 0 < len(hash_parts) <= CLOSURE_ROOTS
    return CLOSURE_PREFIX + ",".join(hash_parts)


def parse_closure_key(key: str) -> list[str] | None:
    """The hash parts a ``closure_key`` names, or None if ``key`` is not one."""
    m = _CLOSURE_RE.match(key)
    return m.group(1).split(",") if m else None


#: The narinfos of one ``POST /upload-batch`` total at most this many bytes (the server
#: holds them in memory until the batch is committed; each is at most
#: ``narinfo.MAX_SIZE``). Clients cut their batches to fit (``push.narinfo_slices``).
UPLOAD_BATCH_NARINFO_BYTES = 64 << 20


def narinfo_key(hash_part: str) -> str:
    return f"{hash_part}.narinfo"


def nar_key(file_hash: Hash) -> str:
    """``nar/<nix32>.nar.zst`` — the URL a narinfo advertises."""
    return f"nar/{file_hash.nix32}.nar.zst"


def blob_key(file_hash: Hash) -> str:
    """``blobs/sha256:<hex>`` — the same bytes addressed the way OCI tools spell digests."""
    return f"blobs/sha256:{file_hash.hex}"


def att_key(hash_part: str, kind: str) -> str:
    """``<hashpart>.att/<kind>.dsse.json`` — one attestation of a path."""
    return f"{hash_part}.att/{kind}{ATT_SUFFIX}"


def att_listing_key(hash_part: str) -> str:
    """``<hashpart>.att/index.json`` — the kinds a path has, with each file's sha256."""
    return f"{hash_part}.att/{ATT_LISTING}"


def parse_att_listing(body: bytes | None) -> dict[str, str]:
    """``{kind: sha256}`` from a ``<h>.att/index.json`` body; {} for a missing, empty or
    malformed one (the listing is a convenience: each file is checked on its own)."""
    if not body:
        return {}
    import json

    try:
        kinds = json.loads(body).get("kinds", {})
    except (ValueError, AttributeError, RecursionError):
        return {}
    if not isinstance(kinds, dict):
        return {}
    return {k: v for k, v in kinds.items() if isinstance(k, str) and isinstance(v, str)}


def att_kind_of_key(key: str) -> str | None:
    """The attestation kind an ``att`` key names, or None for the listing."""
    name = key.rsplit("/", 1)[1]
    return name[: -len(ATT_SUFFIX)] if name.endswith(ATT_SUFFIX) else None


def is_hash_part(text: str) -> bool:
    return bool(HASH_PART_RE.match(text))


def parse_key(key: str) -> tuple[str, str]:
    """Classify a public key. Returns ``(kind, arg)`` with kind one of ``cache-info``,
    ``narinfo`` (arg: hash part), ``nar`` (arg: nix32 file hash), ``blob`` (arg: hex),
    ``index`` (arg: file name), ``att`` (arg: hash part; an attestation file or the
    listing), ``att-dir`` (arg: hash part; ``<h>.att/``, answered with the listing), or
    ``("", "")`` when the key is not a registry object (callers answer 404 / 400)."""
    if key == CACHE_INFO:
        return "cache-info", ""
    m = _ATT_DIR_RE.match(key)
    if m:
        return "att-dir", m.group(1)
    for kind, rx in (("narinfo", _NARINFO_RE), ("nar", _NAR_RE), ("blob", _BLOB_RE), ("att", _ATT_RE)):
        m = rx.match(key)
        if m:
            return kind, m.group(1)
    m = _INDEX_RE.match(key)
    if m:
        return "index", m.group(1) + ".json"
    return "", ""


def narinfo_compression(body: bytes) -> str:
    """The ``Compression`` a narinfo's bytes give (``bzip2`` when absent, as Nix and
    ``narinfo.parse`` read it); a cheap scan, no parse."""
    if _ZSTD_LINE in body:
        return "zstd"
    m = _COMPRESSION_RE.search(body)
    return m.group(1).decode("utf-8", "replace").strip() if m else "bzip2"


def served_narinfo(body: bytes) -> bool:
    """Whether a server serves this narinfo: only a zstd one names a file it serves
    (``nar/<nix32>.nar.zst``); any other would answer 200 for the narinfo and 404 for its
    NAR, which makes Nix fail instead of trying its next substituter."""
    return narinfo_compression(body) == "zstd"


def refused_upload(key: str) -> tuple[int, str] | None:
    """``(status, reason)`` for a key ``nix copy --to http://...`` uploads that kiln does not
    store (a NAR in another compression: 415; a ``.ls`` listing: 400), else None (the key
    is a registry object, or not one at all: 404)."""
    if _FOREIGN_NAR_RE.match(key) and not _NAR_RE.match(key):
        return 415, (
            f"kiln stores only zstd NARs (nar/<nix32>.nar.zst) and their narinfos, not /{key}: upload "
            "with nix copy --to 'http://...?compression=zstd'"
        )
    if _LISTING_RE.match(key):
        return 400, (
            f"kiln stores no NAR listings (/{key}): upload with write-nar-listing=false (Nix's default) "
            "and compression=zstd"
        )
    return None


def file_hash_of_key(kind: str, arg: str) -> Hash:
    """The sha256 a ``nar`` or ``blob`` key promises its bytes hash to."""
    if kind == "nar":
        return Hash.parse(arg, "sha256")
    if kind == "blob":
        return Hash("sha256", bytes.fromhex(arg))
    raise ValueError(f"{kind} keys carry no digest")


def cache_info_text(store_dir: str, priority: int = 40, want_mass_query: bool = True) -> str:
    """The ``nix-cache-info`` file body."""
    return f"StoreDir: {store_dir}\nWantMassQuery: {int(want_mass_query)}\nPriority: {priority}\n"


def cache_info_of(data: bytes, where: str) -> dict[str, str]:
    """``parse_cache_info`` of a ``nix-cache-info`` file's bytes; ``KilnError`` naming
    ``where`` if they are not UTF-8 (no binary cache writes such a file)."""
    try:
        return parse_cache_info(data.decode())
    except UnicodeDecodeError as e:
        raise KilnError(f"{where}: {CACHE_INFO} is not UTF-8 (byte {e.start}): not a registry") from None


def parse_cache_info(text: str) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in text.splitlines():
        k, sep, v = line.partition(":")
        if sep:
            out[k.strip()] = v.strip()
    return out
