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


class Link:
    """Bytes received by all transfers judged together."""

    def __init__(self) -> None:
        self.n = 0


class Pace:
    """One transfer's allowance. ``error(message)`` makes the exception raised when the
    transfer falls behind (``RegistryError`` on the client, a 408 on the server)."""

    def __init__(
        self,
        what: str,
        error: Callable[[str], Exception],
        link: Link | None = None,
        *,
        idle: float | None = None,
        deadline: float | None = None,
    ) -> None:
        self.what = what
        self.error = error
        self.link = link
        self.start = time.monotonic()
        self.link_start = link.n if link is not None else 0
        self.n = 0
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
                done, _ = await asyncio.wait({task}, timeout=max(wait, 0.001))
                if done:
                    data = task.result()
                    self.got(len(data))
                    return data
                if silent_until is not None and time.monotonic() >= silent_until:
                    raise self.error(f"{self.what}: no data for {self.idle:g} s ({self.n} bytes received)")
                if self.left(more) <= 0:
                    raise self.too_slow()
        finally:
            task.cancel()
