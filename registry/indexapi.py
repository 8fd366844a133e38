"""The registry server's signed-index publishing (directory registries with
``--index-key``): ``POST /publish-index`` (what pushes call) and the background
re-signing of the timestamp (``refresh_index``). Mixed into ``server.Registry`` ahead of
``writeapi.WriteAPI``, whose methods of the same names it replaces.

Invariants: every timestamp this server signs is valid ``config.timestamp_hours``
(``kiln serve --timestamp-hours``, default ``indexbuild.TIMESTAMP_HOURS``), whether a
push or the refresh signs it, so the expiry a client reads never depends on which did.
The refresh re-signs when the timestamp is ``config.index_refresh`` seconds old, or when
it is valid longer than that lifetime from now (``publish.refresh_due``: signed with a
longer one, e.g. before a restart with a shorter ``--timestamp-hours``); it wakes every
quarter of the refresh period, at most every 10 minutes, so a re-sign comes at most 10
minutes late, which ``kiln serve``'s bound on ``--index-refresh`` leaves room for. It
never signs while this server's clock is wrong (``publish.clock_problem``: behind the
root's or the timestamp's signing time, ``indexclock``): the timestamp served stays the
good one, the problem is said on stderr once (and again when it changes or goes away),
and ``/healthz`` reports it. One
process runs the refresh (``workers``: slot 0); publishers in several processes are
serialised by the directory's index lock (``publish.publish_index``) and, within one,
by ``_publish_lock``.
"""

from __future__ import annotations

import asyncio
import sys
from typing import TYPE_CHECKING

from aiohttp import web

from .backends import DirSource
from .httpbits import plain

if TYPE_CHECKING:
    from .backends import Source
    from .indexbuild import Published
    from .server import ServerConfig
    from .storage import Storage

#: the refresh loop sleeps a quarter of the refresh period, but at most this long
MAX_SLEEP = 600.0


class IndexAPI:
    """Index publishing handlers; the class mixing this in provides ``source``,
    ``config`` (with ``index_key``, ``index_refresh``, ``timestamp_hours``), ``_auth``
    and ``_publish_lock``."""

    if TYPE_CHECKING:
        source: Source
        config: ServerConfig
        _publish_lock: asyncio.Lock

        def _auth(self, request: web.BaseRequest, scope: str) -> None: ...

    def _storage(self) -> Storage:
        """The registry directory's storage: an index is published for a directory only
        (``make_app`` runs ``refresh_index`` for one; ``_auth`` refuses a store's writes)."""
        src = self.source
        assert isinstance(src, DirSource)
        return src.storage

    def _sign_index(self) -> Published:
        """Publish a new index generation; blocking: run it on an executor thread. Only
        with ``config.index_key`` (its callers check)."""
        from .publish import publish_index

        key = self.config.index_key
        assert key is not None  # (refresh_index runs, and publish-index signs, only with one)
        return publish_index(self._storage(), key, timestamp_hours=self.config.timestamp_hours)

    async def refresh_index(self) -> None:
        """Re-sign the index timestamp whenever ``publish.refresh_due`` says so, for ever
        (one worker runs it). A registry without pushes would otherwise look frozen to
        mirrors and clients once the timestamp expires. A failure is said on stderr and
        tried again at the next wake-up."""
        from .publish import clock_problem, refresh_due

        every = self.config.index_refresh
        hours = self.config.timestamp_hours
        loop = asyncio.get_running_loop()
        wrong = False  # a clock problem was said (once per burst: its text names the time)
        while True:
            try:
                problem = await loop.run_in_executor(None, lambda: clock_problem(self._storage()))
                if (problem is not None) != wrong:
                    wrong = problem is not None
                    what = (
                        f"not re-signing the index timestamp (the one served stays): {problem}"
                        if problem
                        else "the clock is right again: re-signing the index timestamp as due"
                    )
                    print(f"kiln serve: {what}", file=sys.stderr, flush=True)
                due = problem is None and await loop.run_in_executor(
                    None, lambda: refresh_due(self._storage(), every, hours=hours)
                )
                if due:
                    async with self._publish_lock:
                        pub = await loop.run_in_executor(None, self._sign_index)
                    print(
                        f"kiln serve: index timestamp re-signed (version {pub.timestamp_version}, "
                        f"valid {hours:g} h)",
                        file=sys.stderr,
                        flush=True,
                    )
            except Exception as e:  # noqa: BLE001 - serving goes on; tried again at the next wake-up
                print(f"kiln serve: cannot re-sign the index timestamp: {e}", file=sys.stderr, flush=True)
            await asyncio.sleep(max(1.0, min(every / 4, MAX_SLEEP)))

    async def _publish_index(self, request: web.BaseRequest) -> web.Response:
        """``POST /publish-index`` (a ``write`` token): sign a new generation now."""
        self._auth(request, "write")
        if self.config.index_key is None:
            return plain(409, "error: this server has no index key (start it with --index-key)")
        async with self._publish_lock:
            pub = await asyncio.get_running_loop().run_in_executor(None, self._sign_index)
        return plain(200, f"index version {pub.index_version}, timestamp version {pub.timestamp_version}")
