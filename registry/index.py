"""Signed, versioned index of a registry's paths with TUF-style freshness (minimal subset).

Why not python-tuf: its metadata would be fine, but its repository side is not stable
API and its client wants to own the download loop and the local cache layout; the four
checks we need (signature threshold per role, rollback, freeze, mix-and-match) plus
root rotation are ~200 lines here with the store's ed25519 keys, so one key format
serves narinfo signatures and the index.

Metadata (canonical JSON: sorted keys, no whitespace, UTF-8) under ``index/``; each file is
``{"signed": {...}, "signatures": [{"keyid", "sig"}]}``:

- ``<v>.root.json`` / ``root.json``: keys and, per role (root, timestamp, snapshot,
  index), the key ids and threshold. Root v+1 must be signed by a threshold of root v's
  root keys *and* of its own (chained rotation); clients pin one root and walk forward.
- ``<v>.index.json``: ``paths``: hash part → {path, narinfo sha256, file hash, file size,
  and, for paths with attestations, ``attestations``: kind → sha256 of the DSSE file}.
- ``<v>.snapshot.json`` (+ ``snapshot.json``): version, expiry, and the sha256/length/
  version of the index file it vouches for.
- ``timestamp.json``: short expiry; the sha256/length/version of the snapshot.

The publisher's side (new roots, new generations of metadata) is ``indexbuild``.

Client rules (``verify_*``): every file must carry a threshold of valid signatures from
its role's keys in the trusted root, counted by distinct raw public key (each root key
entry must be the key its id names: ``key_id``); versions never go down relative to the last state
the client saw (rollback); nothing may be past its expiry (freeze), nor expire further ahead than any publisher
signs, and the clock must not be before the trusted root was signed (``indexclock``:
a wrong clock on either side); a snapshot must hash
to what the timestamp says and the index to what the snapshot says (mix-and-match).
Publication order is index → snapshot → timestamp, each file atomic, so a reader that
sees a timestamp can always fetch what it points to.
"""

from __future__ import annotations

import base64
import datetime as dt
import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ParamSpec, TypeVar

from kiln.store.errors import KilnError
from kiln.store.signing import PublicKey, SecretKey

from .indexpaths import path_table_problem

ROLES = ("root", "timestamp", "snapshot", "index")
P = ParamSpec("P")
R = TypeVar("R")


class IndexError_(KilnError):  # noqa: N801 - avoid shadowing the builtin IndexError
    """Index metadata failed verification."""


class SignatureError(IndexError_):
    pass


class RollbackError(IndexError_):
    pass


class FreezeError(IndexError_):
    pass


class MixAndMatchError(IndexError_):
    pass


class ClockError(IndexError_):
    """A clock is wrong: this machine's is behind, or the publisher's was ahead
    (``indexclock``)."""


class NoIndex(IndexError_):
    """The source answers ``index/timestamp.json`` with 404: it publishes no index."""


