"""``GET /healthz``: whether this ``kiln serve`` can serve, for load balancers, service
managers and monitoring.

The name cannot be a registry object's: ``layout.parse_key`` classifies no ``healthz``
(hash parts are 32 nix-base32 characters, an alphabet without ``e`` or ``t``; every
object key has a ``/`` or a suffix), so a static server of the same directory has no
such file and the answer is always this module's.

The answer is JSON, ``Cache-Control: no-store``; 200 when ``problems`` is empty, else
503. Fields:

- ``status``: ``"ok"`` or ``"unavailable"``; ``problems``: why not, one line each;
- ``source``: ``"dir"`` or ``"store"``;
- ``workers``: ``{"running", "configured"}`` (``workers.live_workers``; absent when
  unknown);
- ``index``: the signed timestamp's ``expires``, ``expired`` and ``version`` (null when
  there is no index), and ``signed_here`` (the server holds ``--index-key``);
- ``clock`` (servers that sign the index): ``"ok"``, or ``"wrong"`` when this server's
  clock must not sign (``publish.clock_problem``: behind the index root's or the
  timestamp's signing time, or the timestamp expires further ahead than any publisher
  signs); it then keeps the timestamp it has rather than sign one already expired;
- ``writable`` and ``free_bytes`` (directory registries): whether uploads can be written
  (``os.access``, which sees a read-only mount; a full disk is in ``free_bytes``);
- ``warnings``: what does not stop reads but will fail uploads and pushes, one line each
  (not writable; less than ``LOW_SPACE`` bytes free), so a monitor need not know the
  thresholds; empty when there is nothing to say.

What makes it 503: the registry directory's ``nix-cache-info`` cannot be read now (the
directory removed, its disk unmounted or unreadable: every read would fail), the store
database cannot be queried (``--store``), or, on a server that signs the index, the
timestamp has expired (its re-signing fails, so every client and mirror refuses the
index as frozen) or the server's clock is wrong (``clock``: the timestamp will expire
unrenewed). A mirror served without the key has an expired timestamp whenever
its syncs stop; that is reported (``expired``) but is the mirror's state, not the
server's (``kiln mirror status``), and narinfos and objects are still served. Not
writable is reported, not a 503: reads go on.

Every check is a few system calls and one small file read; ``check`` blocks, so the
server runs it on an executor thread.
"""

from __future__ import annotations

import datetime as dt
import json
import os
from typing import Any

from kiln.store.errors import KilnError

from . import index as ix
from . import layout
from .backends import DirSource, Source
from .storage import FileStorage
from .workers import live_workers

PATH = "healthz"
LOW_SPACE = 64 << 20
"""Free bytes under which ``warnings`` says uploads will fail (a NAR of a toolchain is
larger; a registry this full fills on the next push)."""


def _timestamp(source: DirSource, now: dt.datetime) -> tuple[dict[str, Any] | None, str | None]:
    """(the ``index`` field without ``signed_here``, a problem reading it or None)."""
    try:
        data = source.storage.read("index/timestamp.json")
    except (OSError, KilnError) as e:
        return None, f"cannot read index/timestamp.json: {getattr(e, 'strerror', None) or e}"
    if data is None:
        return None, None
    try:
        signed = json.loads(data)["signed"]
        expires = signed["expires"]
        expired = ix.parse_expiry(expires) <= now
        version = signed.get("version")
    except (ValueError, KeyError, TypeError, RecursionError):
        return {"expires": None, "expired": True, "version": None}, "index/timestamp.json is malformed"
    return {"expires": expires, "expired": expired, "version": version}, None


def _clock(source: DirSource, now: dt.datetime) -> str | None:
    """Why this server's clock must not sign the index (``publish.clock_problem``), or None."""
    from .publish import clock_problem

    try:
        return clock_problem(source.storage, now)
    except (OSError, KilnError, ValueError, KeyError, TypeError, RecursionError):
        return None  # (an unreadable index is the timestamp check's problem)


def check(source: Source, index_key: bool, now: dt.datetime | None = None) -> tuple[int, dict[str, Any]]:
    """``(HTTP status, body)`` of ``GET /healthz`` for a server of ``source``;
    ``index_key``: the server signs the index (module docstring)."""
    now = now or ix.utcnow()
    problems: list[str] = []
    doc: dict[str, Any] = {"source": "dir" if isinstance(source, DirSource) else "store"}
    live = live_workers()
    if live is not None:
        doc["workers"] = {"running": live[0], "configured": live[1]}
    if isinstance(source, DirSource):
        try:
            if source.storage.read(layout.CACHE_INFO) is None:
                problems.append(f"the registry directory has no {layout.CACHE_INFO} (removed or unmounted?)")
        except (OSError, KilnError) as e:
            problems.append(f"cannot read the registry directory: {getattr(e, 'strerror', None) or e}")
        if not problems:
            ts, why = _timestamp(source, now)
            if ts is not None:
                ts["signed_here"] = index_key
            doc["index"] = ts
            if index_key and why:
                problems.append(why)
            elif index_key and ts is not None and ts["expired"]:
                problems.append(
                    f"the index timestamp expired at {ts['expires']} (re-signing fails: see this server's "
                    "stderr); clients and mirrors refuse the index as frozen"
                )
            if index_key and not why:
                clock = _clock(source, now)
                doc["clock"] = "ok" if clock is None else "wrong"
                if clock is not None:
                    problems.append(f"this server does not re-sign the index: {clock}")
        if isinstance(source.storage, FileStorage):
            root = source.storage.root
            doc["writable"] = all(
                os.access(d, os.W_OK | os.X_OK) for d in (root, root / layout.PRIVATE_DIR / "tmp")
            )
            try:
                st = os.statvfs(root)
                doc["free_bytes"] = st.f_bavail * st.f_frsize
            except OSError:
                doc["free_bytes"] = None
            warnings = doc["warnings"] = []
            if not doc["writable"]:
                warnings.append(f"uploads fail: {root} is not writable (a read-only mount?)")
            free = doc["free_bytes"]
            if free is not None and free < LOW_SPACE:
                warnings.append(
                    f"uploads will fail: {free} bytes free on the file system of {root} "
                    f"(under {LOW_SPACE >> 20} MiB)"
                )
    else:
        try:
            source.narinfo("0" * 32)  # one query of the store database
        except Exception as e:  # noqa: BLE001 - whatever it is, the store cannot be read
            problems.append(f"cannot query the store: {e}")
    doc["status"] = "unavailable" if problems else "ok"
    doc["problems"] = problems
    return (503 if problems else 200), doc
