"""Publishing and rotating a registry's signed index (the writer side of ``index``).

``publish_index`` builds the path table and writes index → snapshot → timestamp
atomically in that order (see ``index``). It is called by ``kiln registry
publish-index`` and by the server after a push when it holds an index key. Each path's
entry also lists its attestations (``attestations``: kind → sha256 of the file, from
``<h>.att/index.json``) when it has any, so the signed index covers them and a mirror
can verify every attestation file it copies. The table is the previous index's plus
what changed since (``indexscan``: only changed narinfos and listings are read), which
is exactly the table ``collect_paths`` builds from scratch by reading them all. After
publishing, generations no reader can still fetch are removed (``indexprune``).
``init_root`` creates root v1 (all roles on one key); ``rotate_root`` writes root v+1
signed by the old and the new root keys.
"""

from __future__ import annotations

import datetime as dt
import hashlib
import json
from typing import Any

from kiln.store.errors import KilnError
from kiln.store.signing import SecretKey

from . import index as ix
from . import indexbuild, indexclock, indexprune, indexscan, layout
from .dirlock import INDEX_LOCK, dir_lock
from .layout import CACHE_INFO, cache_info_of
from .storage import Storage

#: a timestamp without ``signed_at`` (signed before it existed) expiring later than a
#: publisher's lifetime from now by more than this was signed with a longer lifetime
#: (``refresh_due``); the slack covers the expiry's one-second resolution and clocks of
#: two publishers as far apart as ``indexclock.SKEW`` allows (with 5 minutes, two whose
#: clocks differed by more re-signed after each other)
LIFETIME_SLACK = indexclock.SKEW


def narinfo_entry(text: bytes, key: str = "narinfo") -> tuple[str, dict[str, Any]]:
    """(hash part, index entry) for one narinfo file (cheap line parse); ``KilnError``
    naming ``key`` for a file that is not a narinfo (nothing is published then: a signed
    index must not silently leave out a path the directory serves)."""
    fields: dict[str, str] = {}
    try:
        lines = text.decode().splitlines()
    except UnicodeDecodeError as e:
        raise KilnError(f"{key} is not a narinfo: not UTF-8 (byte {e.start})") from None
    for line in lines:
        k, sep, v = line.partition(": ")
        if sep and k not in fields:
            fields[k] = v
    path, size = fields.get("StorePath", ""), fields.get("FileSize", "0")
    hash_part = path.rsplit("/", 1)[-1][:32]
    if "/" not in path or not layout.is_hash_part(hash_part) or not size.isdigit():
        raise KilnError(f"{key} is not a narinfo (no valid StorePath or FileSize); fix or remove it")
    return hash_part, {
        "path": path,
        "narinfo_sha256": hashlib.sha256(text).hexdigest(),
        "file_hash": fields.get("FileHash", ""),
        "file_size": int(size),
        "url": fields.get("URL", ""),
    }


def collect_paths(storage: Storage) -> dict[str, dict[str, Any]]:
    """The path table from scratch: every narinfo and listing read (``indexscan.collect``
    reads only what changed, and must give the same)."""
    from .attest_transfer import listing

    out: dict[str, dict[str, Any]] = {}
    for key in storage.list(""):
        if key.endswith(".narinfo"):
            data = storage.read(key)
            if data:
                h, entry = narinfo_entry(data, key)
                kinds = listing(storage, h)
                if kinds:
                    entry["attestations"] = kinds
                out[h] = entry
    return out


def load_signed(storage: Storage, key: str) -> dict[str, Any] | None:
    data = storage.read(key)
    return json.loads(data)["signed"] if data else None


def init_root(storage: Storage, key: SecretKey, now: dt.datetime | None = None) -> dict[str, Any]:
    """Create root v1 (signed at ``now``, default the clock) if there is none; return the
    current root."""
    cur = load_signed(storage, "index/root.json")
    if cur is not None:
        return cur
    pub = key.public()
    root = indexbuild.make_root(1, {r: [pub] for r in ix.ROLES}, now or ix.utcnow())
    data = ix.sign_envelope(root, [key])
    storage.put_bytes("index/1.root.json", data)
    storage.put_bytes("index/root.json", data)
    return root


