"""One HTTP(S) download for ``fetch`` (``http_get``): attempts with retries and resumption,
each one's body streamed into the sink under the pace rule and the size limit, and what
went wrong in words (``describe``). The transport it runs on (the pace watchdog, the
opener, redirects, limits) is ``fetchhttp``'s.

Theory of operation
-------------------
``http_get`` makes up to ``1 + retries`` attempts. Each attempt (``_attempt``) runs under
a ``fetchhttp.Pace`` (a request on ``fetchhttp.opener``), resuming with ``Range`` after
bytes came; a 206 for another offset than asked for is never taken for the file
(``_WrongRange``: the whole file is asked for again). The waits between attempts
(``Retry-After`` heeded) are ``fetchretry``'s. A body over its ``_Limit`` raises
``_TooBig``; a malformed URL or ``Location`` is a ``FetchError``; neither is retried. The
sink (``fetchsink.Sink``) is used through ``write(chunk, total)``, ``size`` and ``reset()``;
their ``LocalWriteError`` (the download's own file could not be written) is neither an
``OSError`` nor a ``FetchError``, so it passes every handler here untouched: never retried.
Text a server controls (a reason phrase, a bad status line) reaches messages only through
``fetchtext.shown``, escaped.
"""

from __future__ import annotations

import http.client
import re
import socket
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import TYPE_CHECKING

from .fetchhttp import CHUNK, USER_AGENT, FetchError, Pace, _Limit, _TooBig, _TooSlow, opener
from .fetchretry import RETRY_AFTER_CAP, RETRY_STATUS, SAY_WAIT_FROM, wait_after
from .fetchtext import bad_url_reason, shown, shown_url

if TYPE_CHECKING:
    from .fetchsink import Sink as _Sink


def http_get(
    url: str, sink: _Sink, timeout: float, retries: int, limit: _Limit, wait_cap: float = RETRY_AFTER_CAP
) -> None:
    """Download ``url`` into ``sink``. HTTP errors raise ``urllib.error.HTTPError``: at
    once, or a transient one with ``attempts`` set once ``retries`` are spent; transport
    errors (timeouts and the pace rule included) are retried (resuming when the server
    honours ``Range``), then raise ``OSError``. Waits: ``fetchretry`` (``Retry-After`` up
    to ``wait_cap`` s). A body larger than ``limit`` raises ``_TooBig``, a malformed URL,
    a refused redirect or a redirect loop ``FetchError``, neither retried."""
    attempt = 0
    use_range = True
    while True:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if sink.size and use_range:
            headers["Range"] = f"bytes={sink.size}-"
        elif sink.size:
            sink.reset()
        try:
            with Pace() as pace:
                try:
                    _attempt(url, headers, sink, timeout, limit, pace)
                    return
                except (OSError, http.client.HTTPException) as e:
                    if pace.fired is None or isinstance(e, urllib.error.HTTPError):
                        raise
                    # the watchdog cut the connection: say why, not what the reader saw
                    raise _TooSlow(pace.fired) from e
        except _WrongRange:
            # A part we did not ask for (wrong offset, multipart, or a range nobody
            # requested): never take it for the file; ask for all of it.
            use_range = False
            error: BaseException = ConnectionError("the server answered with the wrong byte range")
        except urllib.error.HTTPError as e:
            error = e
            if e.code == 416 and sink.size:
                sink.reset()  # range not satisfiable: our partial data is suspect
            elif e.code not in RETRY_STATUS:
                raise
            elif attempt >= retries:
                e.attempts = attempt + 1  # type: ignore[attr-defined]  # said by _describe
                raise
        except (OSError, http.client.HTTPException) as e:  # URLError, timeouts, resets, IncompleteRead
            reason = getattr(e, "reason", None)
            if isinstance(reason, ConnectionRefusedError | socket.gaierror):
                raise OSError(describe(e)) from e  # nobody listening / no such host: retrying will not help
            bad = e if isinstance(e, http.client.InvalidURL) else reason
            if isinstance(bad, ValueError | http.client.InvalidURL):  # e.g. "nonnumeric port"
                raise FetchError(f"bad URL or redirect: {bad_url_reason(bad)}") from None
            error = e
        except ValueError as e:  # "Invalid IPv6 URL", IDNA UnicodeError, InvalidURL, in a URL or a Location
            raise FetchError(f"bad URL or redirect: {bad_url_reason(e)}") from None
        attempt += 1
        if attempt > retries:
            raise OSError(f"{describe(error)} (gave up after {attempt} attempts)") from error
        wait = wait_after(attempt, error, wait_cap)
        if why := wait.too_long():  # coming back later than kiln waits: the next source now
            raise OSError(f"{describe(error)}; {why}") from error
        if sink.progress.enabled or wait.seconds >= SAY_WAIT_FROM:  # (a long wait is said anyway)
            sink.progress.done()
            said = f"{describe(error)}; retrying{wait.said()} ({attempt}/{retries})"
            print(f"{shown_url(url)}: {said}", file=sys.stderr)
        time.sleep(wait.seconds)


class _WrongRange(Exception):
    """A 206 for another offset than the one asked for."""


def _attempt(
    url: str, headers: dict[str, str], sink: _Sink, timeout: float, limit: _Limit, pace: Pace
) -> None:
    """One request (following redirects) and its body into ``sink``."""
    req = urllib.request.Request(_quote_spaces(url), headers=headers)
    with opener(pace).open(req, timeout=timeout) as resp:
        pace.check()
        if resp.status == 206 and _range_start(resp.headers.get("Content-Range")) != sink.size:
            raise _WrongRange
        if sink.size and resp.status != 206:
            sink.reset()  # the server ignored the range: this body is the whole file
        length = resp.headers.get("Content-Length")
        total = sink.size + int(length) if length and length.isdigit() else None
        if total is not None and total > limit.size:
            raise _TooBig(f"the server announces {total} bytes, more than {limit}")
        pace.in_body = True
        # read1: one socket read at a time, so the pace is judged as bytes come
        # (read(n) would wait, however long, until it has n of them)
        read = getattr(resp, "read1", resp.read)
        while chunk := read(CHUNK):
            if sink.size + len(chunk) > limit.size:
                raise _TooBig(f"more than {limit}")
            sink.write(chunk, total)
            pace.got += len(chunk)
            pace.check()
        pace.check()  # an EOF may be the watchdog's doing
        if total is not None and sink.size < total:
            raise ConnectionError(f"connection closed after {sink.size} of {total} bytes")


def _quote_spaces(url: str) -> str:
    # http.client refuses a request line with a space in it; a space in a URL can only
    # mean %20 (the same as urllib does for a Location header)
    return re.sub(r"\s", lambda m: urllib.parse.quote(m.group()), url)


def _range_start(content_range: str | None) -> int | None:
    m = re.match(r"bytes (\d+)-", content_range or "")
    return int(m.group(1)) if m else None


def describe(e: BaseException) -> str:
    """What went wrong, for a message; whatever of it the server sent (a reason phrase,
    a status line) escaped."""
    if isinstance(e, urllib.error.HTTPError):
        n = getattr(e, "attempts", 0)  # (set by http_get on a transient status it gave up on)
        return f"HTTP {e.code} {shown(str(e.reason))}" + (f" (gave up after {n} attempts)" if n > 1 else "")
    if isinstance(e, urllib.error.URLError):
        return shown(str(e.reason))
    if isinstance(e, TimeoutError):
        return str(e) if isinstance(e, _TooSlow) else "timed out"
    return shown(str(e) or type(e).__name__)
