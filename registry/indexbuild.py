"""The publisher's side of the signed index (``index``): a new root, and the metadata
files of a new index generation, signed and in the order they must be written.

The index and snapshot get a new version only when the path table changed; the
timestamp always does, with a short expiry (freshness). Pure: the caller
(``publish``) writes the files, index → snapshot → timestamp.

The timestamp's lifetime is ``TIMESTAMP_HOURS`` unless a publisher asks for another one
(``kiln registry publish-index --timestamp-hours N``, for media carried to a machine
that syncs days later): at least ``MIN_TIMESTAMP_HOURS``, at most ``MAX_TIMESTAMP_HOURS``.
Whatever it is, nothing a timestamp names expires before it: the index and snapshot live
at least twice as long and are renewed once less than half their lifetime is left, and
the longest lifetime is ``ROOT_RENEW_DAYS``, so a root the publisher renews outlives it too.
The reader (``index``) needs no setting: it reads each file's ``expires``. The timestamp
also carries ``signed_at``, the signer's clock (``indexclock``: clock checks).
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any

from kiln.store.signing import PublicKey, SecretKey

from .index import ROLES, canonical, expiry, key_id, parse_expiry, sha256_hex, sign_envelope, utcnow

ROOT_DAYS = 365
#: a publisher that may sign roots alone renews the root when it expires within this
ROOT_RENEW_DAYS = 60
INDEX_DAYS = 30
TIMESTAMP_HOURS = 24
MIN_TIMESTAMP_HOURS = 1
#: a root renewed by the publisher (``ROOT_RENEW_DAYS`` before it expires) outlives any timestamp
MAX_TIMESTAMP_HOURS = ROOT_RENEW_DAYS * 24


def check_timestamp_hours(hours: float) -> None:
    """``ValueError`` unless ``hours`` is a timestamp lifetime this module signs."""
    if not MIN_TIMESTAMP_HOURS <= hours <= MAX_TIMESTAMP_HOURS:
        raise ValueError(
            f"a timestamp lifetime must be {MIN_TIMESTAMP_HOURS} to {MAX_TIMESTAMP_HOURS} hours, not {hours:g}"
        )


def make_root(
    version: int, role_keys: dict[str, list[PublicKey]], now: dt.datetime, threshold: int = 1
) -> dict[str, Any]:
    keys = {key_id(k): {"keytype": "ed25519", "public": k.to_text()} for ks in role_keys.values() for k in ks}
    roles = {r: {"keyids": sorted(key_id(k) for k in role_keys[r]), "threshold": threshold} for r in ROLES}
    return {
        "_type": "root",
        "version": version,
        "expires": expiry(now, days=ROOT_DAYS),
        "keys": keys,
        "roles": roles,
    }


@dataclass(frozen=True, slots=True)
class Published:
    """What ``build_metadata`` produced: files to write, in order (key, bytes)."""

    files: list[tuple[str, bytes]]
    index_version: int
    timestamp_version: int


def build_metadata(
    paths: dict[str, dict[str, Any]],
    store_dir: str,
    key: SecretKey,
    *,
    prev_timestamp: dict[str, Any] | None,
    prev_index_paths: dict[str, Any] | None,
    root_version: int = 1,
    now: dt.datetime | None = None,
    prev_index_expires: str | None = None,
    timestamp_hours: float | None = None,
    min_version: int = 0,
) -> Published:
    """Metadata files for a new index generation. The index and snapshot get a new
    version when ``paths`` changed, or when the previous ones (which expire at
    ``prev_index_expires``) would expire within half their lifetime: re-signing only
    the timestamp would leave a registry whose content stays the same frozen once they
    expire. The timestamp always gets a new version (freshness), valid
    ``timestamp_hours`` (default ``TIMESTAMP_HOURS``);
    the index and snapshot are valid ``INDEX_DAYS`` or twice the timestamp's lifetime,
    whichever is longer, so (renewed at half that) they never expire before a timestamp
    naming them. ``min_version``: no version written is lower (a registry restored from
    a backup must not publish versions its clients already saw: they refuse a rollback)."""
    now = now or utcnow()
    ts_hours = TIMESTAMP_HOURS if timestamp_hours is None else timestamp_hours
    check_timestamp_hours(ts_hours)
    index_hours = max(INDEX_DAYS * 24, 2 * ts_hours)
    ts_v = max((prev_timestamp["version"] + 1) if prev_timestamp else 1, min_version)
    files: list[tuple[str, bytes]] = []
    if (
        prev_timestamp
        and prev_index_paths == paths
        and prev_timestamp.get("root_version", 1) == root_version
        and not expires_within(prev_index_expires, now, dt.timedelta(hours=index_hours / 2))
        and prev_timestamp["meta"]["snapshot.json"]["version"] >= min_version
    ):
        snap_meta = prev_timestamp["meta"]["snapshot.json"]
        idx_v = snap_meta["version"]
    else:
        idx_v = max(
            (prev_timestamp["meta"]["snapshot.json"]["version"] + 1) if prev_timestamp else 1, min_version
        )
        index = {
            "_type": "index",
            "version": idx_v,
            "expires": expiry(now, hours=index_hours),
            "store_dir": store_dir,
            "paths": paths,
        }
        ib = envelope(index, [key])
        snap = {
            "_type": "snapshot",
            "version": idx_v,
            "expires": expiry(now, hours=index_hours),
            "meta": {"index.json": {"version": idx_v, "sha256": sha256_hex(ib), "length": len(ib)}},
        }
        sb = sign_envelope(snap, [key])
        files += [
            (f"index/{idx_v}.index.json", ib),
            (f"index/{idx_v}.snapshot.json", sb),
            ("index/snapshot.json", sb),
        ]
        snap_meta = {"version": idx_v, "sha256": sha256_hex(sb), "length": len(sb)}
    ts = {
        "_type": "timestamp",
        "root_version": root_version,
        "version": ts_v,
        "expires": expiry(now, hours=ts_hours),
        # the signer's clock (readers ignore it): a publisher whose clock is before it
        # refuses to sign (``indexclock``), and its lifetime is exact (``refresh_due``)
        "signed_at": expiry(now),
        "meta": {"snapshot.json": snap_meta},
    }
    files.append(("index/timestamp.json", sign_envelope(ts, [key])))
    return Published(files, idx_v, ts_v)


def envelope(signed: dict[str, Any], keys: list[SecretKey]) -> bytes:
    """``index.sign_envelope(signed, keys)``, byte for byte, with ``signed`` serialised
    once instead of twice (the index is the whole path table: megabytes). Canonical
    JSON sorts keys, and ``"signatures"`` sorts before ``"signed"``."""
    body = canonical(signed)
    sigs = []
    for k in keys:
        sig = k.sign(body)
        sigs.append({"keyid": key_id(k.public()), "sig": sig.split(":", 1)[1] if ":" in sig else sig})
    return b'{"signatures":' + canonical(sigs) + b',"signed":' + body + b"}\n"


def expires_within(expires: str | None, now: dt.datetime, margin: dt.timedelta) -> bool:
    """Whether signed metadata with ``expires`` (its field; None or unreadable: yes)
    expires before ``now + margin``."""
    try:
        return parse_expiry(expires or "") < now + margin
    except ValueError:
        return True
