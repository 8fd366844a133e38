"""HTTP(S) transfers for ``fetch``: one download with retries, resumption, redirects that
are never read, the pace rule and size limits (``fetch``'s docstring states the rules;
this module is how they are enforced on urllib and http.client).

Theory of operation
-------------------
``_http_get`` makes up to ``1 + retries`` attempts. Each attempt (``_attempt``) runs
under a ``_Pace``: a watchdog thread that shuts the attempt's sockets down once it is
past ``PACE_GRACE`` s plus 1 s per ``PACE_MIN_RATE`` body bytes, counted from the
request, so a server trickling its status line, headers, redirects or body cannot hold
a build. The opener speaks http and https only, the two schemes whose sockets the
watchdog sees: urllib's default one also opens ``ftp:``, ``file:`` and ``data:`` URLs,
and its redirect handler follows a ``Location`` to ``ftp:``, where no pace rule held
(a trickled FTP banner stalled a fetch for ever). Redirects go through
``_RedirectWithoutBody`` (urllib's rules, the 3xx body closed unread), which refuses any
target but an http(s) URL without credentials, and says a loop in one line. The waits
between attempts (``Retry-After`` heeded) are ``fetchretry``'s. A body over its ``_Limit`` raises
``_TooBig``; a malformed URL or ``Location`` is a ``FetchError``; neither is retried. The
sink (``fetchsink.Sink``) is used through ``write(chunk, total)``, ``size`` and ``reset()``;
their ``LocalWriteError`` (the download's own file could not be written) is neither an
``OSError`` nor a ``FetchError``, so it passes every handler here untouched: never retried.

Credentials: kiln sends none, so ``fetch`` refuses a URL carrying them before calling
here (``fetchtext.refuse_credentials``), and a redirect to one is refused here. Text a
server controls (a reason phrase, a ``Location``, a bad status line) reaches messages
only through ``fetchtext.shown``, escaped.
"""

from __future__ import annotations

import contextlib
import http.client
import os
import re
import socket
import sys
import threading
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from typing import IO, TYPE_CHECKING

from . import pacing
from .envnumber import whole_number
from .errors import KilnError, url_credentials
from .fetchretry import RETRY_AFTER_CAP, RETRY_STATUS, SAY_WAIT_FROM, wait_after
from .fetchtext import bad_url_reason, shown, shown_url

if TYPE_CHECKING:
    import urllib.response

    from .fetchsink import Sink as _Sink

CHUNK = 1 << 16
USER_AGENT = "kiln-fetch/0.1"


class FetchError(KilnError):
    """No source could deliver the file."""


#: an attempt is too slow once it has run ``PACE_GRACE`` s plus 1 s per ``PACE_MIN_RATE``
#: bytes of body received: far below any real link, far above a trickle. The clock starts
#: when the request is sent, so the response head and any redirects count against it.
PACE_MIN_RATE = pacing.MIN_RATE
PACE_GRACE = pacing.GRACE
#: the most a download without a known size may bring (``KILN_FETCH_MAX_SIZE`` raises it)
MAX_DOWNLOAD = 16 << 30


class _TooSlow(TimeoutError):
    """An attempt that fell behind the pace: retried like a timeout, reported as itself."""


class _TooBig(FetchError):
    """A source offering more bytes than the expected size or the cap: not retried."""


@dataclass(frozen=True)
class _Limit:
    """The most bytes one source may deliver, and how to say it in an error."""

    size: int
    known: bool  # the expected size (a lock entry's) rather than the global cap

    def __str__(self) -> str:
        if self.known:
            return f"the expected size ({self.size} bytes)"
        return f"the download cap ({self.size} bytes; KILN_FETCH_MAX_SIZE raises it)"


#: the longest ``KILN_FETCH_TIMEOUT``: a week of silence is no download any more, and a
#: bound keeps the value within what its users take (``socket.settimeout`` overflows
#: near 1e10 s, libgit2 takes ``int`` milliseconds: at most 24.8 days)
MAX_FETCH_TIMEOUT = 7 * 24 * 3600


def fetch_timeout() -> float:
    """The socket timeout in seconds: ``KILN_FETCH_TIMEOUT``, default 30; more than 0 and
    at most ``MAX_FETCH_TIMEOUT`` (so never infinite or NaN), else ``FetchError``."""
    raw = os.environ.get("KILN_FETCH_TIMEOUT", "30")
    shown_raw = repr(raw) if len(raw) <= 40 else f"{raw[:40]!r}..."
    try:
        timeout = float(raw)
    except ValueError:
        raise FetchError(f"KILN_FETCH_TIMEOUT must be a number of seconds, found {shown_raw}") from None
    if not 0 < timeout <= MAX_FETCH_TIMEOUT:  # (NaN compares false: refused too)
        raise FetchError(
            f"KILN_FETCH_TIMEOUT must be a positive number of seconds, at most {MAX_FETCH_TIMEOUT} "
            f"(a week), found {shown_raw}"
        )
    return timeout