def canonical(obj: Any) -> bytes:
    return json.dumps(obj, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def key_id(pub: PublicKey) -> str:
    return sha256_hex(pub.to_text().encode())


EXPIRY_FORMAT = "%Y-%m-%dT%H:%M:%SZ"


def expiry(now: dt.datetime, *, days: float = 0, hours: float = 0) -> str:
    return (now + dt.timedelta(days=days, hours=hours)).strftime(EXPIRY_FORMAT)


def utcnow() -> dt.datetime:
    return dt.datetime.now(dt.UTC).replace(microsecond=0)


def sign_envelope(signed: dict[str, Any], keys: list[SecretKey]) -> bytes:
    """Wrap ``signed`` with one signature per key over its canonical bytes."""
    body = canonical(signed)
    sigs = []
    for k in keys:
        sig = k.sign(body)
        raw = sig.split(":", 1)[1] if ":" in sig else sig
        sigs.append({"keyid": key_id(k.public()), "sig": raw})
    return canonical({"signed": signed, "signatures": sigs}) + b"\n"


def _malformed(what: str) -> Callable[[Callable[P, R]], Callable[P, R]]:
    """Decorate a ``verify_*`` step so metadata of the wrong shape (a signature that is
    not an object, a role without keys, a ``meta`` entry without a version...) is an
    ``IndexError_`` naming ``what``, not a KeyError or TypeError from deep inside: the
    files come from the source, which may be broken or hostile, and a well-signed file
    can still be malformed."""

    def wrap(fn: Callable[P, R]) -> Callable[P, R]:
        @functools.wraps(fn)
        def checked(*args: P.args, **kw: P.kwargs) -> R:
            try:
                return fn(*args, **kw)
            except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
                # (chained: under KILN_DEBUG a caller's bug still shows where it happened)
                raise IndexError_(f"{what}: malformed metadata ({type(e).__name__}: {e})") from e

        return checked

    return wrap


def _load(data: bytes, what: str) -> tuple[dict[str, Any], list[dict[str, str]]]:
    try:
        env = json.loads(data)
        signed, sigs = env["signed"], env["signatures"]
        if not isinstance(signed, dict) or not isinstance(sigs, list):
            raise TypeError("bad envelope")
    except (ValueError, KeyError, TypeError, RecursionError) as e:
        raise IndexError_(f"{what}: not a signed metadata file ({e})") from None
    return signed, sigs


def _check_sigs(
    signed: dict[str, Any], sigs: list[dict[str, str]], root: dict[str, Any], role: str, what: str
) -> None:
    body = canonical(signed)
    spec = root["roles"][role]
    if type(spec["threshold"]) is not int or spec["threshold"] < 1:
        # 0 would let unsigned metadata through
        raise IndexError_(f"{what}: the {role} role's threshold must be a whole number >= 1")
    # counted by raw public key: a key id hashes "name:base64", so one key listed under
    # two names has two ids, and counting ids would let one key meet a threshold of 2
    good: set[bytes] = set()
    for s in sigs:
        kid = s.get("keyid")
        if kid not in spec["keyids"]:
            continue
        try:
            pub = PublicKey.parse(root["keys"][kid]["public"])
        except KilnError as e:
            raise IndexError_(f"{what}: the root's key {kid}: {e}") from None
        if key_id(pub) != kid:
            # the root's entry must be the key its id names, or ids mean nothing
            raise IndexError_(
                f"{what}: the root lists key id {kid} for key {pub.name!r}, whose key id is {key_id(pub)}"
            )
        if pub.key in good:
            continue
        try:
            ok = pub.verify(body, f"{pub.name}:{s.get('sig', '')}")
        except KilnError:
            ok = False
        if ok:
            good.add(pub.key)
    if len(good) < spec["threshold"]:
        raise SignatureError(
            f"{what}: {len(good)} valid signature(s) by distinct keys of the {role} role, "
            f"{spec['threshold']} required"
        )


def parse_expiry(text: str) -> dt.datetime:
    """An ``expires`` field (``expiry``'s format) as a UTC time; ``ValueError`` if it is
    not one."""
    return dt.datetime.strptime(text, EXPIRY_FORMAT).replace(tzinfo=dt.UTC)


def _check_fresh(signed: dict[str, Any], now: dt.datetime, what: str, role: str) -> None:
    """``signed`` (of ``role``) has not expired at ``now``, nor does it expire further
    ahead than any publisher signs (``indexclock``: a clock ahead or behind)."""
    from .indexclock import too_far_ahead

    try:
        exp = parse_expiry(signed["expires"])
    except (KeyError, ValueError) as e:
        raise IndexError_(f"{what}: bad or missing 'expires' ({e})") from None
    if exp <= now:
        raise FreezeError(
            f"{what} expired at {signed['expires']} (now {now:%Y-%m-%dT%H:%M:%SZ}); the source may be frozen"
        )
    problem = too_far_ahead(signed, role, now, what)
    if problem is not None:
        raise ClockError(problem)


def check_clock(state: TrustState, now: dt.datetime) -> None:
    """``ClockError`` when ``now`` is before the trusted root was signed: this machine's
    clock is behind (``indexclock``), and every expiry check would pass on metadata long
    expired. Called before anything is fetched."""
    from .indexclock import reader_clock_behind

    problem = reader_clock_behind(state.root, now)
    if problem is not None:
        raise ClockError(problem)


def _check_type(signed: dict[str, Any], typ: str, what: str) -> int:
    if signed.get("_type") != typ or not isinstance(signed.get("version"), int):
        raise IndexError_(f"{what}: expected _type {typ!r} with an integer version")
    return signed["version"]


# ---------------------------------------------------------------- client side


@dataclass(slots=True)
class TrustState:
    """What a client remembers between updates: the pinned/latest root and the highest
    versions seen (rollback protection)."""

    root: dict[str, Any]
    root_bytes: bytes
    timestamp_version: int = 0
    snapshot_version: int = 0

    def to_json(self) -> bytes:
        return canonical(
            {
                "root": base64.b64encode(self.root_bytes).decode(),
                "timestamp": self.timestamp_version,
                "snapshot": self.snapshot_version,
            }
        )

    @classmethod
    @_malformed("trusted state")
    def from_json(cls, data: bytes) -> TrustState:
        d = json.loads(data)
        rb = base64.b64decode(d["root"])
        root = _load(rb, "trusted root")[0]
        _check_type(root, "root", "trusted root")
        return cls(root, rb, int(d["timestamp"]), int(d["snapshot"]))

    @classmethod
    @_malformed("root")
    def pin(cls, root_bytes: bytes) -> TrustState:
        """Trust ``root_bytes`` (obtained out of band); it must be self-signed."""
        signed, sigs = _load(root_bytes, "root")
        _check_type(signed, "root", "root")
        _check_sigs(signed, sigs, signed, "root", "root")
        return cls(signed, root_bytes)


@_malformed("new root")
def verify_next_root(state: TrustState, data: bytes) -> None:
    """Accept root version N+1 signed by the current and by the new root keys. Its
    expiry is not checked: as in TUF, only the last root of the chain must be fresh
    (``verify_timestamp`` checks it), so a client long offline can still walk the chain."""
    signed, sigs = _load(data, "new root")
    v = _check_type(signed, "root", "new root")
    if v != state.root["version"] + 1:
        raise RollbackError(f"root: expected version {state.root['version'] + 1}, got {v}")
    _check_sigs(signed, sigs, state.root, "root", f"root v{v} (by the old root keys)")
    _check_sigs(signed, sigs, signed, "root", f"root v{v} (by its own keys)")
    state.root, state.root_bytes = signed, data


@_malformed("timestamp")
def verify_timestamp(state: TrustState, data: bytes, now: dt.datetime) -> dict[str, Any]:
    signed, sigs = _load(data, "timestamp")
    v = _check_type(signed, "timestamp", "timestamp")
    _check_sigs(signed, sigs, state.root, "timestamp", "timestamp")
    if v < state.timestamp_version:
        raise RollbackError(
            f"timestamp version {v} is older than the last seen {state.timestamp_version} (rollback)"
        )
    _check_fresh(signed, now, "timestamp", "timestamp")
    snap_v = _check_meta(signed, "snapshot.json", "timestamp")
    if snap_v < state.snapshot_version:
        raise RollbackError(
            f"snapshot version {snap_v} is older than the last seen {state.snapshot_version} (rollback)"
        )
    _check_fresh(state.root, now, "root", "root")
    return signed


def _check_meta(signed: dict[str, Any], name: str, what: str) -> int:
    """The version of the ``meta[name]`` entry of ``signed`` (the file ``what``), after
    checking it has an integer version and length and a sha256: the version names the
    files fetched next, so it is a number and nothing else."""
    m = signed["meta"][name]
    if type(m["version"]) is not int or type(m["length"]) is not int or not isinstance(m["sha256"], str):
        raise IndexError_(f"{what}: meta {name} needs an integer version and length and a sha256")
    return m["version"]


def _check_link(data: bytes, meta: dict[str, Any], what: str) -> None:
    if len(data) != meta["length"] or sha256_hex(data) != meta["sha256"]:
        raise MixAndMatchError(
            f"{what} does not match the hash/length its parent metadata lists (mix-and-match or tampering)"
        )


@_malformed("snapshot")
def verify_snapshot(
    state: TrustState, timestamp: dict[str, Any], data: bytes, now: dt.datetime
) -> dict[str, Any]:
    meta = timestamp["meta"]["snapshot.json"]
    _check_link(data, meta, "snapshot")
    signed, sigs = _load(data, "snapshot")
    v = _check_type(signed, "snapshot", "snapshot")
    _check_sigs(signed, sigs, state.root, "snapshot", "snapshot")
    _check_meta(signed, "index.json", "snapshot")
    if v != meta["version"]:
        raise MixAndMatchError(f"snapshot version {v} but the timestamp lists {meta['version']}")
    _check_fresh(signed, now, "snapshot", "snapshot")
    return signed


@_malformed("index")
def verify_index(
    state: TrustState, snapshot: dict[str, Any], data: bytes, now: dt.datetime
) -> dict[str, Any]:
    meta = snapshot["meta"]["index.json"]
    _check_link(data, meta, "index")
    signed, sigs = _load(data, "index")
    v = _check_type(signed, "index", "index")
    _check_sigs(signed, sigs, state.root, "index", "index")
    if v != meta["version"]:
        raise MixAndMatchError(f"index version {v} but the snapshot lists {meta['version']}")
    _check_fresh(signed, now, "index", "index")
    problem = path_table_problem(signed.get("paths"))
    if problem is not None:
        raise IndexError_(problem)
    return signed


@dataclass(frozen=True, slots=True)
class VerifiedIndex:
    """The result of a full update: the index plus the exact bytes to republish."""

    index: dict[str, Any]
    timestamp: dict[str, Any]
    files: list[tuple[str, bytes]] = field(default_factory=list)


async def update(fetch: Any, state: TrustState, now: dt.datetime | None = None) -> VerifiedIndex:
    """Walk the root chain, then timestamp → snapshot → index, verifying each step.
    ``fetch`` is ``async (key) -> bytes | None``. On success ``state`` holds the new
    root and versions (the caller persists it); on failure it raises and the caller
    keeps its previous state."""
    now = now or utcnow()
    check_clock(state, now)
    files: list[tuple[str, bytes]] = []
    while True:
        nxt = await fetch(f"index/{state.root['version'] + 1}.root.json")
        if nxt is None:
            break
        verify_next_root(state, nxt)
        files.append((f"index/{state.root['version']}.root.json", nxt))
    if files:
        files.append(("index/root.json", state.root_bytes))
    tb = await fetch("index/timestamp.json")
    if tb is None:
        raise NoIndex("the source publishes no index (index/timestamp.json is missing)")
    ts = verify_timestamp(state, tb, now)
    snap_v = ts["meta"]["snapshot.json"]["version"]
    sb = await fetch(f"index/{snap_v}.snapshot.json")
    if sb is None:
        raise MixAndMatchError(f"timestamp names snapshot version {snap_v}, which the source does not have")
    snap = verify_snapshot(state, ts, sb, now)
    ib = await fetch(f"index/{snap_v}.index.json")
    if ib is None:
        raise MixAndMatchError(f"snapshot names index version {snap_v}, which the source does not have")
    idx = verify_index(state, snap, ib, now)
    files += [
        (f"index/{snap_v}.index.json", ib),
        (f"index/{snap_v}.snapshot.json", sb),
        ("index/snapshot.json", sb),
    ]
    files.append(("index/timestamp.json", tb))
    state.timestamp_version, state.snapshot_version = ts["version"], snap_v
    return VerifiedIndex(idx, ts, files)