def rotate_root(storage: Storage, old_key: SecretKey, new_key: SecretKey) -> int:
    """Root v+1 moving every role to ``new_key``; signed by old and new key. Returns v+1.
    No clock check (``indexclock``): the operator's rotation, with a correct clock, is
    the way out when a publisher whose clock was ahead signed the current root."""
    with dir_lock(storage, INDEX_LOCK):
        return _rotate_root(storage, old_key, new_key)


def _rotate_root(storage: Storage, old_key: SecretKey, new_key: SecretKey) -> int:
    cur = load_signed(storage, "index/root.json")
    if cur is None:
        raise KilnError("registry has no index root yet; run publish-index first")
    if ix.key_id(old_key.public()) not in cur["roles"]["root"]["keyids"]:
        raise KilnError(f"key {old_key.name} is not a root key of this registry")
    v = cur["version"] + 1
    root = indexbuild.make_root(v, {r: [new_key.public()] for r in ix.ROLES}, ix.utcnow())
    data = ix.sign_envelope(root, [old_key, new_key])
    storage.put_bytes(f"index/{v}.root.json", data)
    storage.put_bytes("index/root.json", data)
    return v


def publish_index(
    storage: Storage,
    key: SecretKey,
    *,
    full: bool = False,
    timestamp_hours: float | None = None,
    min_version: int = 0,
    now: dt.datetime | None = None,
) -> indexbuild.Published:
    """Sign and publish a new index generation for everything the storage holds (with
    ``full``, every narinfo read again rather than only those that changed: the result
    is the same); the timestamp is valid ``timestamp_hours`` (default
    ``indexbuild.TIMESTAMP_HOURS``; ``ValueError`` outside its bounds); no index, snapshot
    or timestamp version is below ``min_version`` (after restoring from a backup). ``now``
    (default: the clock) is the signing time; ``KilnError`` and nothing signed when it is
    wrong (``clock_problem``). Two publishers (server workers, the CLI beside a server)
    would both read version v and write different v+1 files over each other: the
    directory's index lock serialises them."""
    with dir_lock(storage, INDEX_LOCK):
        return _publish_index(storage, key, full, timestamp_hours, min_version, now or ix.utcnow())


def clock_problem(storage: Storage, now: dt.datetime | None = None) -> str | None:
    """Why this publisher, its clock reading ``now``, must not sign the index of
    ``storage`` (``indexclock.publisher_problem``: its clock is behind the root's or the
    current timestamp's signing time, or the timestamp expires further ahead than any
    publisher signs), or None."""
    return indexclock.publisher_problem(
        load_signed(storage, "index/root.json"),
        load_signed(storage, "index/timestamp.json"),
        now or ix.utcnow(),
    )


def refresh_due(
    storage: Storage, every: float, now: dt.datetime | None = None, *, hours: float | None = None
) -> bool:
    """Whether a publisher holding the key, which signs timestamps valid ``hours``
    (default ``indexbuild.TIMESTAMP_HOURS``) and wants them re-signed every ``every``
    seconds, should re-sign now (``publish_index``, which also renews an index about to
    expire): when the timestamp was signed ``every`` seconds ago or more (it expires
    within ``hours`` less ``every``), or when it is valid longer than ``hours`` from now
    (signed with a longer lifetime: ``kiln registry publish-index --timestamp-hours``, or
    this publisher before its lifetime was shortened: by its ``signed_at``, or, signed
    before that field, by its expiry), so the expiry served follows the publisher's
    lifetime. False while the registry has no index (a server does not create one on its
    own), and while ``clock_problem`` says this publisher's clock must not sign (a
    timestamp valid longer than expected is then not a lifetime to follow)."""
    ts = load_signed(storage, "index/timestamp.json")
    if ts is None:
        return False
    now = now or ix.utcnow()
    if clock_problem(storage, now) is not None:
        return False  # signing would fail: the server says why (``indexapi``), and keeps it
    life = dt.timedelta(hours=indexbuild.TIMESTAMP_HOURS if hours is None else hours)
    if indexbuild.expires_within(ts.get("expires"), now, life - dt.timedelta(seconds=every)):
        return True
    try:
        signed_life = ix.parse_expiry(ts["expires"]) - ix.parse_expiry(ts["signed_at"])
    except (KeyError, TypeError, ValueError):
        return not indexbuild.expires_within(ts.get("expires"), now, life + LIFETIME_SLACK)
    return abs(signed_life - life) > dt.timedelta(seconds=1)


