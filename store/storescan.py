"""What lies in a store's directories besides what its rows describe, as GC and
``kiln store verify`` find it: entries named like store paths in the store dir, object
files, attestation directories, and the temp files of killed writers.

Invariant: each scan returns only entries whose names match what kiln itself makes
there (a store path base, ``<2 hex>/<64 hex>.nar.zst``, a writer's temp-file pattern):
the only entries GC may ever delete. Anything else a user or a misconfiguration put
beside them is never listed, so never touched.
"""

from __future__ import annotations

import os
import re
import time
from pathlib import Path
from typing import TYPE_CHECKING

from .errors import FormatError
from .hashes import Hash
from .locks import left_by_dead_writer
from .paths import StorePath

if TYPE_CHECKING:
    from .localstore import LocalStore

_CONFIG_TMP = re.compile(r"^\.config\.json\.(\d+)\.[0-9a-f]{8}\Z")
_LOG_TMP = re.compile(r"^\..+\.(\d+)\.tmp\Z")
#: ``lang/cache.py``'s ``.tmp-<pid>-<rand>`` (before the pid was in it: ``.tmp-<rand>``)
_EVAL_CACHE_TMP = re.compile(r"^\.tmp-(?:(\d+)-)?[^/]+\Z")


def _dead_writers_files_in(d: Path, pattern: re.Pattern) -> list[Path]:
    """Files in ``d`` named by ``pattern`` (group 1: the writer's pid, if the name has
    it) that a killed writer left (``locks.left_by_dead_writer``)."""
    try:
        entries = list(os.scandir(d))
    except (FileNotFoundError, NotADirectoryError):
        return []
    now = time.time()
    return [
        Path(e.path)
        for e in entries
        if (m := pattern.match(e.name)) is not None
        and left_by_dead_writer(e, int(m.group(1)) if m.group(1) else None, now)
    ]


def attestation_dirs(store: LocalStore) -> list[str]:
    """Hash parts that have an ``attestations/<hash part>/`` directory."""
    try:
        return sorted(
            e.name for e in os.scandir(store.root / "attestations") if e.is_dir(follow_symlinks=False)
        )
    except FileNotFoundError:
        return []


def stray_tree_names(store: LocalStore) -> list[str]:
    """Sorted names of the store dir's entries that are store path bases
    (``<32 nix32 chars>-<name>``): the only entries GC may ever delete there, whatever
    else a misconfiguration (a store dir overlapping the root's own entries) or a user
    put beside them. Registered or not: the caller subtracts the valid ones."""
    out = []
    for e in os.scandir(store.real_store):
        try:
            StorePath.parse_base(e.name, store.store_dir)
        except FormatError:
            continue
        out.append(e.name)
    return sorted(out)


def object_files(store: LocalStore) -> list[Path]:
    """The object files in ``objects/`` (``<2 hex>/<hex digest>.nar.zst``): the only
    entries GC may delete there; anything else a user put there is left alone."""
    out: list[Path] = []
    for sub in os.scandir(store.objects):
        if _SHARD.fullmatch(sub.name) and sub.is_dir(follow_symlinks=False):
            out.extend(
                Path(e.path)
                for e in os.scandir(sub.path)
                if _OBJECT.fullmatch(e.name) and e.name[:2] == sub.name
            )
    return out


_SHARD = re.compile(r"[0-9a-f]{2}")
_OBJECT = re.compile(r"[0-9a-f]{64}\.nar\.zst")


def used_objects(store: LocalStore, exclude: set[str]) -> set[str]:
    """Hex digests of the objects the rows of paths not in ``exclude`` use."""
    used = set()
    for path, fh in store.conn.execute("SELECT path, file_hash FROM paths"):
        if path not in exclude:
            used.add(Hash.parse(fh).hex)
    return used


def dead_writers_files(root: Path) -> list[Path]:
    """The small temp files of writers killed mid-write in the store at ``root``
    (``storeconfig.init_config``, build logs, the eval cache): told by their pid and age,
    not by a lock."""
    out = []
    for d, pattern in (
        (root, _CONFIG_TMP),
        (root / "logs", _LOG_TMP),
        (root / "eval-cache", _EVAL_CACHE_TMP),
    ):
        out.extend(_dead_writers_files_in(d, pattern))
    return out
