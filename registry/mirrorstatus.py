"""``kiln mirror status DIR``: what a mirror holds and whether it is still fresh, read from
the directory alone (no network, nothing written).

Sources, all written by ``kiln mirror sync`` (``mirror``):

- ``.kiln/mirror-state.json``: the trusted root (the one pinned on the first sync, or
  the latest the chain was walked to), the highest timestamp and snapshot versions
  seen, and, since syncs record them, the source (credentials hidden) and the time the
  last successful sync finished (``mirror.state_record``; absent for a mirror last
  synced by an older kiln);
- ``.kiln/mirror-index.json`` (``mirrorplan.finish``): how many paths the index lists
  and how many narinfos the mirror holds that it does not (``stale``);
- ``index/timestamp.json``: the source's signed timestamp as the mirror republishes it;
- ``.kiln/mirror-failure.json`` (``mirrorfailure``): when and why the last sync failed,
  shown while no sync has succeeded since (a mirror whose cron syncs fail is still
  "fresh" until its timestamp expires, but no longer looks synced);
- the directory: narinfos and object files (``nar/``) counted by listing.

A mirror is **frozen** when its timestamp (or its trusted root) has expired: its
clients then refuse its index, as ``kiln mirror sync`` from it would, until a sync
brings a newer timestamp. Freshness is judged by this machine's clock.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from kiln.store.errors import KilnError

from . import index as ix
from . import layout, mirrorfailure, mirrorplan
from .mirrorfailure import STATE_KEY
from .storage import FileStorage, open_storage


class NotAMirror(KilnError):
    """The directory is not a registry, or no mirror sync ever completed into it."""


@dataclass(frozen=True, slots=True)
class MirrorStatus:
    directory: str
    #: the source URL and when the last successful sync finished (None: not recorded)
    source: str | None
    synced_at: str | None
    root_version: int
    root_sha256: str
    root_expires: str | None
    #: the highest versions the mirror's syncs have seen (rollback protection)
    timestamp_seen: int
    snapshot_seen: int
    #: from the last sync's record (None: no record)
    index_paths: int | None
    stale: int | None
    #: counted in the directory
    narinfos: int
    objects: int
    #: the published timestamp (None: there is none)
    timestamp_version: int | None
    timestamp_expires: str | None
    #: why the mirror is frozen, or None when it is fresh
    frozen: str | None
    #: the last sync that failed after the last that succeeded: ``at``, ``error``,
    #: ``transient`` (``mirrorfailure``); None when the last attempt succeeded
    last_failure: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return {**asdict(self), "fresh": self.frozen is None}


def _expired(expires: Any, now: dt.datetime) -> bool:
    try:
        return ix.parse_expiry(str(expires)) <= now
    except ValueError:
        return True


def status(directory: Path, now: dt.datetime | None = None) -> MirrorStatus:
    """The status of the mirror at ``directory`` (module docstring); ``NotAMirror`` if
    it is none."""
    now = now or ix.utcnow()
    if not (directory / layout.CACHE_INFO).is_file():
        raise NotAMirror(f"{directory} is not a registry (no {layout.CACHE_INFO} there)")
    storage = open_storage(directory, create=False)
    raw = storage.read(STATE_KEY)
    if raw is None:
        raise NotAMirror(
            f"{directory} is not a mirror (no {STATE_KEY}): no kiln mirror sync has completed into it"
        )
    try:
        doc = json.loads(raw)
        state = ix.TrustState.from_json(raw)
    except (ValueError, KilnError) as e:
        raise KilnError(f"{directory}/{STATE_KEY} does not parse: {e}") from None
    root = state.root
    rec = mirrorplan.load_record(storage) or {}
    ts_raw = storage.read("index/timestamp.json")
    ts: dict[str, Any] | None = None
    if ts_raw is not None:
        try:
            ts = json.loads(ts_raw)["signed"]
        except (ValueError, KeyError, TypeError):
            ts = {}
    frozen = None
    if ts is None:
        frozen = "the mirror publishes no index/timestamp.json"
    elif _expired(ts.get("expires"), now):
        frozen = f"its index timestamp expired at {ts.get('expires')}"
    elif _expired(root.get("expires"), now):
        frozen = f"its trusted root (version {root.get('version')}) expired at {root.get('expires')}"
    narinfos = objects = 0
    if isinstance(storage, FileStorage):
        narinfos = sum(1 for k in storage.list("") if k.endswith(".narinfo"))
        objects = sum(1 for k in storage.list("nar/") if k.endswith(".nar.zst"))

    def count(name: str) -> int | None:
        v = rec.get(name)
        return v if isinstance(v, int) else None

    return MirrorStatus(
        directory=str(directory),
        source=doc.get("source") if isinstance(doc.get("source"), str) else None,
        synced_at=doc.get("synced_at") if isinstance(doc.get("synced_at"), str) else None,
        root_version=int(root["version"]),
        root_sha256=hashlib.sha256(base64.b64decode(doc["root"])).hexdigest(),
        root_expires=root.get("expires"),
        timestamp_seen=state.timestamp_version,
        snapshot_seen=state.snapshot_version,
        index_paths=count("paths"),
        stale=count("stale"),
        narinfos=narinfos,
        objects=objects,
        timestamp_version=ts.get("version") if ts else None,
        timestamp_expires=ts.get("expires") if ts else None,
        frozen=frozen,
        last_failure=_failure_since(directory, doc.get("synced_at")),
    )


def _failure_since(directory: Path, synced_at: Any) -> dict[str, Any] | None:
    """The recorded failure, if it is not older than the last successful sync."""
    fail = mirrorfailure.load(directory)
    if fail is None or (isinstance(synced_at, str) and fail["at"] < synced_at):
        return None
    return fail