def renew_root(storage: Storage, root: dict[str, Any], key: SecretKey, now: dt.datetime) -> dict[str, Any]:
    """``root`` as it stands, or, when it expires within ``ROOT_RENEW_DAYS`` and ``key``
    alone may sign roots (a root key, threshold 1), root v+1 with the same keys and roles
    and a new expiry, written as a rotation is. A root that needs more signatures is
    left to ``kiln registry rotate-root`` (docs/registry.md)."""
    spec = root["roles"]["root"]
    if (
        not indexbuild.expires_within(root.get("expires"), now, dt.timedelta(days=indexbuild.ROOT_RENEW_DAYS))
        or ix.key_id(key.public()) not in spec["keyids"]
        or spec["threshold"] != 1
    ):
        return root
    new = {**root, "version": root["version"] + 1, "expires": ix.expiry(now, days=indexbuild.ROOT_DAYS)}
    data = ix.sign_envelope(new, [key])  # by the old root's key and the new one's: the same
    storage.put_bytes(f"index/{new['version']}.root.json", data)
    storage.put_bytes("index/root.json", data)
    return new


def index_key_problem(storage: Storage, key: SecretKey) -> str | None:
    """Why ``key`` cannot sign this registry's index (``root_key_problem`` of its current
    root), or None (it can, or the registry has no root yet: the first publish makes one
    with it)."""
    root = load_signed(storage, "index/root.json")
    return None if root is None else root_key_problem(root, key)


def root_key_problem(root: dict[str, Any], key: SecretKey) -> str | None:
    """Why ``key`` cannot sign an index under ``root`` (it does not name it for every role:
    the root was rotated to another key by ``kiln registry rotate-root``), or None."""
    kid = ix.key_id(key.public())
    roles = [r for r in ("timestamp", "snapshot", "index") if kid not in root["roles"][r]["keyids"]]
    if not roles:
        return None
    return f"key {key.name} is not a {'/'.join(roles)} key of this registry's root v{root['version']}"


def _publish_index(
    storage: Storage,
    key: SecretKey,
    full: bool = False,
    timestamp_hours: float | None = None,
    min_version: int = 0,
    now: dt.datetime | None = None,
) -> indexbuild.Published:
    now = now or ix.utcnow()
    prev_ts = load_signed(storage, "index/timestamp.json")
    problem = indexclock.publisher_problem(load_signed(storage, "index/root.json"), prev_ts, now)
    if problem is not None:
        raise KilnError(f"cannot sign the index: {problem}")
    prev_paths = prev_expires = prev_sha = None
    if prev_ts:
        data = storage.read(f"index/{prev_ts['meta']['snapshot.json']['version']}.index.json")
        idx = json.loads(data)["signed"] if data else None
        prev_paths = idx["paths"] if idx else None
        prev_expires = idx.get("expires") if idx else None
        prev_sha = hashlib.sha256(data).hexdigest() if data else None
    # first: a directory that cannot be indexed gets no root
    col = indexscan.collect(storage, prev_paths, prev_sha, full=full)
    root = renew_root(storage, init_root(storage, key, now), key, now)
    problem = root_key_problem(root, key)
    if problem is not None:
        raise KilnError(problem)
    info = storage.read(CACHE_INFO)
    store_dir = cache_info_of(info, "the registry").get("StoreDir", "") if info else ""
    pub = indexbuild.build_metadata(
        col.paths,
        store_dir,
        key,
        prev_timestamp=prev_ts,
        prev_index_paths=prev_paths,
        root_version=root["version"],
        prev_index_expires=prev_expires,
        timestamp_hours=timestamp_hours,
        min_version=min_version,
        now=now,
    )
    for k, data in pub.files:
        storage.put_bytes(k, data)
    written = dict(pub.files).get(f"index/{pub.index_version}.index.json")
    current_sha = hashlib.sha256(written).hexdigest() if written is not None else prev_sha
    if current_sha is not None:
        indexscan.remember(storage, col, current_sha)
    indexprune.prune(storage, pub.index_version)
    return pub
