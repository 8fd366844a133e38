"""``kiln registry verify --dir DIR``: check every byte a registry directory serves.

Clients verify what they download, so a corrupt blob on a registry or mirror is never
*used*; but nobody notices it either until a substituter falls back to building, and a
mirror sync does not re-read blobs of paths whose narinfo is unchanged (that is what
keeps it cheap). This is the operator's check, like ``kiln store verify`` for a store.

For every published narinfo (``<hash>.narinfo``): it must parse for this registry's
StoreDir and name its own hash part (and, with ``trusted`` keys, carry ``sigs_needed``
valid signatures); each copy of its compressed NAR (``blobs/sha256:<hex>`` and
``nar/<nix32>.nar.zst``; at least one must exist) must hash to FileHash at FileSize and
decompress to NarHash at NarSize, reading no further than those sizes. Blobs shared by
several narinfos are read once. Hashing runs ``jobs`` blobs at a time (hashlib and zstd
release the GIL).

``delete_bad`` unpublishes what failed: the narinfo (so clients get a miss, not a
corrupt download) and every copy of its blob that failed. The next ``kiln mirror sync``
(or ``kiln push``) then fetches both again, verified. Nothing that passed is touched.
"""

from __future__ import annotations

import concurrent.futures
import os
from dataclasses import dataclass

from kiln.store.errors import KilnError
from kiln.store.narinfo import NarInfo
from kiln.store.signing import PublicKey

from . import layout
from .backends import DirSource
from .progress import Progress
from .verify import NarVerifier, check_narinfo, expect

CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Problem:
    """What is wrong with one published path (``path`` is the narinfo key when the
    narinfo does not even parse)."""

    path: str
    what: str


@dataclass(frozen=True, slots=True)
class FsckReport:
    checked: int
    problems: tuple[Problem, ...]
    #: storage keys deleted (``delete_bad``)
    removed: tuple[str, ...]


def _check_blob(src: DirSource, key: str, info: NarInfo) -> str | None:
    """None if the object at ``key`` matches ``info``, else what is wrong."""
    f = src.storage.open(key)
    if f is None:
        return f"{key} vanished while being checked"
    ver = NarVerifier(max_nar_size=info.nar_size, max_file_size=info.file_size)
    try:
        with f:
            while chunk := f.read(CHUNK):
                ver.update(chunk)
        expect(key, ver.finish(), info.file_hash, info.file_size, info.nar_hash, info.nar_size)
    except (KilnError, OSError) as e:
        msg = str(e)
        return msg if key in msg else f"{key}: {msg}"
    return None


def verify_dir(
    src: DirSource,
    *,
    trusted: list[PublicKey] | None = None,
    sigs_needed: int = 0,
    delete_bad: bool = False,
    jobs: int | None = None,
    progress: bool | None = None,
) -> FsckReport:
    """Check the registry directory behind ``src`` (see the module docstring);
    ``progress``: a progress line on stderr (None: when it is a terminal)."""
    keys = sorted(k for k in src.storage.list() if k.endswith(".narinfo"))
    problems: dict[str, list[str]] = {}  # narinfo key -> problems
    names: dict[str, str] = {}  # narinfo key -> store path, once parsed
    # blob key -> (narinfo keys using it, a narinfo to check it against)
    blobs: dict[str, tuple[list[str], NarInfo]] = {}
    for key in keys:
        hash_part = key[: -len(".narinfo")]
        raw = src.storage.read(key)
        try:
            if raw is None:
                raise KilnError("vanished while being checked")
            info = check_narinfo(raw.decode(), src.store_dir, trusted or [], sigs_needed, hash_part)
        except (KilnError, UnicodeDecodeError) as e:
            problems.setdefault(key, []).append(f"narinfo: {e}")
            continue
        names[key] = info.path
        assert info.file_hash is not None
        present = [
            k
            for k in (layout.blob_key(info.file_hash), layout.nar_key(info.file_hash))
            if src.storage.exists(k)
        ]
        if not present:
            problems.setdefault(key, []).append(f"its compressed NAR {info.file_hash} is missing")
        for b in present:
            users, _ = blobs.setdefault(b, ([], info))
            users.append(key)
    bad_blobs: list[str] = []
    bar = Progress("verify", len(blobs), enabled=progress)
    with concurrent.futures.ThreadPoolExecutor(max_workers=jobs or os.cpu_count() or 1) as pool:
        futures = {pool.submit(_check_blob, src, b, info): b for b, (_, info) in blobs.items()}
        for fut in concurrent.futures.as_completed(futures):
            b = futures[fut]
            what = fut.result()
            bar.add(1, blobs[b][1].file_size)
            if what is not None:
                bad_blobs.append(b)
                for key in blobs[b][0]:
                    problems.setdefault(key, []).append(what)
    bar.done()
    removed: list[str] = []
    if delete_bad and problems:
        # the narinfo first: from then on clients get a miss, never a corrupt blob
        for key in sorted(problems):
            src.storage.delete(key)
            removed.append(key)
        for b in sorted(bad_blobs):
            src.storage.delete(b)
            removed.append(b)
    out = tuple(Problem(names.get(key, key), what) for key in sorted(problems) for what in problems[key])
    return FsckReport(len(keys), out, tuple(removed))
