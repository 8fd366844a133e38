"""When ``HttpClient`` asks a registry again. Pure decisions; the requests are
``httpclient``'s.

- An answer that says "not now" (``ask_again``): a busy server's 503 for any request
  but an upload (the server did not take it), and for a read-only request (``GET``,
  ``HEAD``, ``READ_ONLY_POSTS``) also a 429 (rate limited) and a reverse proxy's 502 or
  504 (its upstream failed or was slow): each asked again after its ``Retry-After``
  (``retry_after``: 1 s without one, at most ``BUSY_WAIT_MAX``), ``BUSY_RETRIES`` times
  in all; a read-only request's 500 (maybe the server's own bug, which would come again)
  only ``ERROR_RETRIES`` of those times. Once one request of a client has used up its
  waits and is still answered "not now", the client's other requests wait at most
  ``WORN_RETRIES`` times, until an answer is not an error again: thousands of objects
  of a mirror sync or a substitution would otherwise each wait out the same outage
  (8 waits of up to 10 s apiece). Writes (uploads, ``publish-index``) get only
  the 503: a 429 or 5xx may have come after the server acted on them, and whether it
  did is for the command to find out (a push run again sends only what is missing).
- A read-only request whose connection was refused, reset or closed before any byte of
  an answer (``kiln serve`` restarting): ``RETRY_FIRST`` s, doubling to ``RETRY_MAX``,
  at most ``RETRY_WAIT`` s in all once the registry has answered the client,
  ``COLD_RETRY_WAIT`` s before (a port nobody listens on stays "unreachable" within a
  few seconds).
- An answer that broke off in its body (reset, closed short, silent past the read
  timeout or, for a small answer, silent for the pace's grace period, its framing
  broken on the way: ``httperrors.Broken``) to a read-only request (``read_only``): a
  download of a content-addressed object (``httpdownload``: resumed or started over), a
  ``blob-batch``/``attestation-batch`` answer (``httpremainder.until_whole``: the
  entries not yet received asked for again), any other body (``GET`` of a narinfo, an
  index file, an attestation; a ``narinfo-batch`` answer: ``httpremainder.until_read``,
  the whole request sent again), ``CUT_RETRIES`` times, after ``CUT_WAIT`` s doubling
  (``Cuts``). As for "not now": once one request of a client broke off again after all
  those, the client's other requests are asked again at most ``WORN_RETRIES`` times,
  until an answer arrives whole (thousands of objects must not each wait out the same
  broken link). A trickle (``pace``) is not asked again, nor ever a write.
"""

from __future__ import annotations

import errno
import math

import aiohttp

from .client import RegistryError

#: a "not now" answer (module docstring) is asked again this many times, after its
#: Retry-After (capped at BUSY_WAIT_MAX seconds; 1 s without one or with one that is not
#: a number of seconds); a 500 at most ERROR_RETRIES of those times
BUSY_RETRIES = 8
#: ... and only this many times once a request of the same client was still answered
#: "not now" after all its waits, until an answer is not an error again
WORN_RETRIES = 1
BUSY_WAIT_MAX = 10.0
ERROR_RETRIES = 2
#: the statuses a read-only request waits out (503 alone for other requests but uploads)
NOT_NOW = frozenset({429, 500, 502, 503, 504})
#: an answer broken off mid-body is asked again this many times, after CUT_WAIT s,
#: doubling (``Cuts``)
CUT_RETRIES = 3
CUT_WAIT = 0.5
#: a dropped read-only request (module docstring) waits RETRY_FIRST s, doubling to
#: RETRY_MAX, before each new attempt, at most RETRY_WAIT (COLD_RETRY_WAIT) s in all
RETRY_WAIT, COLD_RETRY_WAIT, RETRY_FIRST, RETRY_MAX = 10.0, 2.0, 0.1, 2.0
#: POSTs that only read (queries with a JSON body): sent again as GETs are
READ_ONLY_POSTS = frozenset({"narinfo-batch", "blob-batch", "attestation-batch"})
_DROPPED = frozenset({errno.ECONNREFUSED, errno.ECONNRESET, errno.ECONNABORTED, errno.EPIPE})


def read_only(method: str, key: str, upload: bool) -> bool:
    """Whether a request only reads (``GET``, ``HEAD``, ``READ_ONLY_POSTS``; never one with
    a body to upload): what may be sent again (module docstring)."""
    return not upload and (method in ("GET", "HEAD") or method == "POST" and key in READ_ONLY_POSTS)


class Dropped(Exception):
    """A connection refused, reset or closed before an answer; ``error`` is the caller's."""

    def __init__(self, error: RegistryError) -> None:
        super().__init__(str(error))
        self.error = error


def dropped(e: BaseException) -> bool:
    """Whether ``e`` (before the answer's headers), or the error under it (aiohttp's "Can
    not write request body" wraps a reset), is a connection refused, reset or closed."""
    for x in (e, e.__cause__):
        if isinstance(x, (aiohttp.ServerDisconnectedError, ConnectionError)):
            return True
        if isinstance(x, OSError) and x.errno in _DROPPED:  # (aiohttp's ClientOSError, ...)
            return True
    return False


def ask_again(
    status: int, read_only: bool, upload: bool, busy: int, errors: int, limit: int = BUSY_RETRIES
) -> bool:
    """Whether an answer of ``status`` is waited out and the request sent again, after
    ``busy`` such answers to it so far, ``errors`` of them 500s, at most ``limit`` times
    (``BUSY_RETRIES``, or ``WORN_RETRIES`` on a worn client: module docstring)."""
    if upload or busy >= limit:
        return False
    if status == 503:
        return True
    return read_only and status in NOT_NOW and (status != 500 or errors < ERROR_RETRIES)


def retry_after(value: str | None) -> float:
    """The seconds a ``Retry-After`` asks for, within ``[0, BUSY_WAIT_MAX]`` (an HTTP
    date, or junk, counts as 1 s: the server's clock is not ours to trust)."""
    try:
        seconds = float(value or "1")
    except ValueError:
        seconds = 1.0
    return min(max(seconds if math.isfinite(seconds) else 1.0, 0.0), BUSY_WAIT_MAX)


class Cuts:
    """One client's budget for answers broken off mid-body (module docstring): each
    request is asked again ``CUT_RETRIES`` times, or ``WORN_RETRIES`` once one of the
    client's requests broke off after all its retries, until an answer arrives whole."""

    def __init__(self) -> None:
        self.worn = False

    def again(self, cuts: int) -> bool:
        """Whether a request whose answer broke off for the ``cuts + 1``-th time is asked
        again; when it is not, the client is worn."""
        if cuts < (WORN_RETRIES if self.worn else CUT_RETRIES):
            return True
        self.worn = True
        return False

    def whole(self) -> None:
        """An answer (a download, a batch) arrived whole: the full budget again."""
        self.worn = False

    @staticmethod
    def wait(cuts: int) -> float:
        """Seconds to wait before asking again for the ``cuts``-th time (from 1)."""
        return CUT_WAIT * 2 ** (cuts - 1)