def _max_download() -> int:
    return whole_number("KILN_FETCH_MAX_SIZE", MAX_DOWNLOAD, FetchError, "a number of bytes")


class _Pace:
    """The pace rule for one attempt, enforced even while http.client is blocked.

    The attempt may last ``PACE_GRACE`` s plus 1 s per ``PACE_MIN_RATE`` body bytes, from
    the moment the request is sent: connecting, the status line and headers (of every
    redirect too) and the body all count. The socket timeout alone only bounds silence,
    so a server sending one byte per (timeout - 1) s inside a header line would otherwise
    hold the build for ever. A watchdog thread shuts down the attempt's sockets once the
    deadline passes; the reader then sees an error or EOF and ``check`` turns it into
    ``_TooSlow``. Use as a context manager around the attempt."""

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.got = 0
        self.in_body = False
        self.fired: str | None = None
        self._socks: list[socket.socket] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._watch, name="kiln-fetch-pace", daemon=True)

    def __enter__(self) -> _Pace:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()

    def deadline(self) -> float:
        # read the module's values each time: tests (and callers) may change them
        return self.start + PACE_GRACE + self.got / PACE_MIN_RATE

    def add(self, sock: socket.socket) -> socket.socket:
        """Watch ``sock`` (a connection of this attempt); returns it."""
        with self._lock:
            self._socks.append(sock)
            fired = self.fired
        if fired:
            _shutdown(sock)
        return sock

    def check(self) -> None:
        """Raise ``_TooSlow`` if the attempt is past its deadline."""
        if self.fired is None and time.monotonic() > self.deadline():
            self.fired = self._says()
        if self.fired is not None:
            raise _TooSlow(self.fired)

    def _says(self) -> str:
        took = time.monotonic() - self.start
        if not self.in_body:
            return f"too slow: no complete response head (status, headers, redirects) after {took:.1f} s"
        return (
            f"too slow: {self.got} bytes in {took:.0f} s (at least "
            f"{PACE_MIN_RATE} bytes/s is expected after {PACE_GRACE:g} s)"
        )

    def _watch(self) -> None:
        while not self._stop.wait(max(self.deadline() - time.monotonic(), 0.0) + 0.01):
            if time.monotonic() > self.deadline():
                with self._lock:
                    self.fired = self.fired or self._says()
                    socks = list(self._socks)
                for s in socks:
                    _shutdown(s)
                return


def _shutdown(sock: socket.socket) -> None:
    # socket.socket.shutdown on the fd, not SSLSocket.shutdown (which would also drop the
    # TLS object under a reader in another thread); a blocked recv then returns at once
    with contextlib.suppress(OSError):  # closed, or detached into an SSLSocket (watched too)
        socket.socket.shutdown(sock, socket.SHUT_RDWR)


def _watched(cls: type[http.client.HTTPConnection], pace: _Pace):
    """An ``http.client`` connection class whose sockets ``pace`` can shut down: the raw
    socket as soon as it is connected (so a TLS handshake is covered), then the socket the
    connection reads from (the SSLSocket for https)."""

    class Watched(cls):  # type: ignore[misc, valid-type]
        def __init__(self, *a, **kw) -> None:
            super().__init__(*a, **kw)
            self._create_connection = lambda *ca, **ckw: pace.add(socket.create_connection(*ca, **ckw))

        def connect(self) -> None:
            super().connect()
            pace.add(self.sock)

    return Watched


class _HTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, pace: _Pace) -> None:
        super().__init__()
        self.pace = pace

    def http_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        return self.do_open(_watched(http.client.HTTPConnection, self.pace), req)


class _HTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, pace: _Pace) -> None:
        super().__init__()
        self.pace = pace

    def https_open(self, req: urllib.request.Request) -> http.client.HTTPResponse:
        context = self._context  # type: ignore[attr-defined]  # set by HTTPSHandler, not in its stubs
        return self.do_open(_watched(http.client.HTTPSConnection, self.pace), req, context=context)


