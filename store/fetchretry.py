"""How long a source fetch waits before it asks a URL again (``fetchdownload.http_get``).

Rules:

- after a transport error (a reset, a timeout, the pace rule) or a transient status
  (``RETRY_STATUS``) the wait doubles from 0.2 s: 0.2, 0.4, 0.8 s, ..., at most 3 s;
- a 429 or 503 whose ``Retry-After`` (whole seconds, or an HTTP date) asks for longer
  waits what it asks, up to a cap: ``RETRY_AFTER_CAP`` (60 s) for a URL,
  ``MIRROR_RETRY_AFTER_CAP`` (5 s) for a hashed source mirror, whose fallback is the
  URLs and which every source of a build would wait for again. A server asking for more
  than the cap is given up on at once (``Wait.too_long``: the next mirror or URL is
  tried, and the error says what it asked), so one URL never waits more than
  ``retries`` times the cap in all (3 minutes with the default 3 retries, each wait
  one the server asked for) — a rate-limiting server is no longer asked again within
  0.2 s and given up on 1.4 s after its first answer;
- a ``Retry-After`` that does not parse, or on another status, is ignored (the backoff);
- a wait of ``SAY_WAIT_FROM`` s or more is said on stderr even without a progress
  display, with what the server asked, so a fetch that seems stuck says why.
"""

from __future__ import annotations

import email.utils
import re
import time
import urllib.error
from dataclasses import dataclass
from datetime import UTC

#: statuses worth asking again: the server or something before it is busy or restarting
RETRY_STATUS = (408, 425, 429, 500, 502, 503, 504)
#: the statuses whose ``Retry-After`` is heeded (RFC 9110 15.5.4 and 15.6.4, RFC 6585)
RETRY_AFTER_STATUS = (429, 503)
#: the longest wait a ``Retry-After`` gets, in seconds, for a URL and for a source mirror
RETRY_AFTER_CAP = 60.0
MIRROR_RETRY_AFTER_CAP = 5.0
#: waits at least this long (seconds) are said on stderr
SAY_WAIT_FROM = 2.0

_SECONDS = re.compile(r"[0-9]+")


def backoff(attempt: int) -> float:
    """The wait before attempt ``attempt + 1`` (``attempt`` >= 1) when the server asked for
    nothing: 0.2 s doubling, at most 3 s."""
    return min(0.2 * 2 ** (attempt - 1), 3.0)


def retry_after(value: str | None, now: float | None = None) -> float | None:
    """The seconds a ``Retry-After`` header value asks for: whole seconds, or an HTTP date
    (counted from ``now``, default the wall clock; 0 once it has passed). None when
    absent or unreadable."""
    if value is None:
        return None
    value = value.strip()
    if _SECONDS.fullmatch(value):
        return float(min(int(value), 10**9))  # (a bound: float() of a huge integer overflows)
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError, OverflowError):
        return None
    if when.tzinfo is None:  # ("-0000": UTC, its time zone unknown)
        when = when.replace(tzinfo=UTC)
    return max(when.timestamp() - (time.time() if now is None else now), 0.0)


@dataclass(frozen=True)
class Wait:
    """How long to wait before the next attempt, and what the server asked for when that
    set it (``asked`` None: the backoff)."""

    seconds: float
    asked: float | None = None

    def too_long(self) -> str:
        """Why not to wait at all ("" to wait): the server asked for longer than the cap."""
        if self.asked is not None and self.asked > self.seconds:
            return (
                f"the server asks to come back in {self.asked:.0f} s (Retry-After), longer than kiln "
                f"waits ({self.seconds:.0f} s): giving up on this URL"
            )
        return ""

    def said(self) -> str:
        """The wait for a "retrying ..." line ("" for a short one the server did not ask for)."""
        if self.asked is None:
            return f" in {self.seconds:.0f} s" if self.seconds >= SAY_WAIT_FROM else ""
        return f" in {self.seconds:.0f} s, as the server asked (Retry-After)"


def wait_before(attempt: int, status: int | None, header: str | None, cap: float) -> Wait:
    """The wait before attempt ``attempt + 1`` after an answer with ``status`` (None: a
    transport error) and ``Retry-After`` ``header``: the backoff, or what a 429 or 503
    asked for when longer, at most ``cap`` s."""
    base = backoff(attempt)
    asked = retry_after(header) if status in RETRY_AFTER_STATUS else None
    if asked is None or min(asked, cap) <= base:
        return Wait(base)
    return Wait(min(asked, cap), asked)


def wait_after(attempt: int, error: BaseException, cap: float) -> Wait:
    """``wait_before`` for what ``error`` was: an HTTP status (with its ``Retry-After``)
    or a transport error."""
    if isinstance(error, urllib.error.HTTPError):
        return wait_before(attempt, error.code, error.headers.get("Retry-After"), cap)
    return wait_before(attempt, None, None, cap)
