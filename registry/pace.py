"""How slowly a peer may send: the rule against slowloris, for both ends of the registry.

A per-read timeout only bounds silence: a peer that sends a byte now and then resets it
and can hold a connection (and whatever waits on it) for as long as it likes. ``Pace``
bounds the whole transfer instead: ``GRACE`` seconds plus one second per ``MIN_RATE``
bytes received. A transfer may be judged together with others sharing its ``Link`` (the
client's 16 parallel downloads from one registry): it is too slow only if both it and
the link as a whole fell behind, so a slow but healthy link is not mistaken for a
trickle. Used by ``httpclient`` (answers from a registry) and by the server's body
readers (``httpbits``, ``writeapi``: requests from clients).

A link's credit excuses a transfer's own slowness only so far: ``idle`` bounds how long
one read may bring nothing at all, and ``deadline`` how long the whole transfer may
take, whatever the link does. The server needs both: behind a reverse proxy every client
shares one address (one link), and one connection sending steadily must not keep a
hundred silent ones open.

Silence is not a trickle. A small transfer that stops sending runs out of its allowance
(``GRACE`` s and a little) before a per-read timeout would notice. If, when ``read``
gives up on it, no byte has arrived for ``GRACE`` s, the link's ``silent`` error is
raised instead of "too slow" (the client's: ``httperrors.Broken``, a stall its caller
may ask again, as one silent past the read timeout; the server's links have none); a
transfer that had bytes within that time is trickling: "too slow", not asked again.
Bytes arrive before a read returns them (a ``readexactly`` of 1 MB returns once all
came), so arrivals are seen on the ``body`` stream the transfer reads (aiohttp's
``StreamReader.total_bytes``), looked at every ``GRACE / LOOKS`` s while a read waits,
and silence is judged to within that; without a ``body`` a transfer is never taken for
silent. Only the error differs: the transfer ends at the same moment either way, so no
limit grows, and how often a stall is asked again is bounded by the caller
(``httpretry.Cuts``).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

from aiohttp.http_exceptions import HttpProcessingError

from kiln.store import pacing

#: Slowest average pace (bytes/s) accepted once ``GRACE`` seconds have passed: the rule
#: source fetches keep too (``kiln.store.pacing``).
MIN_RATE = pacing.MIN_RATE
GRACE = pacing.GRACE

#: What a ``readline`` of a body raises for a line past aiohttp's buffer limit:
#: ``LineTooLong`` (an ``HttpProcessingError``, not a ``ClientError``), or ``ValueError``
#: before aiohttp 3.10. Both ends turn it into their own error (a ``RegistryError``, a 400).
LINE_TOO_LONG = (HttpProcessingError, ValueError)
#: while a read waits, a ``body`` is looked at every ``GRACE / LOOKS`` s (module docstring)
LOOKS = 60


class Link:
    """Bytes received by all transfers judged together, and ``silent``: the error for one
    of them given up on while silent for ``GRACE`` s (module docstring; None: "too slow"
    as any other)."""

    def __init__(self, silent: Callable[[str], Exception] | None = None) -> None:
        self.n = 0
        self.silent = silent


class Pace:
    """One transfer's allowance. ``error(message)`` makes the exception raised when the
    transfer falls behind (``RegistryError`` on the client, a 408 on the server); ``body``
    (with a ``total_bytes`` count of the bytes arrived) lets a silent transfer be told
    from a trickle (module docstring)."""

    def __init__(
        self,
        what: str,
        error: Callable[[str], Exception],
        link: Link | None = None,
        *,
        idle: float | None = None,
        deadline: float | None = None,
        body: Any = None,
    ) -> None:
        self.what = what
        self.error = error
        self.link = link
        self.start = time.monotonic()
        self.link_start = link.n if link is not None else 0
        self.n = 0
        self.body = body
        self.arrived = self._arrived()
        #: the error for a silent transfer, if silence is told from a trickle (``given_up``)
        self.silent = link.silent if link is not None and self.arrived is not None else None
        self.last = self.start  # (when a byte was last seen arriving)
        #: seconds one read may bring nothing (None: only the pace rule)
        self.idle = idle
        #: seconds the whole transfer may take (None: as long as the pace allows)
        self.deadline = deadline

    def left(self, more: int = 0) -> float:
        """Seconds left to receive ``more`` further bytes (negative: too slow already)."""
        done = self.n if self.link is None else max(self.n, self.link.n - self.link_start)
        now = time.monotonic()
        left = self.start + GRACE + (done + more) / MIN_RATE - now
        if self.deadline is not None:
            left = min(left, self.start + self.deadline - now)
        return left

    def got(self, n: int) -> None:
        """Count ``n`` bytes received; raise if the transfer has fallen behind."""
        self.n += n
        self._look()
        if self.link is not None:
            self.link.n += n
        if self.left() < 0:
            raise self.too_slow()

    def too_slow(self) -> Exception:
        secs = time.monotonic() - self.start
        if self.deadline is not None and secs >= self.deadline:
            return self.error(
                f"{self.what}: not complete within {self.deadline:g} s ({self.n} bytes received)"
            )
        return self.error(
            f"{self.what}: too slow ({self.n} bytes in {secs:.0f} s; "
            f"at least {MIN_RATE} bytes/s is expected after {GRACE:g} s)"
        )

    async def read(self, aw: Any, more: int) -> Any:
        """Await the read ``aw`` of up to ``more`` bytes and count what it returns (bytes),
        no longer than the pace allows (re-judged as the link makes progress meanwhile)."""
        task = asyncio.ensure_future(aw)
        silent_until = None if self.idle is None else time.monotonic() + self.idle
        try:
            while True:
                wait = self.left(more)
                if silent_until is not None:
                    wait = min(wait, silent_until - time.monotonic())
                if self.silent is not None:
                    wait = min(wait, GRACE / LOOKS)
                done, _ = await asyncio.wait({task}, timeout=max(wait, 0.001))
                if done:
                    data = task.result()
                    self.got(len(data))
                    return data
                self._look()
                if silent_until is not None and time.monotonic() >= silent_until:
                    raise self.error(f"{self.what}: no data for {self.idle:g} s ({self.n} bytes received)")
                if self.left(more) <= 0:
                    raise self.given_up()
        finally:
            task.cancel()

    def given_up(self) -> Exception:
        """The error for a transfer whose allowance ran out while a read brought nothing:
        the link's ``silent`` one if no byte was seen arriving for ``GRACE`` s (to within a
        look: a stall, not a trickle; module docstring), else ``too_slow``."""
        quiet = time.monotonic() - self.last
        if self.silent is None or self.deadline is not None or quiet < GRACE - GRACE / LOOKS:
            return self.too_slow()
        return self.silent(
            f"{self.what}: answer broken off: silent for {quiet:.0f} s ({self.n} bytes received)"
        )

    def _arrived(self) -> int | None:
        """Bytes arrived on ``body`` so far (None: not known)."""
        n = getattr(self.body, "total_bytes", None)
        return n if isinstance(n, int) else None

    def _look(self) -> None:
        """Note when bytes were last seen arriving on ``body``."""
        n = self._arrived()
        if n is not None and n != self.arrived:
            self.arrived, self.last = n, time.monotonic()