class _RedirectWithoutBody(urllib.request.HTTPRedirectHandler):
    """urllib's redirect handling (scheme check, loop limit of 10) without reading the 3xx
    body: urllib's own handler reads it whole into memory before following ``Location``,
    and a hostile server can make that body any size, at any pace. Closing the response
    first makes urllib's ``fp.read()`` return ``b""``."""

    def http_error_302(
        self,
        req: urllib.request.Request,
        fp: IO[bytes],
        code: int,
        msg: str,
        headers: http.client.HTTPMessage,
    ) -> http.client.HTTPResponse | urllib.response.addinfourl | None:
        fp.close()
        location = headers.get("location") or headers.get("uri")
        target = None
        if location is not None:
            # judged before urllib follows it: urllib would go on to ftp: (which no pace
            # rule covers) and answer file: with an error quoting the Location raw
            target = urllib.parse.urljoin(req.full_url, location.strip())
            if urllib.parse.urlsplit(target).scheme not in ("http", "https"):
                raise FetchError(
                    f"refusing a redirect to {shown_url(location)}: only http and https redirects are followed"
                )
            # (not its query: a pre-signed URL there is the server's choice, recorded nowhere)
            if url_credentials(target, query=False) is not None:
                raise FetchError(
                    f"refusing a redirect to {shown_url(location)}: credentials in a URL are not supported"
                )
        try:
            return super().http_error_302(req, fp, code, msg, headers)
        except urllib.error.HTTPError as e:  # urllib's loop check: a message of three lines
            if not str(e.reason).startswith(self.inf_msg) or target is None:
                raise
            seen = getattr(req, "redirect_dict", {})
            how = "a loop at" if seen.get(target) else f"more than {self.max_redirections}, the last to"
            raise FetchError(f"too many redirects ({how} {shown_url(target)})") from None

    http_error_301 = http_error_303 = http_error_307 = http_error_308 = http_error_302


def _opener(pace: _Pace) -> urllib.request.OpenerDirector:
    """An opener for http and https only, both watched by ``pace``: build_opener's
    defaults minus the ftp, file and data handlers (proxies from the environment still
    apply; a proxied request goes through the watched http handler)."""
    opener = urllib.request.OpenerDirector()
    for handler in (
        urllib.request.ProxyHandler(),
        urllib.request.UnknownHandler(),
        _HTTPHandler(pace),
        _HTTPSHandler(pace),
        urllib.request.HTTPDefaultErrorHandler(),
        _RedirectWithoutBody(),
        urllib.request.HTTPErrorProcessor(),
    ):
        opener.add_handler(handler)
    return opener


def _http_get(
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
            with _Pace() as pace:
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
                raise OSError(_describe(e)) from e  # nobody listening / no such host: retrying will not help
            bad = e if isinstance(e, http.client.InvalidURL) else reason
            if isinstance(bad, ValueError | http.client.InvalidURL):  # e.g. "nonnumeric port"
                raise FetchError(f"bad URL or redirect: {bad_url_reason(bad)}") from None
            error = e
        except ValueError as e:  # "Invalid IPv6 URL", IDNA UnicodeError, InvalidURL, in a URL or a Location
            raise FetchError(f"bad URL or redirect: {bad_url_reason(e)}") from None
        attempt += 1
        if attempt > retries:
            raise OSError(f"{_describe(error)} (gave up after {attempt} attempts)") from error
        wait = wait_after(attempt, error, wait_cap)
        if why := wait.too_long():  # coming back later than kiln waits: the next source now
            raise OSError(f"{_describe(error)}; {why}") from error
        if sink.progress.enabled or wait.seconds >= SAY_WAIT_FROM:  # (a long wait is said anyway)
            sink.progress.done()
            said = f"{_describe(error)}; retrying{wait.said()} ({attempt}/{retries})"
            print(f"{shown_url(url)}: {said}", file=sys.stderr)
        time.sleep(wait.seconds)


class _WrongRange(Exception):
    """A 206 for another offset than the one asked for."""


def _attempt(
    url: str, headers: dict[str, str], sink: _Sink, timeout: float, limit: _Limit, pace: _Pace
) -> None:
    """One request (following redirects) and its body into ``sink``."""
    req = urllib.request.Request(_quote_spaces(url), headers=headers)
    with _opener(pace).open(req, timeout=timeout) as resp:
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


def _describe(e: BaseException) -> str:
    """What went wrong, for a message; whatever of it the server sent (a reason phrase,
    a status line) escaped."""
    if isinstance(e, urllib.error.HTTPError):
        n = getattr(e, "attempts", 0)  # (set by _http_get on a transient status it gave up on)
        return f"HTTP {e.code} {shown(str(e.reason))}" + (f" (gave up after {n} attempts)" if n > 1 else "")
    if isinstance(e, urllib.error.URLError):
        return shown(str(e.reason))
    if isinstance(e, TimeoutError):
        return str(e) if isinstance(e, _TooSlow) else "timed out"
    return shown(str(e) or type(e).__name__)
