"""What a mirror sync must fetch and check, without re-reading what it verified before
(``mirror``).

Metadata (``update``): the same walk and checks as ``index.update`` — root chain,
timestamp, snapshot, index, each verified — except that a snapshot or index file DST
already holds with exactly the bytes (length and sha256) its verified parent names is
taken from DST instead of downloaded. When that index is the one the last sync
verified (``RECORD_KEY`` remembers its sha256, expiry and the root version it was
verified under) and the root has not changed, its signatures and shape are not checked
again (same bytes, same keys: same outcome) and it is not even parsed; its expiry still
is (freeze). A sync whose timestamp names the snapshot DST holds therefore fetches the
root probe and the timestamp and nothing else. The roots are published with the rest:
the one DST trusts (pinned on the first sync: ``<v>.root.json``), each rotated one
after it, and ``root.json``, so a client of the mirror walks the chain from its pinned
root there as at the source (roots older than the one DST pinned are not carried: the
mirror cannot verify them).

Paths (``Plan``): the old sync compared every local narinfo with the index. Now only
*candidates* are: paths whose entry differs between the index DST held and the new one
(an index diff), paths whose narinfo or attestation listing in DST changed since the
last sync (file stamps, ``dirstamps``: deleted by ``registry verify --delete-bad``,
replaced, edited), and paths the last sync could not stamp (written by it, or too
recent). Those stamps are checked one by one only when DST's top directory changed
since the last sync (a narinfo added, removed or replaced there changes it): a sync of
an unchanged index into an unchanged mirror reads nothing but its small record. A
candidate is then handled exactly as every path was before (its narinfo read and
compared with the index; fetched and verified if it differs), so nothing a sync takes is
checked less. With ``full`` (``kiln mirror sync --full``), every path is a candidate and
the index is downloaded and verified afresh, as before: what also finds a narinfo
edited in place or rotted on disk, which no stamp shows.

Trusted keys: the record also remembers the narinfo keys the sync trusted (``trusted``,
``PublicKey.to_text`` each). Every narinfo DST publishes passed a check against them
(one of them signed it; none needed when there were none). A sync that trusts a
superset of them needs no recheck of what it does not fetch; one that trusts a key set
that is not (a key dropped, or keys trusted where the last sync had none, or a record
without them, by an older kiln) must check every narinfo DST holds again
(``must_recheck``: the caller then plans as ``full`` does, without downloading the
index again).
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from . import dirstamps
from . import index as ix
from .layout import HASH_PART_RE
from .storage import Storage

if TYPE_CHECKING:
    from kiln.store.signing import PublicKey

RECORD_KEY = ".kiln/mirror-index.json"
STAMPS_KEY = ".kiln/mirror-stamps.json"


@dataclass(slots=True)
class Metadata:
    """The verified metadata of one sync: ``index`` is None when it is the index DST
    already holds (``unchanged``; ``index_bytes`` then are DST's)."""

    timestamp: dict[str, Any]
    index_version: int
    index_sha256: str
    index_expires: str
    index_bytes: bytes
    index: dict[str, Any] | None
    unchanged: bool
    #: to publish after the narinfos, in order (the index file only when fetched)
    files: list[tuple[str, bytes]] = field(default_factory=list)


def _local(storage: Storage, key: str, meta: dict[str, Any]) -> bytes | None:
    """DST's file ``key`` if it is exactly what ``meta`` (verified) names."""
    data = storage.read(key)
    if data is None or len(data) != meta["length"] or hashlib.sha256(data).hexdigest() != meta["sha256"]:
        return None
    return data


def load_record(storage: Storage) -> dict[str, Any] | None:
    data = storage.read(RECORD_KEY)
    try:
        rec = json.loads(data) if data else None
    except (ValueError, RecursionError):
        return None
    return rec if isinstance(rec, dict) else None


def must_recheck(rec: dict[str, Any] | None, trusted: Iterable[PublicKey]) -> bool:
    """Whether every narinfo DST holds must be checked against ``trusted`` (the keys this
    sync trusts) because the last successful sync (``rec``: its record) did not check them
    against a subset of those keys (see the module docstring)."""
    now = {k.to_text() for k in trusted}
    was = rec.get("trusted") if rec is not None else None
    if not now:
        return False  # (no signature required)
    return not isinstance(was, list) or not was or not set(was) <= now


def fewer_keys(rec: dict[str, Any] | None, trusted: Iterable[PublicKey]) -> str | None:
    """What to say when this sync trusts none of the keys the last successful sync
    (``rec``) required signatures by: a cron line that lost its ``--trusted-key`` then
    published unsigned paths without a word (documented, but silent). None otherwise."""
    was = rec.get("trusted") if rec is not None else None
    if not isinstance(was, list) or not was or trusted:
        return None
    names = ", ".join(sorted(str(k).split(":", 1)[0] for k in was))
    return (
        f"this sync requires no signature (no --trusted-key), where the last one required one by "
        f"{names}: narinfos are published unsigned if the source serves them so"
    )


async def update(
    fetch: Any, state: ix.TrustState, storage: Storage, rec: dict[str, Any] | None, full: bool = False
) -> Metadata:
    """``index.update``'s walk (see the module docstring), reusing DST's files."""
    now = ix.utcnow()
    ix.check_clock(state, now)
    # the roots from the one DST trusts (pinned on the first sync) on: a client of the
    # mirror walks the chain from the root it pinned, as from the source's
    files: list[tuple[str, bytes]] = [(f"index/{state.root['version']}.root.json", state.root_bytes)]
    while True:
        nxt = await fetch(f"index/{state.root['version'] + 1}.root.json")
        if nxt is None:
            break
        ix.verify_next_root(state, nxt)
        files.append((f"index/{state.root['version']}.root.json", nxt))
    files.append(("index/root.json", state.root_bytes))
    tb = await fetch("index/timestamp.json")
    if tb is None:
        raise ix.NoIndex("the source publishes no index (index/timestamp.json is missing)")
    ts = ix.verify_timestamp(state, tb, now)
    v = ts["meta"]["snapshot.json"]["version"]
    sb = None if full else _local(storage, f"index/{v}.snapshot.json", ts["meta"]["snapshot.json"])
    if sb is None:
        sb = await fetch(f"index/{v}.snapshot.json")
    if sb is None:
        raise ix.MixAndMatchError(f"timestamp names snapshot version {v}, which the source does not have")
    snap = ix.verify_snapshot(state, ts, sb, now)
    imeta = snap["meta"]["index.json"]
    ib = None if full else _local(storage, f"index/{v}.index.json", imeta)
    index: dict[str, Any] | None = None
    same = (
        ib is not None
        and rec is not None
        and rec.get("index_sha256") == imeta["sha256"]
        and rec.get("root_version") == state.root["version"]
        and isinstance(rec.get("index_expires"), str)
    )
    if same:
        assert rec is not None and ib is not None
        expires = rec["index_expires"]
        try:
            fresh = ix.parse_expiry(expires) > now
        except ValueError:
            fresh = same = False
        if same and not fresh:
            raise ix.FreezeError(f"index expired at {expires}; the source may be frozen")
    if not same:
        local = ib is not None
        if ib is None:
            ib = await fetch(f"index/{v}.index.json")
        if ib is None:
            raise ix.MixAndMatchError(f"snapshot names index version {v}, which the source does not have")
        index = ix.verify_index(state, snap, ib, now)
        expires = index["expires"]
        if not local:
            files.append((f"index/{v}.index.json", ib))
    files += [(f"index/{v}.snapshot.json", sb), ("index/snapshot.json", sb), ("index/timestamp.json", tb)]
    state.timestamp_version, state.snapshot_version = ts["version"], v
    assert ib is not None  # (DST's when ``same``, else fetched above)
    return Metadata(ts, imeta["version"], imeta["sha256"], expires, ib, index, same, files)


def _old_paths(storage: Storage, rec: dict[str, Any]) -> dict[str, Any] | None:
    """The path table of the index DST held (the one ``rec`` names), if it is still there."""
    v = rec.get("snapshot_version")
    data = storage.read(f"index/{v}.index.json") if isinstance(v, int) else None
    if data is None or hashlib.sha256(data).hexdigest() != rec.get("index_sha256"):
        return None
    return json.loads(data)["signed"]["paths"]


def _stamp(root: Path, h: str, names: set[str] | None) -> list[int] | None:
    try:
        nar = dirstamps.stamp_of(os.stat(root / f"{h}{dirstamps.NARINFO}"))
    except OSError:
        return None
    att = dirstamps.att_stamp(root, h, names if names is not None else {f"{h}.att"})
    return dirstamps.pack(nar, att)


@dataclass(slots=True)
class Plan:
    """The paths a sync checks (``candidates``, each with its stamp taken before it is
    read: ``before``) and what to remember afterwards (``finish``). ``paths`` is the new
    index's table, None when nothing needs it (an unchanged index, no candidate)."""

    paths: dict[str, Any] | None
    candidates: list[str]
    count: int
    clock: int | None = None
    before: dict[str, list[int] | None] = field(default_factory=dict)
    #: stamps of the other paths, still good (None: the stamps file stays as it is)
    kept: dict[str, Any] | None = None
    dir: list[int] | None = None
    #: how many narinfos DST holds that the index does not list, when known without
    #: another listing of DST (from a scan made here, or remembered: ``finish``)
    stale: int | None = None


def _listify(s: dirstamps.Stamp | None) -> list[int] | None:
    return list(s) if s is not None else None


def _check_all(storage: Storage, meta: Metadata) -> Plan:
    """Every path is a candidate (no usable record, or ``full``): the old sync."""
    paths = meta.index["paths"] if meta.index is not None else json.loads(meta.index_bytes)["signed"]["paths"]
    root = dirstamps.local_root(storage)
    if root is None:
        return Plan(paths, list(paths), len(paths), kept={})
    clock, d = dirstamps.fs_clock(root), dirstamps.dir_stamp(root)
    scanned, names = dirstamps.scan(root)
    before = {
        h: dirstamps.pack(scanned[h], dirstamps.att_stamp(root, h, names)) if h in scanned else None
        for h in paths
    }
    stale = len(_hash_parts(scanned) - paths.keys())
    return Plan(paths, list(paths), len(paths), clock, before, {}, _listify(d), stale)


def _hash_parts(scanned: dict[str, Any]) -> set[str]:
    """The stems of ``dirstamps.scan`` that are hash parts (narinfos a registry serves)."""
    return {h for h in scanned if HASH_PART_RE.match(h)}


def plan(storage: Storage, meta: Metadata, rec: dict[str, Any] | None, full: bool) -> Plan:
    """Which paths to check this sync (see the module docstring)."""
    root = dirstamps.local_root(storage)
    if root is None or rec is None or full:
        return _check_all(storage, meta)
    clock, d = dirstamps.fs_clock(root), _listify(dirstamps.dir_stamp(root))
    gate = rec.get("dir") is not None and d == rec["dir"]
    if meta.unchanged and gate and rec.get("pending") == 0 and isinstance(rec.get("paths"), int):
        # the same index, an untouched mirror
        stale = rec.get("stale") if isinstance(rec.get("stale"), int) else None
        return Plan(None, [], rec["paths"], clock, dir=rec["dir"], stale=stale)
    srec = dirstamps.load(storage, STAMPS_KEY)
    if srec is None or srec.get("index_sha256") != rec.get("index_sha256"):
        return _check_all(storage, meta)
    stamps: dict[str, Any] = srec["stamps"]
    old = None if meta.unchanged else _old_paths(storage, rec)
    if not meta.unchanged and old is None:
        return _check_all(storage, meta)
    names: set[str] | None = None
    current: dict[str, list[int] | None] = {}
    held: set[str] | None = None
    if gate:  # no narinfo added, removed or replaced in DST: only the unstamped ones
        changed = {h for h, s in stamps.items() if s is None}
    else:
        scanned, names = dirstamps.scan(root)
        held = _hash_parts(scanned)
        for h in stamps:
            current[h] = (
                dirstamps.pack(scanned[h], dirstamps.att_stamp(root, h, names)) if h in scanned else None
            )
        changed = {h for h, s in stamps.items() if s is None or current[h] != s}
    if meta.unchanged:
        cands = changed
        paths = json.loads(meta.index_bytes)["signed"]["paths"] if cands else None
        if paths is not None:
            cands |= paths.keys() - stamps.keys()  # (none: the record lists every path)
    else:
        assert meta.index is not None and old is not None
        paths = meta.index["paths"]
        cands = {h for h, e in paths.items() if old.get(h) != e or h not in stamps} | (changed & paths.keys())
    before = {h: current[h] if h in current else _stamp(root, h, names) for h in cands}
    universe = paths.keys() if paths is not None else stamps.keys()
    kept = {h: stamps[h] for h in universe if h not in cands}
    stale = len(held - universe) if held is not None else None
    return Plan(paths, sorted(cands), len(universe), clock, before, kept, rec["dir"] if gate else d, stale)


def finish(
    storage: Storage,
    meta: Metadata,
    p: Plan,
    written: set[str],
    root_version: int,
    stale: int | None = None,
    trusted: Iterable[PublicKey] = (),
) -> None:
    """Remember, after a successful sync, which index DST holds, the stamps of the
    paths (those this sync rewrote, or could not stamp settled, are read next time),
    how many narinfos DST holds that the index does not list (``stale``) and the keys
    every narinfo it publishes was checked against (``trusted``: ``must_recheck``)."""
    pending = 0
    if p.kept is not None:
        stamps = dict(p.kept)
        for h in p.candidates:
            s = p.before.get(h)
            ok = (
                h not in written
                and s is not None
                and dirstamps.settled(s[:4], p.clock)
                and (len(s) == 4 or dirstamps.settled(s[4:], p.clock))
            )
            stamps[h] = s if ok else None
        pending = sum(1 for s in stamps.values() if s is None)
        dirstamps.save(storage, STAMPS_KEY, {"index_sha256": meta.index_sha256, "stamps": stamps})
    settled_dir = p.dir is not None and dirstamps.settled(p.dir, p.clock)
    rec = {
        "index_sha256": meta.index_sha256,
        "snapshot_version": meta.timestamp["meta"]["snapshot.json"]["version"],
        "index_version": meta.index_version,
        "index_expires": meta.index_expires,
        "root_version": root_version,
        "paths": p.count,
        "pending": pending,
        # the top directory's stamp vouches only if this sync put nothing there
        "dir": p.dir if settled_dir and not written else None,
        "stale": stale,
        "trusted": sorted({k.to_text() for k in trusted}),
    }
    dirstamps.save(storage, RECORD_KEY, rec)
